//! Command-line limits every server shares, with the defaults the spec gives and why.
//!
//! Each server declares its own `--addr` (the default port says which version it is) and
//! flattens the groups below that apply to it.

use std::net::SocketAddr;

use crate::framing::MAX_LINE_DEFAULT;

/// Default `--max-clients`: enough for a class, low enough that a runaway script cannot take every
/// descriptor the process has.
pub const MAX_CLIENTS_DEFAULT: usize = 1024;

/// Default `--max-queue`, in bytes: a client may fall this far behind before it is dropped.
/// 256 KiB is hundreds of chat lines, far more than any person reading falls behind.
pub const MAX_QUEUE_DEFAULT: usize = 256 * 1024;

/// Default `--announce-limit`: above this many clients, joins and leaves are not announced,
/// because telling everyone about everyone is quadratic traffic.
pub const ANNOUNCE_LIMIT_DEFAULT: usize = 256;

/// Default address of each version, so that all four can run at once.
pub const V4_ADDR_DEFAULT: &str = "127.0.0.1:8080";
/// See [`V4_ADDR_DEFAULT`].
pub const V1_ADDR_DEFAULT: &str = "127.0.0.1:8081";
/// See [`V4_ADDR_DEFAULT`].
pub const V2_ADDR_DEFAULT: &str = "127.0.0.1:8082";
/// See [`V4_ADDR_DEFAULT`].
pub const V3_ADDR_DEFAULT: &str = "127.0.0.1:8083";

/// Parses `--addr` for clap: every form of [`crate::addr::parse_addr`].
pub fn addr_arg(input: &str) -> Result<SocketAddr, String> {
    crate::addr::parse_addr(input).map_err(|error| error.to_string())
}

/// Parses a count that must be at least 1 (`--max-clients`, `--max-line`, `--max-queue`).
pub fn positive(input: &str) -> Result<usize, String> {
    match input.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{input}\" is not a whole number")),
    }
}

/// `--max-clients` and `--max-line`: what every server enforces on every connection.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Connections beyond this many get "* server full (N clients)" and are closed.
    #[arg(long, value_name = "N", default_value_t = MAX_CLIENTS_DEFAULT, value_parser = positive)]
    pub max_clients: usize,

    /// Longest line accepted, in bytes, not counting its "\n" or "\r\n".
    #[arg(long, value_name = "BYTES", default_value_t = MAX_LINE_DEFAULT, value_parser = positive)]
    pub max_line: usize,
}

/// `--max-queue`: how far a client may fall behind before it is disconnected (v2, v3, v4).
#[derive(Debug, Clone, clap::Args)]
pub struct QueueLimit {
    /// Bytes waiting to be sent to one client before it is disconnected as too slow.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_QUEUE_DEFAULT, value_parser = positive)]
    pub max_queue: usize,
}

/// `--announce-limit`: the largest room in which joins and leaves are announced (v3, v4).
#[derive(Debug, Clone, clap::Args)]
pub struct AnnounceLimit {
    /// Joins and leaves are announced only while the room holds at most this many clients.
    #[arg(long, value_name = "N", default_value_t = ANNOUNCE_LIMIT_DEFAULT)]
    pub announce_limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_parse() {
        for addr in [
            V1_ADDR_DEFAULT,
            V2_ADDR_DEFAULT,
            V3_ADDR_DEFAULT,
            V4_ADDR_DEFAULT,
        ] {
            assert!(addr_arg(addr).is_ok());
        }
    }

    #[test]
    fn limits_must_be_positive_numbers() {
        assert_eq!(positive("5"), Ok(5));
        assert!(positive("0").is_err());
        assert!(positive("-1").is_err());
        assert!(positive("lots").is_err());
    }
}

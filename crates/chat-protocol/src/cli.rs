//! Command-line limits every server shares, with the defaults the spec gives and why.
//!
//! Each server declares its own `--addr` (the default port says which version it is) and
//! flattens the groups below that apply to it.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use crate::framing::MAX_LINE_DEFAULT;

/// Default `--max-clients`: enough for a class, low enough that a runaway script cannot take every
/// descriptor the process has.
pub const MAX_CLIENTS_DEFAULT: usize = 1024;

/// Default `--max-queue`, in bytes: at most this much waits to be sent to one client; past it,
/// the server stops reading whoever would add more. 256 KiB is thousands of chat lines, far
/// more than any person reading falls behind, and a full read's worth of the shortest lines.
pub const MAX_QUEUE_DEFAULT: usize = 256 * 1024;

/// Default `--max-per-ip`: a classroom behind one NAT address still fits, one host with a script
/// cannot take every slot of `--max-clients`.
pub const MAX_PER_IP_DEFAULT: usize = 64;

/// Default `--stall-ms`: how long a room waits for one receiver whose queue is too full for the
/// next read before it disconnects it. Half a second is far longer than a client that reads as
/// fast as it can needs to take a full queue (milliseconds on any network a class uses), and
/// short enough that the others barely notice the pause.
pub const STALL_MS_DEFAULT: u64 = 500;

/// `--max-clients`: one client is one descriptor, and no process here may hold more than a
/// million.
pub const MAX_CLIENTS_RANGE: RangeInclusive<usize> = 1..=1_000_000;
/// `--max-line`: the framer holds one line in memory per client, so a line may be at most 1 MiB.
pub const MAX_LINE_RANGE: RangeInclusive<usize> = 1..=1024 * 1024;
/// `--max-queue`: at most 1 GiB per client.
pub const MAX_QUEUE_RANGE: RangeInclusive<usize> = 1..=1024 * 1024 * 1024;
/// `--max-per-ip`: 0 turns the limit off.
pub const MAX_PER_IP_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// `--announce-limit`: 0 announces nothing.
pub const ANNOUNCE_LIMIT_RANGE: RangeInclusive<usize> = 0..=1_000_000;
/// `--stall-ms`: from a millisecond to a minute.
pub const STALL_MS_RANGE: RangeInclusive<u64> = 1..=60_000;

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
/// See [`V4_ADDR_DEFAULT`]; v5-cluster's nodes each need their own, of course.
pub const V5_ADDR_DEFAULT: &str = "127.0.0.1:8085";

/// Parses `--addr` for clap: every form of [`crate::addr::parse_addr`].
pub fn addr_arg(input: &str) -> Result<SocketAddr, String> {
    crate::addr::parse_addr(input).map_err(|error| error.to_string())
}

/// A clap value parser for a whole number within `range`; anything else is refused at start-up
/// with the range in the message, so no flag can overflow or panic later.
///
/// Give the flag `allow_negative_numbers = true` too: without it clap takes `-1` for an unknown
/// option and answers "unexpected argument '-1' found", which names neither the flag nor the
/// range.
pub fn in_range<T>(range: RangeInclusive<T>) -> impl Fn(&str) -> Result<T, String> + Clone
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |input: &str| {
        let (min, max) = (*range.start(), *range.end());
        match input.trim().parse::<T>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(format!(
                "\"{input}\" is out of range: give a whole number from {min} to {max}"
            )),
        }
    }
}

/// `--max-clients`, `--max-line` and `--max-per-ip`: what every server enforces on every
/// connection.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectionLimits {
    /// Connections beyond this many get "* server full (N clients)" and are closed.
    #[arg(long, value_name = "N", default_value_t = MAX_CLIENTS_DEFAULT,
          value_parser = in_range(MAX_CLIENTS_RANGE), allow_negative_numbers = true)]
    pub max_clients: usize,

    /// Longest line accepted, in bytes, not counting its "\n" or "\r\n".
    #[arg(long, value_name = "BYTES", default_value_t = MAX_LINE_DEFAULT,
          value_parser = in_range(MAX_LINE_RANGE), allow_negative_numbers = true)]
    pub max_line: usize,

    /// Connections one address may hold (0: no limit). 127.0.0.1 and ::1 are exempt.
    #[arg(long, value_name = "N", default_value_t = MAX_PER_IP_DEFAULT,
          value_parser = in_range(MAX_PER_IP_RANGE), allow_negative_numbers = true)]
    pub max_per_ip: usize,
}

/// `--max-queue`: how many bytes may wait for one client (v2, v3, v4).
#[derive(Debug, Clone, clap::Args)]
pub struct QueueLimit {
    /// Bytes that may wait to be sent to one client.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_QUEUE_DEFAULT,
          value_parser = in_range(MAX_QUEUE_RANGE), allow_negative_numbers = true)]
    pub max_queue: usize,
}

/// `--stall-ms`: how long a room waits for a receiver that holds it back (v3, v4).
#[derive(Debug, Clone, clap::Args)]
pub struct StallLimit {
    /// Disconnect a receiver whose full queue has held the room back this many ms in a row.
    #[arg(long, value_name = "MS", default_value_t = STALL_MS_DEFAULT,
          value_parser = in_range(STALL_MS_RANGE), allow_negative_numbers = true)]
    pub stall_ms: u64,
}

/// `--announce-limit`: the largest room in which joins and leaves are announced (v3, v4).
#[derive(Debug, Clone, clap::Args)]
pub struct AnnounceLimit {
    /// Joins and leaves are announced only while the room holds at most this many clients.
    #[arg(long, value_name = "N", default_value_t = ANNOUNCE_LIMIT_DEFAULT,
          value_parser = in_range(ANNOUNCE_LIMIT_RANGE), allow_negative_numbers = true)]
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
            V5_ADDR_DEFAULT,
        ] {
            assert!(addr_arg(addr).is_ok());
        }
    }

    #[test]
    fn limits_must_be_in_their_range() {
        let max_line = in_range(MAX_LINE_RANGE);
        assert_eq!(max_line("5"), Ok(5));
        assert!(max_line("0").is_err());
        assert!(max_line("-1").is_err());
        assert!(max_line("lots").is_err());
        let error = max_line("18446744073709551615").unwrap_err();
        assert!(error.contains("from 1 to 1048576"), "{error}");
        assert_eq!(in_range(MAX_PER_IP_RANGE)("0"), Ok(0));
        assert!(in_range(STALL_MS_RANGE)("0").is_err());
    }

    /// Every shared flag, as a server declares them.
    #[derive(Debug, clap::Parser)]
    struct EveryLimit {
        #[command(flatten)]
        connection: ConnectionLimits,
        #[command(flatten)]
        queue: QueueLimit,
        #[command(flatten)]
        stall: StallLimit,
        #[command(flatten)]
        announce: AnnounceLimit,
    }

    #[test]
    fn a_negative_number_is_refused_with_the_flag_and_its_range() {
        use clap::Parser;
        for (flag, range) in [
            ("--max-clients", "from 1 to"),
            ("--max-line", "from 1 to"),
            ("--max-per-ip", "from 0 to"),
            ("--max-queue", "from 1 to"),
            ("--stall-ms", "from 1 to"),
            ("--announce-limit", "from 0 to"),
        ] {
            let error = EveryLimit::try_parse_from(["server", flag, "-1"]).unwrap_err();
            let error = error.to_string();
            assert!(
                error.contains(flag) && error.contains(range),
                "{flag}: {error}"
            );
        }
    }
}

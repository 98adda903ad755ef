//! Parsing the address a server listens on or a client connects to.
//!
//! One parser for every binary, so `--addr 8080` means the same thing everywhere. A missing host
//! means loopback: a teaching server should not be reachable from the network by accident.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// The host used when an address gives only a port (`:8080` or `8080`), and what `localhost`
/// means: IPv4 loopback, which every machine has.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Why an address argument was rejected. Its `Display` is one sentence naming the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrError {
    input: String,
    reason: String,
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid address \"{}\": {} (expected HOST:PORT, [IPv6]:PORT, :PORT or PORT)",
            self.input, self.reason
        )
    }
}

impl std::error::Error for AddrError {}

/// Parses `127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `:8080` or `8080`.
///
/// Any other host name is looked up with the system resolver (first address wins), so the
/// client can also reach `chat.example.org:8080`. Port `0` is allowed: the kernel picks one.
pub fn parse_addr(input: &str) -> Result<SocketAddr, AddrError> {
    let error = |reason: &str| AddrError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(error("it is empty"));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Ok(SocketAddr::new(
            DEFAULT_HOST,
            parse_port(text).map_err(error)?,
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(error("there is no port"));
    };
    let port = parse_port(port).map_err(error)?;
    if host.is_empty() || host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(DEFAULT_HOST, port));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(error(
            "an IPv6 host must be written in brackets, like [::1]:8080",
        ));
    }
    let looks_numeric = host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if looks_numeric || !host.chars().all(is_host_name_char) {
        return Err(error("the host is not a valid IP address or name"));
    }
    match (host, port).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| error("the host name has no address")),
        Err(_) => Err(error("the host name could not be resolved")),
    }
}

fn parse_port(text: &str) -> Result<u16, &'static str> {
    if text.is_empty() {
        return Err("the port is missing");
    }
    if !text.chars().all(|c| c.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    text.parse()
        .map_err(|_| "the port must be between 0 and 65535")
}

fn is_host_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> String {
        parse_addr(input).unwrap().to_string()
    }

    #[test]
    fn accepts_every_form_of_the_spec() {
        assert_eq!(ok("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(ok("[::1]:8080"), "[::1]:8080");
        assert_eq!(ok("localhost:8080"), "127.0.0.1:8080");
        assert_eq!(ok("LocalHost:8080"), "127.0.0.1:8080");
        assert_eq!(ok(":8080"), "127.0.0.1:8080");
        assert_eq!(ok("8080"), "127.0.0.1:8080");
        assert_eq!(ok("0.0.0.0:9000"), "0.0.0.0:9000");
    }

    #[test]
    fn port_zero_means_any_free_port() {
        assert_eq!(ok("127.0.0.1:0"), "127.0.0.1:0");
        assert_eq!(ok("0"), "127.0.0.1:0");
        assert_eq!(ok(":0"), "127.0.0.1:0");
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(ok(" 8080 "), "127.0.0.1:8080");
    }

    #[test]
    fn rejects_everything_else_with_a_sentence_naming_the_input() {
        for (input, reason) in [
            ("", "it is empty"),
            ("localhost", "there is no port"),
            ("127.0.0.1", "there is no port"),
            ("127.0.0.1:", "the port is missing"),
            ("127.0.0.1:http", "the port is not a number"),
            ("127.0.0.1:65536", "between 0 and 65535"),
            ("99999", "between 0 and 65535"),
            ("::1:8080", "in brackets"),
            ("[::1:8080", "in brackets"),
            ("300.1.1.1:80", "not a valid IP address or name"),
            ("bad host:80", "not a valid IP address or name"),
        ] {
            let message = parse_addr(input).unwrap_err().to_string();
            assert!(
                message.starts_with(&format!("invalid address \"{input}\": ")),
                "{message}"
            );
            assert!(message.contains(reason), "{input:?}: {message}");
        }
    }
}

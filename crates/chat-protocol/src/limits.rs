//! `--max-per-ip` (SPEC 13): how many connections one address may hold.
//!
//! Every server counts its connections per address with one [`PerIp`], so that one host
//! cannot take every slot of `--max-clients`. The machine the server runs on is exempt, so a
//! class or a benchmark can still open thousands of connections from `127.0.0.1` or `::1`;
//! other loopback sources (`127.0.0.2`) count like any host, which is what lets tests check
//! the limit.

use std::collections::HashMap;
use std::net::IpAddr;

/// True for `127.0.0.1` and `::1` (also written `::ffff:127.0.0.1`): this machine, which
/// `--max-per-ip` never limits.
pub fn is_exempt(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == std::net::Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => {
            v6 == std::net::Ipv6Addr::LOCALHOST
                || v6.to_ipv4_mapped() == Some(std::net::Ipv4Addr::LOCALHOST)
        }
    }
}

/// Connections held per address. Only addresses that hold some are kept, so the map is as
/// large as the number of distinct hosts connected, never more.
#[derive(Debug, Default)]
pub struct PerIp {
    /// `--max-per-ip`; 0 means no limit.
    max: usize,
    held: HashMap<IpAddr, usize>,
}

impl PerIp {
    /// Counts connections against `max` per address (0: no limit).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            held: HashMap::new(),
        }
    }

    /// The limit, for the notice that refuses a connection.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts one more connection from `ip`, or returns false (and counts nothing) if `ip`
    /// already holds `max`.
    pub fn try_add(&mut self, ip: IpAddr) -> bool {
        if self.max == 0 || is_exempt(ip) {
            return true;
        }
        let held = self.held.entry(ip).or_insert(0);
        if *held >= self.max {
            return false;
        }
        *held += 1;
        true
    }

    /// Forgets one connection from `ip`, added earlier by [`PerIp::try_add`].
    pub fn remove(&mut self, ip: IpAddr) {
        if self.max == 0 || is_exempt(ip) {
            return;
        }
        if let Some(held) = self.held.get_mut(&ip) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_holds_at_most_max() {
        let mut per_ip = PerIp::new(2);
        assert!(per_ip.try_add(ip("127.0.0.2")));
        assert!(per_ip.try_add(ip("127.0.0.2")));
        assert!(!per_ip.try_add(ip("127.0.0.2")));
        assert!(
            per_ip.try_add(ip("10.0.0.1")),
            "other hosts are counted apart"
        );
        per_ip.remove(ip("127.0.0.2"));
        assert!(
            per_ip.try_add(ip("127.0.0.2")),
            "a slot freed is a slot again"
        );
    }

    #[test]
    fn this_machine_is_exempt() {
        let mut per_ip = PerIp::new(1);
        for _ in 0..10 {
            assert!(per_ip.try_add(ip("127.0.0.1")));
            assert!(per_ip.try_add(ip("::1")));
            assert!(per_ip.try_add(ip("::ffff:127.0.0.1")));
        }
        assert!(!is_exempt(ip("127.0.0.2")));
        assert!(
            per_ip.held.is_empty(),
            "exempt addresses are not even counted"
        );
    }

    #[test]
    fn zero_means_no_limit_and_forgotten_addresses_take_no_memory() {
        let mut unlimited = PerIp::new(0);
        for _ in 0..1000 {
            assert!(unlimited.try_add(ip("10.0.0.1")));
        }
        let mut per_ip = PerIp::new(5);
        per_ip.try_add(ip("10.0.0.1"));
        per_ip.remove(ip("10.0.0.1"));
        assert!(per_ip.held.is_empty());
    }
}

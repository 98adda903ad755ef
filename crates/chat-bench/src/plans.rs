//! What `compare` runs: its workloads, their sizes, and how often each is repeated.

use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Mode, Workload};

/// Pause between "everyone is in" and reading the server's memory in the idle workload, so the
/// server has finished with the probes.
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// The workloads of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 100 clients, 10 senders as fast as possible.
    Burst,
    /// The same at 1000 clients.
    Scale,
    /// 100 clients, 10 senders at 100 lines/s: what a chatting person feels.
    Paced,
    /// 10 000 clients that only connect: accept time (the storm), memory and threads.
    Idle,
}

/// One workload's size and how often it is repeated.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    pub kind: Kind,
    pub title: &'static str,
    pub clients: usize,
    pub senders: usize,
    pub messages: u32,
    pub rate: Option<f64>,
    pub repeats: u32,
}

impl Plan {
    /// How many clients send. In a burst against an echo server every client sends: with
    /// only 10 of them the run would be 50 times shorter than a room's (milliseconds, not
    /// seconds) and would leave 90% of the connections idle, so v1's threads and v2's loop
    /// would never face the load a room's receivers do.
    pub fn senders(&self, mode: Mode) -> usize {
        match (mode, self.kind) {
            (Mode::Echo, Kind::Burst | Kind::Scale) => self.clients,
            _ => self.senders,
        }
    }

    pub fn workload(&self, mode: Mode) -> Workload {
        let senders = self.senders(mode);
        Workload {
            mode,
            clients: self.clients,
            senders,
            messages: self.messages,
            rate: self.rate,
            window: load::default_window(mode, self.clients, senders),
            hello: None,
            settle: if self.kind == Kind::Idle {
                IDLE_SETTLE
            } else {
                Duration::ZERO
            },
        }
    }
}

/// What `compare` calls v4 over TLS in its records and tables.
pub const V4_TLS: &str = "v4-async over TLS";

/// How many clients connect at once, each with a TLS handshake, in the TLS row.
const TLS_STORM_CLIENTS: usize = 1000;

/// The TLS row's workloads: the burst of [`plans`], and a storm of [`TLS_STORM_CLIENTS`]
/// connections whose time until all are in includes every handshake.
pub fn tls_plans(quick: bool) -> Vec<Plan> {
    let burst = plans(quick)
        .into_iter()
        .find(|p| p.kind == Kind::Burst)
        .expect("plans has a burst");
    vec![
        burst,
        Plan {
            kind: Kind::Idle,
            title: "TLS connection storm",
            clients: TLS_STORM_CLIENTS,
            senders: 0,
            messages: 0,
            rate: None,
            repeats: burst.repeats,
        },
    ]
}

/// The lines per second each paced sender sends: a busy chat, far below any server's limit.
const PACED_RATE: f64 = 100.0;

/// The workloads: the issue's sizes by default, scaled down with `--quick`.
pub fn plans(quick: bool) -> Vec<Plan> {
    let (burst, scale, paced_seconds, idle, repeats) = if quick {
        (5_000, 500, 2, 2_000, 1)
    } else {
        (20_000, 2_000, 5, 10_000, 3)
    };
    vec![
        Plan {
            kind: Kind::Burst,
            title: "burst fan-out",
            clients: 100,
            senders: 10,
            messages: burst,
            rate: None,
            repeats,
        },
        Plan {
            kind: Kind::Scale,
            title: "fan-out at scale",
            clients: 1000,
            senders: 10,
            messages: scale,
            rate: None,
            repeats,
        },
        Plan {
            kind: Kind::Paced,
            title: "paced chat",
            clients: 100,
            senders: 10,
            messages: (PACED_RATE as u32) * paced_seconds,
            rate: Some(PACED_RATE),
            repeats: 1,
        },
        Plan {
            kind: Kind::Idle,
            title: "idle clients",
            clients: idle,
            senders: 0,
            messages: 0,
            rate: None,
            repeats: 1,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_plans_are_smaller_and_run_once() {
        let full = plans(false);
        let quick = plans(true);
        assert_eq!(full.len(), quick.len());
        for (full, quick) in full.iter().zip(&quick) {
            assert_eq!(full.kind, quick.kind);
            assert!(quick.messages <= full.messages && quick.clients <= full.clients);
            assert_eq!(quick.repeats, 1);
        }
    }

    #[test]
    fn every_echo_client_sends_in_a_burst_but_not_in_paced_chat() {
        let plans = plans(false);
        assert_eq!(plans[0].senders(Mode::Broadcast), 10);
        assert_eq!(plans[0].senders(Mode::Echo), 100);
        assert_eq!(plans[1].senders(Mode::Echo), 1000);
        assert_eq!(plans[2].senders(Mode::Echo), 10);
    }

    #[test]
    fn the_issue_sizes_are_the_default() {
        let full = plans(false);
        let sizes: Vec<_> = full
            .iter()
            .map(|p| (p.clients, p.senders, p.messages))
            .collect();
        assert_eq!(
            sizes,
            [
                (100, 10, 20_000),
                (1000, 10, 2_000),
                (100, 10, 500),
                (10_000, 0, 0)
            ]
        );
    }
}

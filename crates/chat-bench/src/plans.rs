//! What `compare` runs: its workloads, their sizes, and how often each is repeated.

use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Mode, Workload};
use crate::servers::{Version, EPOLL_VERSIONS, VERSIONS};

/// Pause between "everyone is in" and reading the server's memory in the idle workload, so the
/// server has finished with the probes.
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// The workloads of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
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
    /// A crowd of N clients of whom 10 speak at a steady pace, N growing: what each turn of
    /// a loop costs when most of its clients are silent (poll against epoll, SPEC 12).
    Crowd,
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

    /// Lines per second each sender sends (`None`: as fast as the window allows), and how many
    /// lines each sends. In the crowd, an echo client speaks [`CROWD_ECHO_RATE`] lines a
    /// second, a room's sender [`CROWD_ROOM_RATE`]: an echo is one delivery, a room's line one
    /// per client, and a room of 20 000 cannot carry more than a few lines a second on this
    /// kind of machine.
    pub fn pace(&self, mode: Mode) -> (Option<f64>, u32) {
        match (self.kind, mode) {
            (Kind::Crowd, Mode::Echo) => (
                Some(CROWD_ECHO_RATE),
                CROWD_ECHO_RATE as u32 * CROWD_SECONDS,
            ),
            _ => (self.rate, self.messages),
        }
    }

    pub fn workload(&self, mode: Mode) -> Workload {
        let senders = self.senders(mode);
        let (rate, messages) = self.pace(mode);
        Workload {
            mode,
            clients: self.clients,
            senders,
            messages,
            rate,
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

/// The versions a workload runs against: the four, or for the crowd, v2 and v3 with each
/// poller and v4 (tokio waits with epoll too) beside them. v1 is left out of the crowd: a
/// thread per idle client is its lesson already, and 20 000 of them its limit.
pub fn versions_for(kind: Kind) -> Vec<Version> {
    match kind {
        Kind::Crowd => vec![
            VERSIONS[1],
            EPOLL_VERSIONS[0],
            VERSIONS[2],
            EPOLL_VERSIONS[1],
            VERSIONS[3],
        ],
        _ => VERSIONS.to_vec(),
    }
}

/// The crowd's active clients: a handful of people talking in a crowd that mostly listens.
const CROWD_SENDERS: usize = 10;

/// Lines per second each talking client of an echo server sends in the crowd: a turn of the
/// loop every 10 ms, so that what a turn costs shows, and no poller is pushed to its limit.
pub const CROWD_ECHO_RATE: f64 = 10.0;

/// Lines per second each sender of a room sends in the crowd: ten lines a second in the room,
/// a lively chat, which a room of 20 000 turns into 200 000 deliveries a second.
pub const CROWD_ROOM_RATE: f64 = 1.0;

/// How long the crowd's clients talk, per run.
const CROWD_SECONDS: u32 = 5;

/// The crowd's sizes, in clients (the talking ones included), before the descriptor cap.
const CROWD_SIZES: [usize; 5] = [100, 1_000, 5_000, 10_000, 20_000];

/// `--quick`'s crowd sizes.
const CROWD_SIZES_QUICK: [usize; 3] = [100, 1_000, 3_000];

/// The crowd workloads, one per size, none larger than `most_clients` (what the descriptor
/// limit lets chat-bench hold: a size above it is replaced by `most_clients` itself), and
/// what the cap left out, if anything.
pub fn crowd_plans(quick: bool, most_clients: usize) -> (Vec<Plan>, Option<usize>) {
    let (sizes, repeats): (&[usize], u32) = if quick {
        (&CROWD_SIZES_QUICK, 1)
    } else {
        (&CROWD_SIZES, 3)
    };
    let mut clients: Vec<usize> = sizes
        .iter()
        .copied()
        .filter(|&n| n <= most_clients)
        .collect();
    let wanted = sizes.iter().copied().max().unwrap_or(0);
    let capped = (wanted > most_clients).then_some(wanted);
    if capped.is_some() && clients.last().is_none_or(|&n| n < most_clients) {
        clients.push(most_clients);
    }
    let plans = clients
        .into_iter()
        .filter(|&n| n > CROWD_SENDERS)
        .map(|clients| Plan {
            kind: Kind::Crowd,
            title: "crowd",
            clients,
            senders: CROWD_SENDERS,
            messages: CROWD_ROOM_RATE as u32 * CROWD_SECONDS,
            rate: Some(CROWD_ROOM_RATE),
            repeats,
        })
        .collect();
    (plans, capped)
}

/// What `compare` calls v4 over TLS in its records and tables.
pub const V4_TLS: &str = "v4-async over TLS";

/// What `compare` calls v4 with every client on its WebSocket (SPEC 9).
pub const V4_WS: &str = "v4-async over WebSocket";

/// The WebSocket row's workload: the burst of [`plans`], every client a WebSocket, every line
/// one message.
pub fn ws_plans(quick: bool) -> Vec<Plan> {
    plans(quick)
        .into_iter()
        .filter(|p| p.kind == Kind::Burst)
        .collect()
}

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
pub const PACED_RATE: f64 = 100.0;

/// How many clients paced chat has: the burst fan-out's room, so that the two compare.
pub const PACED_CLIENTS: usize = 100;

/// How many of paced chat's clients talk at once.
pub const PACED_SENDERS: usize = 10;

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
            clients: PACED_CLIENTS,
            senders: PACED_SENDERS,
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
    fn the_crowd_grows_to_what_the_descriptors_allow_and_says_so() {
        let (plans, capped) = crowd_plans(false, 19_936);
        let sizes: Vec<usize> = plans.iter().map(|p| p.clients).collect();
        assert_eq!(sizes, [100, 1_000, 5_000, 10_000, 19_936]);
        assert_eq!(capped, Some(20_000));
        let (plans, capped) = crowd_plans(true, 19_936);
        assert_eq!(plans.len(), 3);
        assert_eq!(capped, None);
        let (plans, _) = crowd_plans(false, 960);
        let sizes: Vec<usize> = plans.iter().map(|p| p.clients).collect();
        assert_eq!(sizes, [100, 960]);
    }

    #[test]
    fn crowd_echo_clients_speak_more_often_than_room_senders() {
        let (plans, _) = crowd_plans(true, 20_000);
        let echo = plans[0].workload(Mode::Echo);
        let room = plans[0].workload(Mode::Broadcast);
        assert_eq!((echo.senders, room.senders), (10, 10));
        assert_eq!(echo.rate, Some(CROWD_ECHO_RATE));
        assert_eq!(room.rate, Some(CROWD_ROOM_RATE));
        assert!(echo.messages > room.messages);
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

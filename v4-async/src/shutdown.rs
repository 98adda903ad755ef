//! Graceful shutdown: the signals that end the server, and what happens then.
//!
//! Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all end the server the same way: the
//! listeners close, so nobody new gets in, every member's queue gets `* server shutting down`
//! and is closed behind it, and each writer sends what was queued and ends its side of the
//! stream (a TCP FIN; on TLS a close_notify first), within the two seconds SPEC 2 allows
//! ([`crate::room::Room::shut_down`]). [`crate::run`] takes any future as its shutdown
//! signal, so a test or an embedding program can stop the room without signals.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that stop the server gracefully: Ctrl-C, SIGTERM (a service manager), and
/// SIGHUP (the terminal it ran in was closed). Each is `None` if it cannot be listened for.
#[derive(Debug)]
pub struct ShutdownSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    hang_up: Option<Signal>,
}

impl ShutdownSignals {
    /// Starts listening: from here on these signals no longer end the process at once.
    pub fn listen() -> Self {
        let listen_for = |kind, name| {
            signal(kind)
                .inspect_err(|error| tracing::warn!("cannot listen for {name}: {error}"))
                .ok()
        };
        Self {
            interrupt: listen_for(SignalKind::interrupt(), "Ctrl-C"),
            terminate: listen_for(SignalKind::terminate(), "SIGTERM"),
            hang_up: listen_for(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Resolves when the first of them arrives, naming it.
    pub async fn first(mut self) -> &'static str {
        async fn arrival(signal: &mut Option<Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = arrival(&mut self.interrupt) => "Ctrl-C",
            () = arrival(&mut self.terminate) => "SIGTERM",
            () = arrival(&mut self.hang_up) => "SIGHUP",
        }
    }
}

//! # v4-async: a tokio chat room with one writer task per client
//!
//! ```text
//! cargo run -p v4-async          # listens on 127.0.0.1:8080
//! telnet 127.0.0.1 8080          # in several terminals; or: cargo run -p client
//! cargo run -p v4-async -- --tls-addr 127.0.0.1:8443 --tls-self-signed   # and TLS beside it
//! cargo run -p v4-async -- --web-addr 127.0.0.1:8090   # and a chat page: http://127.0.0.1:8090/
//! ```
//!
//! **The model.** An accept loop admits each connection into the room and spawns one task per
//! client that reads lines and hands each one to every other member, plus one *writer task*
//! per client that drains that client's bounded outbound queue into its connection. Tokio
//! multiplexes thousands of these tasks over one worker thread per core, as v2's `poll` loop
//! did by hand on one thread, but each task reads as plain sequential code.
//!
//! ```text
//!                          +-- reader task A ---+  room lock: reserve, then   +-- outbox B --+   writer task B
//!  accept loops --admit -->| wait for input     |  push one shared chunk ---->| bounded queue |--> write().await --> B
//!  (TCP; TLS after its     | reserve room       |---------------------------->| outbox C      |--> writer task C --> C
//!   handshake)             | read, frame,       |                             +---------------+
//!                          | sanitise, format   |  room? every other queue at most half full
//!                          +--------------------+  (one that stays fuller for --stall-ms is evicted)
//! ```
//!
//! ## Reading order
//!
//! v4 is a library with a thin binary (`main.rs` parses the flags of [`flags`], binds the
//! listeners they ask for and calls [`run`] on the runtime [`start`] builds), so that the room
//! serves any transport: plaintext TCP, TLS and a browser's WebSocket, and a bridge to other
//! processes ([`bridge`], which v5-cluster fills), without a copy of the room. Read it in this
//! order:
//!
//! 1. [`room`]: who is in the room, the one lock that orders it, and the backpressure: a reader
//!    reads only what every other member's queue has room for.
//! 2. [`outbox`]: one member's bounded queue of shared chunks, the writer task that drains it,
//!    and eviction after `--stall-ms`.
//! 3. [`session`]: one member's reader loop over any byte stream: v2's wait-then-read spelled
//!    out, framing, commands, rate and idle limits, and the close with a last notice.
//! 4. [`listeners`]: plaintext and TLS accept loops; a slot from accept on, a TLS handshake
//!    within its timeout, refusals told over the connection's own transport.
//! 5. [`tls`]: the certificate (files or self-signed) and the rustls configuration.
//! 6. [`web`]: the chat page and its WebSocket (`--web-addr`); [`web::lines`] turns a
//!    WebSocket into the byte stream of lines a session reads, so a browser is a member like
//!    any other, and the page itself (`web/page/app.js`) says how it talks to the server.
//! 7. [`shutdown`]: Ctrl-C, SIGTERM and SIGHUP, and the goodbye.
//! 8. The two features with a state of their own: `history` (what a newcomer is replayed) and
//!    `rate` (the token bucket behind `--rate`).
//! 9. [`bridge`]: the seam through which v5-cluster shares this room with other processes;
//!    v4 leaves it empty.
//! 10. [`flags`] and [`start`]: the command line and the process around the room, which
//!     v5-cluster's binary shares.
//!
//! ## What changed since v3
//!
//! v3 does all of this by hand in one `poll` loop on one thread; v4 hands the waiting to tokio
//! and keeps the chat.
//!
//! - **epoll behind a reactor.** v3 asked `poll` which sockets were ready, then read or wrote
//!   each without blocking. Tokio's reactor asks epoll, and each `read().await` is that same
//!   poll-then-read: try the read, and on `WouldBlock` sleep until the socket is readable
//!   ([`session`] shows the two steps).
//! - **`Rc` becomes `Arc`, plus locks.** v3's state lived in one thread; v4's tasks run on
//!   several worker threads, so the room is an `Arc<Room>` behind a `Mutex`, each outbox has a
//!   lock of its own, and a few counters are atomics so a reader can check them without a lock.
//! - **A writer task per client.** v3 wrote to each socket when `poll` said `POLLOUT`; v4 gives
//!   each client a task that `.await`s its own socket, so one slow receiver only waits itself.
//! - **A batch per read, where v3 had a turn.** v3 formatted what each client sent in a turn
//!   into one shared `Rc<[u8]>` chunk and gave each receiver one `writev` of its queued chunks
//!   per turn. v4 has no turns: a reader copies the lines of one read into a batch, shares it
//!   (`Arc<[u8]>`) with every receiver, and each writer hands its queued chunks to the kernel
//!   in one vectored write whenever its socket takes them.
//! - **The turn's pacing becomes "readers wait for room".** v3 took `POLLIN` away from every
//!   sender while a receiver's buffer was full, and its loop served clients in turns. v4's
//!   readers wait on a `Notify` until every other queue is at most half full, and reserve the
//!   room they read into ([`room`]).
//! - **Eviction after `--stall-ms`.** A queue that holds the readers back for `--stall-ms` in a
//!   row is evicted with `* error: too slow, disconnected` ([`outbox`]).
//! - **The chat.** Nicknames, commands, history, rate limits, idle timeouts, TLS, a chat page
//!   for browsers and a graceful shutdown.
//!
//! ## What it costs
//!
//! Two small tasks and one queue per client, and no buffers held between messages:
//! `chat-bench compare` measured 2.3 KB of memory per idle client (v3: 193 B, v1: 13.8 KB),
//! 37.50 M deliveries/s in a burst with 100 clients (v3: 43.12 M/s), and 10.0 MB peak with
//! 1000 clients in a burst (docs/benchmarks/results.md). The kernel's side is the same as for
//! v2 and v3: results.md counts 7.6 KB of kernel memory per idle connection, both ends of a
//! loopback connection together. The tasks, the locks and the reactor cost CPU that v3's
//! single loop does not spend; what they buy is code that reads in order, per client, and a
//! room that other transports can join.
//!
//! ## What an open room must bound
//!
//! Anyone can connect, so every convenience has a limit. The history a newcomer is replayed
//! keeps at most `--history` lines and at most half a `--max-queue` of bytes: the replay
//! always fits in the newcomer's queue with room left for the live chat. `--idle-timeout`
//! counts only a complete line with something in it as speaking. `--max-clients` and
//! `--max-per-ip` count a connection from accept on, on every listener, TLS handshakes
//! included, and a WebSocket from its handshake on (this machine is exempt from
//! `--max-per-ip`, so a class or a benchmark still can connect many times); the web
//! listener's plain HTTP connections, and its WebSocket messages and buffers, have bounds of
//! their own ([`web`]). A connection turned away, or closed as too slow or idle, gets its
//! notice, then our end of stream (a FIN; on TLS a close_notify first; on a WebSocket a close
//! frame), and its own bytes are read and dropped for a moment before the close, because
//! closing over unread input resets the connection and can destroy the notice
//! ([`session::close_with_notice`]). No client can make the others see a notice the server
//! did not send: the words that start notices are
//! nobody's nickname, and a `/me` that would read as a join, a leave or a rename is refused.

// The lesson links private items too: it is read whole, with
// `cargo doc -p v4-async --document-private-items --open`, where every link resolves.
#![allow(rustdoc::private_intra_doc_links)]

pub mod bridge;
pub mod flags;
mod history;
pub mod listeners;
pub mod outbox;
mod rate;
pub mod room;
pub mod session;
pub mod shutdown;
pub mod tls;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chat_protocol::startup;
use tokio::net::TcpListener;

pub use crate::bridge::Bridge;
pub use crate::listeners::TlsListener;
pub use crate::room::Room;
pub use crate::web::WebListener;

/// Everything the room needs to know from the command line (SPEC 2, 5, 13).
#[derive(Debug, Clone)]
pub struct Config {
    /// `--max-clients`: members plus connections still in a TLS handshake.
    pub max_clients: usize,
    /// `--max-line`: the longest line a client may send, in bytes.
    pub max_line: usize,
    /// `--max-per-ip`: connections per address; 0 is no limit.
    pub max_per_ip: usize,
    /// `--max-queue`: bytes one client may have waiting to be written.
    pub max_queue: usize,
    /// `--stall-ms`: how long one full queue may hold the readers back before it is evicted.
    pub stall: Duration,
    /// `--announce-limit`: joins and leaves are announced while at most this many are online.
    pub announce_limit: usize,
    /// `--history`: chat lines replayed to each newcomer.
    pub history: usize,
    /// `--rate`: lines per second per client; `None` for no limit.
    pub rate: Option<f64>,
    /// `--idle-timeout`; `None` for none.
    pub idle_timeout: Option<Duration>,
    /// What the room shares beyond this process: v5-cluster's Redis; `None` in v4.
    pub bridge: Option<Arc<dyn Bridge>>,
}

/// The bound listeners the room is served on.
#[derive(Debug)]
pub struct Listeners {
    /// `--addr`: plaintext TCP.
    pub plain: TcpListener,
    /// `--tls-addr`, if given.
    pub tls: Option<TlsListener>,
    /// `--web-addr`, if given: the chat page and its WebSocket.
    pub web: Option<WebListener>,
}

/// Serves one room on `listeners` until `shutdown` resolves, then says goodbye to everyone
/// and returns once they are gone or the goodbye's time is up.
pub async fn run(listeners: Listeners, config: &Config, shutdown: impl Future<Output = ()>) {
    let room = Room::open(config);
    let tls = async {
        match &listeners.tls {
            Some(tls) => listeners::accept_tls(tls, &room).await,
            None => std::future::pending().await,
        }
    };
    let web = async {
        match &listeners.web {
            Some(web) => web::accept_web(web, &room).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // In a fixed order, not tokio's random one, so that who gets the last slot is
        // reproducible: a stop comes first, and when both listeners have connections waiting,
        // the TLS ones (whose handshakes take longer to start) are admitted first. A web
        // connection takes its slot later, at its WebSocket handshake.
        biased;
        () = shutdown => {}
        () = tls => {}
        () = web => {}
        () = listeners::accept_plain(&listeners.plain, &room) => {}
    }
    // Closing the listeners first: nobody new gets in while we say goodbye.
    drop(listeners);
    room.shut_down().await;
}

/// What a server binary does once its flags are parsed (v4's and v5-cluster's alike): starts
/// the log and raises the descriptor limit, then runs `serve` to its end on tokio's
/// multi-threaded runtime, one worker thread per core. A start-up error (the runtime's own, or
/// one `serve` returns) ends the process with one sentence and exit status 1.
pub fn start(serve: impl Future<Output = anyhow::Result<()>>) {
    let _log = startup::init_logging();
    startup::raise_fd_limit();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve));
    if let Err(error) = result {
        startup::exit_with(&error);
    }
}

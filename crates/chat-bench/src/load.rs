//! One workload against one running server: connect N clients, prove every one of them is in,
//! start the clock, send, count every delivery, stop the clock.
//!
//! ```text
//!  connect N (256 at a time) --> probe until all N are in --> sample server memory
//!        |                              |
//!        +-- a receiver task per client, reading from the first byte (welcomes and join
//!            notices are drained, never left in a socket buffer)
//!
//!  clock starts --> S senders --> server --> receivers: token -> ledger + histogram
//!                     ^  (burst)                         |
//!                     +---- window: at most W lines ahead of its slowest receiver
//!  clock stops when the last expected line has arrived (or nothing moved for 5 s)
//! ```
//!
//! **Burst** senders are closed-loop with a window: each keeps at most `--window` lines ahead
//! of the slowest of its receivers. Without a window a sender could pour all its lines into
//! the kernel's socket buffers (megabytes on loopback) at once, and the latency would measure
//! those buffers, not the server. The slowest, not any one receiver: a receiver task of
//! chat-bench that the machine starves of CPU falls behind the others, and a window that
//! followed someone else would keep feeding the room until the server, rightly, evicted the
//! starved receiver as too slow (SPEC 4): the generator's weakness reported as the server's. **Paced** senders are open-loop: one
//! pacer thread sends every line at the moment scheduled for it in advance and stamps it with
//! that moment, so a server (or generator) that falls behind shows up as latency instead of
//! quietly sending less (no coordinated omission). The pacer's own lateness is measured and
//! reported next to the result.
//!
//! The receivers are where a load generator usually becomes the bottleneck, so each owns one
//! big buffer, reads as much as the socket has, jumps from token to token with `memchr`, and
//! touches only its own counters; it takes the time once per read, not once per line.

use std::io::{ErrorKind, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::client::TlsStream;

use crate::process::Process;
use crate::progress::Progress;
use crate::tally::{new_latencies, LatencySummary, ReceiverTally, Totals, LATENCY_UNIT_NANOS};
use crate::tls::Tls;
use crate::token::{for_each_token, write_token, Kind, RunTag, Token, CLIENTS_MAX, TOKEN_LEN};
use crate::ws::WsLines;

/// The most a receiver reads at once. Big reads are what keep the generator ahead of a fast
/// server: one system call and one clock read for over a thousand lines.
const READ_BUFFER_MAX: usize = 64 * 1024;

/// The least a receiver reads at once, for runs with very many clients.
const READ_BUFFER_MIN: usize = 4 * 1024;

/// All receivers' buffers together stay under this, so 10 000 idle clients cost megabytes,
/// not the 640 MB that 64 KiB each would.
const READ_BUFFERS_BUDGET: usize = 128 * 1024 * 1024;

/// Lines a burst sender writes per system call, all stamped with the same moment.
const SEND_BATCH_LINES: u32 = 64;

/// The default window's limit in lines: 500 lines of each of 10 senders in flight keep a
/// fast server busy (measured: a larger window adds latency, not throughput).
const WINDOW_LINES_MAX: u32 = 500;

/// The default windows' limit on deliveries in flight, all senders together. Under a burst,
/// latency is what is in flight divided by the rate (Little's law), so the window shrinks as
/// the room grows: in a room of 100 with 10 senders, 500 lines each; in a room of 1000, 50.
const WINDOW_DELIVERIES_MAX: u64 = 500_000;

/// The fewest lines a default window allows, so that even a huge room is kept busy.
const WINDOW_LINES_MIN: u32 = 16;

/// Most counters all burst windows together may hold (one per sender per receiver, 4 bytes
/// each): 64 MB. Far beyond any sensible room: 10 senders in a room of 20 000 need 200 000.
const WINDOW_SLOTS_MAX: usize = 1 << 24;

/// The default window: lines a burst sender may be ahead of its witness.
pub fn default_window(mode: Mode, clients: usize, senders: usize) -> u32 {
    let deliveries_per_line = match mode {
        Mode::Broadcast => clients.saturating_sub(1).max(1) as u64,
        Mode::Echo => 1,
    };
    let per_sender = WINDOW_DELIVERIES_MAX / (deliveries_per_line * senders.max(1) as u64);
    per_sender.clamp(u64::from(WINDOW_LINES_MIN), u64::from(WINDOW_LINES_MAX)) as u32
}

/// Descriptors chat-bench needs beyond one per client: stdio, the runtime, the pacer's
/// duplicates, the server's pipes.
const SPARE_DESCRIPTORS: u64 = 64;

/// The most clients a run may connect with `limit` descriptors.
pub fn most_clients(limit: u64) -> usize {
    limit.saturating_sub(SPARE_DESCRIPTORS) as usize
}

/// Refuses a run that would run out of descriptors halfway through connecting.
pub fn check_descriptors(clients: usize, limit: u64) -> anyhow::Result<()> {
    let needed = clients as u64 + SPARE_DESCRIPTORS;
    if needed > limit {
        bail!(
            "{clients} clients need about {needed} open files, but this process may open {limit}: \
             raise the limit (ulimit -n) or use fewer clients"
        );
    }
    Ok(())
}

/// Connects in flight at once: a storm, but not one that overflows the server's accept
/// backlog (1024) before it had a chance to accept.
const CONNECT_CONCURRENCY: usize = 256;

/// How often a room is probed until every client has seen a probe.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Giving up on clients that never show up in the room (or never get their echo).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// When the server turns clients away, how long the others get to read its reason before the
/// run gives up and reports it.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// A run ends early, with the missing lines counted as lost, once no line has arrived for this
/// long.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the coordinator looks at the counters and updates the progress display.
const TICK: Duration = Duration::from_millis(100);

/// The pacer sleeps until this long before a line is due, then spins: `nanosleep` alone wakes
/// tens of microseconds late, which a 1 ms latency target would notice. Spinning longer makes
/// the pacer more punctual on an idle machine (300 µs: p99 lateness of a few µs on the 2-core
/// VM this was tuned on, against some hundreds at 50) but burns that share of a core (30% at
/// 1000 lines/s) that the server then lacks; its lateness is reported either way.
const PACER_SPIN: Duration = Duration::from_micros(50);

/// How often the pacer retries lines a full socket did not take, once the schedule is over.
const PACER_RETRY: Duration = Duration::from_micros(100);

/// How long the pacer waits before the first line, so every sender starts on schedule.
const PACER_LEAD: Duration = Duration::from_millis(10);

/// Nanoseconds since this process's epoch: the clock of every token.
pub fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Who receives a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A room: every other client receives each line (v3, v4).
    Broadcast,
    /// An echo server: only the sender receives its line back (v1, v2). A delivery is an echo.
    Echo,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub mode: Mode,
    pub clients: usize,
    pub senders: usize,
    /// Lines each sender sends; 0 only connects the clients (idle memory, connection storm).
    pub messages: u32,
    /// Lines per second per sender (paced, open loop); `None` for as fast as the window allows.
    pub rate: Option<f64>,
    /// Burst senders' window, in lines (0: no window, a sender writes as fast as TCP takes).
    pub window: u32,
    /// A line each client sends first, for servers that ask for a name; `{i}` becomes the
    /// client's index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hello: Option<String>,
    /// A pause after every client is in and before the server's memory is read, so the server
    /// has finished handling the probes.
    #[serde(skip)]
    pub settle: Duration,
}

impl Workload {
    /// How many deliveries a loss-free run counts.
    pub fn expected_deliveries(&self) -> u64 {
        let per_line = match self.mode {
            Mode::Broadcast => self.clients.saturating_sub(1) as u64,
            Mode::Echo => 1,
        };
        self.senders as u64 * u64::from(self.messages) * per_line
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            bail!("--clients must be between 1 and {CLIENTS_MAX}");
        }
        if self.windowed() && self.window_slots() * self.senders > WINDOW_SLOTS_MAX {
            bail!(
                "a window per sender over every receiver is {} counters for {} senders in a \
                 room of {}: too many; use fewer senders or --window 0",
                self.window_slots() * self.senders,
                self.senders,
                self.clients
            );
        }
        if self.senders > self.clients {
            bail!(
                "--senders ({}) cannot exceed --clients ({})",
                self.senders,
                self.clients
            );
        }
        if self.messages > 0 && self.senders == 0 {
            bail!("--messages needs at least one sender");
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--rate must be a positive number of lines per second");
            }
        }
        Ok(())
    }

    /// Whether burst senders keep a window (see [`Window`]).
    fn windowed(&self) -> bool {
        self.rate.is_none() && self.window > 0 && self.messages > 0
    }

    /// How many receivers a sender's window counts: every client in a room (the sender's own
    /// slot stays unused), the sender alone for an echo.
    fn window_slots(&self) -> usize {
        match self.mode {
            Mode::Broadcast => self.clients,
            Mode::Echo => 1,
        }
    }

    /// Where in sender `sender`'s window client `receiver` reports how far it got, if it
    /// receives that sender's lines at all.
    fn window_slot(&self, sender: usize, receiver: usize) -> Option<usize> {
        match self.mode {
            Mode::Broadcast => (receiver != sender).then_some(receiver),
            Mode::Echo => (receiver == sender).then_some(0),
        }
    }

    /// Whether client `receiver` should get the lines of sender `sender`.
    fn receives(&self, receiver: usize, sender: usize) -> bool {
        match self.mode {
            Mode::Broadcast => receiver != sender,
            Mode::Echo => receiver == sender,
        }
    }
}

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// More addresses of the same room (v5-cluster's other nodes): client `i` connects to
    /// the `i mod n`-th of `addr` and these, so the clients are spread over them.
    pub also: Vec<SocketAddr>,
    /// Its process, if known, for CPU, memory and thread counts.
    pub process: Option<Process>,
    /// Speak TLS to it, trusting as this says (measuring only, see [`crate::tls`]).
    pub tls: Option<Tls>,
    /// Join through its WebSocket (`ws://ADDR/ws`, SPEC 9) instead of a line per TCP write.
    pub ws: bool,
}

impl Target {
    /// Where client `client` connects.
    fn addr_of(&self, client: usize) -> SocketAddr {
        match client % (1 + self.also.len()) {
            0 => self.addr,
            other => self.also[other - 1],
        }
    }
}

/// The reading half of a client's connection: plain TCP, TLS over TCP, or a WebSocket.
#[derive(Debug)]
pub enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
    Ws(tokio::io::ReadHalf<WsLines>),
}

/// The writing half of a client's connection: plain TCP, or TLS over TCP. TLS holds a write's
/// last record until a flush, so every write here is followed by one (a no-op on TCP).
#[derive(Debug)]
pub enum WriteSide {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
    Ws(tokio::io::WriteHalf<WsLines>),
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(half) => Pin::new(half).poll_read(cx, buf),
            ReadSide::Tls(half) => Pin::new(half).poll_read(cx, buf),
            ReadSide::Ws(half) => Pin::new(half).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_write(cx, buf),
            WriteSide::Tls(half) => Pin::new(half).poll_write(cx, buf),
            WriteSide::Ws(half) => Pin::new(half).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_flush(cx),
            WriteSide::Tls(half) => Pin::new(half).poll_flush(cx),
            WriteSide::Ws(half) => Pin::new(half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(half) => Pin::new(half).poll_shutdown(cx),
            WriteSide::Tls(half) => Pin::new(half).poll_shutdown(cx),
            WriteSide::Ws(half) => Pin::new(half).poll_shutdown(cx),
        }
    }
}

/// Writes all of `bytes`, and flushes what TLS held back.
async fn send(writer: &mut WriteSide, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub workload: Workload,
    /// This run's tag, as written in its tokens.
    pub tag: String,
    /// From the first `connect` until every `connect` returned.
    pub connect_ms: f64,
    /// From the first `connect` until every client was proven in (saw a probe or its echo).
    pub accept_ms: f64,
    pub expected: u64,
    /// Distinct lines that arrived where they should.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Lines of this run that arrived where they should not (a line never sent, or an echo
    /// server's echo reaching another client).
    pub unexpected: u64,
    /// Room lines that came back to their own sender. Our rooms never do this, but some chat
    /// servers echo every line to everyone: counted, not an error, not a delivery.
    pub echoed_to_sender: u64,
    /// Connections the server closed while the run went on (evictions, crashes).
    pub disconnected: usize,
    /// What one of those clients last received, which usually says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<String>,
    /// True if the run ended because nothing arrived for a while.
    pub stalled: bool,
    /// From the first line sent until the last expected line arrived.
    pub duration_s: f64,
    pub deliveries_per_s: f64,
    pub latency: Option<LatencySummary>,
    /// How late the pacer itself sent lines, for paced runs: latency below this is noise.
    pub pacer_lateness: Option<LatencySummary>,
    pub server: Option<ServerReport>,
}

impl RunReport {
    /// True if anything was lost, duplicated, reordered or disconnected.
    pub fn has_errors(&self) -> bool {
        self.lost + self.duplicated + self.out_of_order + self.unexpected > 0
            || self.disconnected > 0
            || self.stalled
    }
}

/// What the server spent on the run, from `/proc`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Resident memory before the first client connected.
    pub rss_before_kb: u64,
    /// Resident memory once every client was in (after the settle pause).
    pub rss_accepted_kb: u64,
    /// `(rss_accepted - rss_before) / clients`.
    pub rss_per_client_bytes: f64,
    /// Growth of the kernel's own memory (slab, kernel stacks, page tables: machine-wide, so
    /// both ends of each loopback connection) divided by the clients; `None` if unreadable.
    pub kernel_per_client_bytes: Option<f64>,
    /// Growth of the server's memory mappings divided by the clients.
    pub maps_per_client: f64,
    /// The kernel's high-water mark at the end of the run.
    pub peak_rss_kb: u64,
    /// The most threads seen (once everyone was in, and at the end).
    pub threads: u64,
    /// User plus system CPU while the clock ran.
    pub cpu_s: f64,
    pub cpu_ns_per_delivery: Option<f64>,
    /// Context switches of all server threads while the clock ran.
    pub context_switches: u64,
}

/// The open connections of a finished run. Dropping it closes them all; a comparison stops the
/// server first, so that its side, not ours, is left in `TIME_WAIT`.
#[derive(Debug, Default)]
pub struct Connections {
    // Never read: holding them is what keeps the clients connected.
    _readers: Vec<ReadSide>,
    _writers: Vec<WriteSide>,
}

/// What every task of a run shares. Written rarely: once per read chunk at most.
#[derive(Debug)]
struct Shared {
    tag: RunTag,
    probe_target: usize,
    probed: AtomicUsize,
    complete_target: usize,
    complete: AtomicUsize,
    delivered: AtomicU64,
    closed: AtomicUsize,
    /// Wakes the coordinator: everyone probed, everyone complete, a connection closed.
    wake: Notify,
    windows: Vec<Window>,
}

/// A burst sender's window: how far each of its receivers has got, so that the sender keeps
/// at most `--window` lines ahead of the slowest one.
#[derive(Debug)]
struct Window {
    /// Lines of this sender each receiver has seen without a gap, by
    /// [`Workload::window_slot`]; `u32::MAX` in a slot that receives nothing from it.
    seen: Box<[AtomicU32]>,
    /// The slowest receiver's count when the sender last looked. Only a receiver at it can
    /// open the window further, so only such a receiver wakes the sender: a room of a
    /// thousand moving on does not wake it a thousand times.
    floor: AtomicU32,
    moved: Notify,
}

impl Window {
    fn new(workload: &Workload, sender: usize) -> Window {
        let slots = workload.window_slots();
        let unused = |slot| match workload.mode {
            Mode::Broadcast => slot == sender,
            Mode::Echo => false,
        };
        Window {
            seen: (0..slots)
                .map(|slot| AtomicU32::new(if unused(slot) { u32::MAX } else { 0 }))
                .collect(),
            floor: AtomicU32::new(0),
            moved: Notify::new(),
        }
    }

    /// A receiver has now seen `count` of the sender's lines without a gap.
    ///
    /// SeqCst here and in [`Window::slowest`]: the receiver writes its count then reads the
    /// floor, the sender writes the floor then reads the counts, so at least one of them sees
    /// the other's write and a wake-up is never lost.
    fn advance(&self, slot: usize, count: u32) {
        let seen = &self.seen[slot];
        let before = seen.load(Ordering::Relaxed);
        if count == before {
            return;
        }
        seen.store(count, Ordering::SeqCst);
        if before <= self.floor.load(Ordering::SeqCst) {
            self.moved.notify_one();
        }
    }

    /// The slowest receiver's count, published as the floor that wakes the sender.
    fn slowest(&self) -> u32 {
        let min = || {
            self.seen
                .iter()
                .map(|seen| seen.load(Ordering::SeqCst))
                .min()
                .unwrap_or(u32::MAX)
        };
        self.floor.store(min(), Ordering::SeqCst);
        // Again, after publishing: a receiver that moved on while we looked may have read the
        // old floor and not woken us.
        min()
    }
}

/// One client's receiving side: everything it counts is its own.
#[derive(Debug)]
struct Receiver {
    /// Which client this is, and so which sender its own lines carry in a room.
    me: u16,
    /// In a room, its own lines coming back are an echo, not an error.
    own_lines_expected_back: bool,
    own_lines: u64,
    tally: ReceiverTally,
    /// Whose probe proves this client is in: client 0's in a room, its own for an echo.
    probe_from: Option<u16>,
    probed: bool,
    /// The windows this receiver moves: (sender, its slot in that sender's window).
    moves_windows: Vec<(usize, usize)>,
    complete: bool,
    /// When the last expected line arrived (or the last line at all, if some never did).
    last_delivery_nanos: u64,
    /// The last complete line received, to explain a disconnection.
    last_line: Vec<u8>,
    closed: bool,
}

impl Receiver {
    fn ingest(&mut self, lines: &[u8], now: u64, shared: &Shared) {
        let before = self.tally.distinct();
        let tally = &mut self.tally;
        let probe_from = self.probe_from;
        let mut probe_seen = false;
        let (me, skip_own) = (self.me, !self.own_lines_expected_back);
        let own_lines = &mut self.own_lines;
        for_each_token(lines, shared.tag, |token| match token.kind {
            Kind::Data if skip_own && token.sender == me => *own_lines += 1,
            Kind::Data => {
                tally.record(token.sender, token.seq, token.sent_nanos, now);
            }
            Kind::Probe => probe_seen |= Some(token.sender) == probe_from,
        });

        if probe_seen && !self.probed {
            self.probed = true;
            if shared.probed.fetch_add(1, Ordering::AcqRel) + 1 == shared.probe_target {
                shared.wake.notify_one();
            }
        }
        let arrived = self.tally.distinct() - before;
        if arrived > 0 {
            self.last_delivery_nanos = now;
            shared.delivered.fetch_add(arrived, Ordering::Relaxed);
            for &(sender, slot) in &self.moves_windows {
                shared.windows[sender].advance(slot, self.tally.contiguous(sender));
            }
            if !self.complete && self.tally.is_complete() {
                self.complete = true;
                if shared.complete.fetch_add(1, Ordering::AcqRel) + 1 == shared.complete_target {
                    shared.wake.notify_one();
                }
            }
        }
        let body = &lines[..lines.len() - 1];
        let start = memchr::memrchr(b'\n', body).map_or(0, |at| at + 1);
        self.last_line.clear();
        self.last_line.extend_from_slice(&body[start..]);
    }
}

/// Reads until told to stop or the server closes the connection.
async fn receive(
    mut reader: ReadSide,
    mut me: Receiver,
    buffer_size: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (ReadSide, Receiver) {
    let mut buffer = vec![0u8; buffer_size];
    let mut filled = 0;
    // Created once: a fresh `changed()` per read would register with the shared channel (a
    // lock) on every read of every client.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let read = tokio::select! {
            biased;
            _ = &mut stopped => break,
            read = reader.read(&mut buffer[filled..]) => read,
        };
        let end = match read {
            Ok(0) | Err(_) => {
                me.closed = true;
                shared.closed.fetch_add(1, Ordering::AcqRel);
                shared.wake.notify_one();
                break;
            }
            Ok(n) => filled + n,
        };
        let now = now_nanos();
        match memchr::memrchr(b'\n', &buffer[..end]) {
            Some(last) => {
                me.ingest(&buffer[..=last], now, &shared);
                buffer.copy_within(last + 1..end, 0);
                filled = end - last - 1;
            }
            // One line longer than the whole buffer: not ours (ours are short). Keep only its
            // tail, where a token could still begin.
            None if end == buffer.len() => {
                let keep = TOKEN_LEN - 1;
                buffer.copy_within(end - keep..end, 0);
                filled = keep;
            }
            None => filled = end,
        }
    }
    (reader, me)
}

/// What a sender managed before it finished or was stopped.
#[derive(Debug, Default)]
struct Sent {
    lines: u64,
    error: Option<String>,
}

/// Sends `messages` lines as fast as the window (and TCP) allow, `SEND_BATCH_LINES` per write.
async fn send_burst(
    sender: u16,
    mut writer: WriteSide,
    workload: Arc<Workload>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (WriteSide, Sent) {
    let window = shared.windows.get(usize::from(sender));
    // The slowest receiver's count when last looked: looked at again only when it limits.
    let mut slowest = 0u32;
    let mut batch = Vec::with_capacity(SEND_BATCH_LINES as usize * (TOKEN_LEN + 1));
    let mut sent = Sent::default();
    let mut seq = 0u32;
    let stopped = stop.changed();
    tokio::pin!(stopped);
    while seq < workload.messages {
        let mut allowed = window.map_or(u32::MAX, |_| slowest.saturating_add(workload.window));
        if seq >= allowed {
            let window = window.expect("only a window limits a sender");
            slowest = window.slowest();
            allowed = slowest.saturating_add(workload.window);
            if seq >= allowed {
                tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    () = window.moved.notified() => continue,
                }
            }
        }
        let lines = (workload.messages - seq)
            .min(allowed - seq)
            .min(SEND_BATCH_LINES);
        batch.clear();
        let now = now_nanos();
        for k in 0..lines {
            let token = Token {
                kind: Kind::Data,
                sender,
                seq: seq + k,
                sent_nanos: now,
            };
            write_token(&mut batch, shared.tag, token);
            batch.push(b'\n');
        }
        let written = tokio::select! {
            biased;
            _ = &mut stopped => break,
            written = send(&mut writer, &batch) => written,
        };
        if let Err(error) = written {
            sent.error = Some(error.to_string());
            break;
        }
        seq += lines;
        sent.lines += u64::from(lines);
    }
    (writer, sent)
}

/// What the pacer did: lines sent, and how late it was.
#[derive(Debug)]
struct Paced {
    sent: Sent,
    lateness: crate::tally::Latencies,
}

/// Sends every sender's lines at their scheduled times from one thread, on non-blocking
/// duplicates of the senders' sockets. Line `i` of sender `s` is due at
/// `start + (i + s / senders) / rate`, so the senders interleave evenly.
fn pace(
    mut sockets: Vec<std::net::TcpStream>,
    workload: &Workload,
    rate: f64,
    start_nanos: u64,
    tag: RunTag,
    stop: &AtomicBool,
) -> Paced {
    // Without this, every sleep may end up to 50 µs late on purpose (timer slack).
    let _ = nix::sys::prctl::set_timerslack(1);
    let senders = sockets.len();
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); senders];
    let mut lateness = new_latencies();
    let mut sent = Sent::default();
    let spacing = 1e9 / rate;
    'schedule: for seq in 0..workload.messages {
        for (sender, socket) in sockets.iter_mut().enumerate() {
            let offset = (f64::from(seq) + sender as f64 / senders as f64) * spacing;
            let due = start_nanos + offset as u64;
            wait_until(due);
            if stop.load(Ordering::Relaxed) {
                break 'schedule;
            }
            let token = Token {
                kind: Kind::Data,
                sender: sender as u16,
                seq,
                sent_nanos: due,
            };
            let buffer = &mut pending[sender];
            write_token(buffer, tag, token);
            buffer.push(b'\n');
            // Late is when the line is handed to the kernel; what the kernel then does with
            // it is part of what is measured, as for any client.
            let late = now_nanos().saturating_sub(due) / LATENCY_UNIT_NANOS;
            lateness.saturating_record(late.max(1));
            if let Err(error) = flush(socket, buffer) {
                sent.error.get_or_insert_with(|| error.to_string());
            }
            sent.lines += 1;
        }
    }
    // Lines a full socket did not take yet; the coordinator's stop ends this.
    while pending.iter().any(|p| !p.is_empty()) && !stop.load(Ordering::Relaxed) {
        for (socket, buffer) in sockets.iter_mut().zip(&mut pending) {
            if flush(socket, buffer).is_err() {
                buffer.clear();
            }
        }
        std::thread::sleep(PACER_RETRY);
    }
    Paced { sent, lateness }
}

/// Writes as much of `buffer` as the socket takes now, keeping the rest.
fn flush(socket: &mut std::net::TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    while !buffer.is_empty() {
        match socket.write(buffer) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                buffer.drain(..n);
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn wait_until(due: u64) {
    loop {
        let now = now_nanos();
        if now >= due {
            return;
        }
        let left = Duration::from_nanos(due - now);
        if left > PACER_SPIN {
            std::thread::sleep(left - PACER_SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// A new tag for each run, so lines from an earlier run (a server's history) never count.
pub fn next_tag() -> RunTag {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = clock ^ std::process::id() ^ COUNTER.fetch_add(0x9e37, Ordering::Relaxed);
    RunTag::new((mixed ^ (mixed >> 16)) as u16)
}

fn probe_line(tag: RunTag, client: usize, round: u32) -> Vec<u8> {
    let mut line = Vec::with_capacity(TOKEN_LEN + 1);
    let token = Token {
        kind: Kind::Probe,
        sender: client as u16,
        seq: round,
        sent_nanos: now_nanos(),
    };
    write_token(&mut line, tag, token);
    line.push(b'\n');
    line
}

fn millis_since(start: u64) -> f64 {
    now_nanos().saturating_sub(start) as f64 / 1e6
}

/// Runs `workload` against `target` and returns what it measured, with the connections still
/// open (the caller decides when to close them).
pub async fn run(
    workload: Workload,
    target: Target,
    progress: &Progress,
) -> anyhow::Result<(RunReport, Connections)> {
    workload.check()?;
    let workload = Arc::new(workload);
    let tag = next_tag();
    let clients = workload.clients;
    let probe_target = match workload.mode {
        Mode::Broadcast => clients - 1,
        Mode::Echo => clients,
    };
    let complete_target = (0..clients)
        .filter(|&r| {
            workload.messages > 0 && (0..workload.senders).any(|s| workload.receives(r, s))
        })
        .count();
    let shared = Arc::new(Shared {
        tag,
        probe_target,
        probed: AtomicUsize::new(0),
        complete_target,
        complete: AtomicUsize::new(0),
        delivered: AtomicU64::new(0),
        closed: AtomicUsize::new(0),
        wake: Notify::new(),
        windows: if workload.windowed() {
            (0..workload.senders)
                .map(|sender| Window::new(&workload, sender))
                .collect()
        } else {
            Vec::new()
        },
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let rss_before_kb = match target.process {
        Some(process) => Some(process.status()?.rss_kb),
        None => None,
    };
    let kernel_before_kb = crate::process::kernel_memory_kb().ok();
    let maps_before = match target.process {
        Some(process) => Some(process.memory_maps()?),
        None => None,
    };

    // Connect everyone, a storm of CONNECT_CONCURRENCY at a time; each receiver starts at once.
    progress.stage(format!("connecting {clients} clients"));
    let buffer_size = (READ_BUFFERS_BUDGET / clients).clamp(READ_BUFFER_MIN, READ_BUFFER_MAX);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let started = now_nanos();
    let mut connecting = Vec::with_capacity(clients);
    for client in 0..clients {
        let permits = Arc::clone(&permits);
        let workload = Arc::clone(&workload);
        let shared = Arc::clone(&shared);
        let stop = stop_rx.clone();
        let target = target.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            connect_client(client, &target, &workload, shared, buffer_size, stop).await
        }));
    }
    let mut writers = Vec::with_capacity(clients);
    let mut receiving = Vec::with_capacity(clients);
    for (client, task) in connecting.into_iter().enumerate() {
        let (writer, receiver) = task
            .await
            .context("a connecting task failed")?
            .with_context(|| {
                format!(
                    "client {} of {clients} could not connect to {}",
                    client + 1,
                    target.addr
                )
            })?;
        writers.push(Some(writer));
        receiving.push(receiver);
    }
    let connect_ms = millis_since(started);

    // Prove everyone is in: a room relays client 0's probe to every other client (repeated,
    // since a probe relayed before a client joined never reaches it); an echo server returns
    // each client's own probe (sent right after connecting).
    progress.stage(format!("waiting until all {clients} clients are in"));
    let mut round = 0;
    let mut probe_error = None;
    let accept_deadline = Instant::now() + ACCEPT_TIMEOUT;
    while shared.probed.load(Ordering::Acquire) < probe_target {
        let closed = shared.closed.load(Ordering::Acquire);
        if closed > 0 || Instant::now() > accept_deadline {
            // Let the other turned-away clients read what the server told them.
            tokio::time::sleep(CLOSE_GRACE).await;
            let _ = stop_tx.send(true);
            let in_room = shared.probed.load(Ordering::Acquire);
            let closed = shared.closed.load(Ordering::Acquire);
            let mut reason = String::new();
            for task in receiving {
                if let Ok((_, receiver)) = task.await {
                    if receiver.closed && reason.is_empty() && !receiver.last_line.is_empty() {
                        reason = String::from_utf8_lossy(&receiver.last_line)
                            .trim()
                            .to_owned();
                    }
                }
            }
            let why = if closed > 0 {
                let said = if reason.is_empty() {
                    "nothing".to_owned()
                } else {
                    format!("\"{reason}\"")
                };
                format!(
                    "the server closed {closed} connections (one of them last received: {said})"
                )
            } else {
                let probe =
                    probe_error.map_or(String::new(), |e| format!("; sending a probe: {e}"));
                format!("{} s passed{probe}", ACCEPT_TIMEOUT.as_secs())
            };
            bail!("only {in_room} of {probe_target} clients were confirmed in before {why}");
        }
        if let (Mode::Broadcast, Some(prober)) = (workload.mode, &mut writers[0]) {
            // A failed probe is the prober's connection closing: its receiver reports that.
            if let Err(error) = send(prober, &probe_line(tag, 0, round)).await {
                probe_error = Some(error);
            }
            round += 1;
        }
        let _ = tokio::time::timeout(PROBE_INTERVAL, shared.wake.notified()).await;
    }
    let accept_ms = millis_since(started);
    progress.note_verbose(format!(
        "{clients} clients connected in {connect_ms:.0} ms, all in after {accept_ms:.0} ms"
    ));
    if !workload.settle.is_zero() {
        tokio::time::sleep(workload.settle).await;
    }
    let accepted = match target.process {
        Some(process) => Some(process.status()?),
        None => None,
    };
    let kernel_accepted_kb = crate::process::kernel_memory_kb().ok();
    let maps_accepted = match target.process {
        Some(process) => Some(process.memory_maps()?),
        None => None,
    };

    // The measured part.
    let expected = workload.expected_deliveries();
    let usage_before = match target.process {
        Some(process) if workload.messages > 0 => Some(process.usage()?),
        _ => None,
    };
    let start_nanos = now_nanos();
    let mut sending = Vec::new();
    let mut pacer = None;
    let pacer_stop = Arc::new(AtomicBool::new(false));
    if workload.messages > 0 {
        match workload.rate {
            None => {
                for (sender, writer) in writers[..workload.senders].iter_mut().enumerate() {
                    let writer = writer.take().expect("each writer is lent once");
                    sending.push(tokio::spawn(send_burst(
                        sender as u16,
                        writer,
                        Arc::clone(&workload),
                        Arc::clone(&shared),
                        stop_rx.clone(),
                    )));
                }
            }
            Some(rate) => {
                let sockets = writers[..workload.senders]
                    .iter()
                    .flatten()
                    .map(duplicate)
                    .collect::<std::io::Result<Vec<_>>>()
                    .context("duplicating a sender's socket for the pacer")?;
                let workload = Arc::clone(&workload);
                let stop = Arc::clone(&pacer_stop);
                let start = start_nanos + PACER_LEAD.as_nanos() as u64;
                pacer = Some(tokio::task::spawn_blocking(move || {
                    pace(sockets, &workload, rate, start, tag, &stop)
                }));
            }
        }
    }

    let mut stalled = false;
    if complete_target > 0 {
        let mut last_count = 0;
        let mut last_move = Instant::now();
        progress.stage(format!(
            "sending, {} deliveries to go",
            crate::units::count(expected)
        ));
        while shared.complete.load(Ordering::Acquire) < complete_target {
            let _ = tokio::time::timeout(TICK, shared.wake.notified()).await;
            let delivered = shared.delivered.load(Ordering::Relaxed);
            progress.deliveries(delivered, expected);
            if delivered != last_count {
                last_count = delivered;
                last_move = Instant::now();
            } else if last_move.elapsed() > STALL_TIMEOUT {
                stalled = true;
                break;
            }
        }
    }
    let server_cpu = match (target.process, usage_before) {
        (Some(process), Some(before)) => {
            let after = process.usage()?;
            Some((
                (after.cpu_s - before.cpu_s).max(0.0),
                after
                    .context_switches
                    .saturating_sub(before.context_switches),
            ))
        }
        _ => None,
    };

    // Stop everything and collect the counts.
    let _ = stop_tx.send(true);
    pacer_stop.store(true, Ordering::Relaxed);
    let mut totals = Totals::default();
    let mut readers = Vec::with_capacity(clients);
    let mut last_delivery = start_nanos;
    let mut disconnected = 0;
    let mut disconnect_reason = None;
    let mut echoed_to_sender = 0;
    for task in receiving {
        let (reader, receiver) = task.await.context("a receiving task failed")?;
        totals.add(&receiver.tally);
        echoed_to_sender += receiver.own_lines;
        if receiver.tally.distinct() > 0 {
            last_delivery = last_delivery.max(receiver.last_delivery_nanos);
        }
        if receiver.closed {
            disconnected += 1;
            disconnect_reason.get_or_insert_with(|| {
                String::from_utf8_lossy(&receiver.last_line)
                    .trim()
                    .to_owned()
            });
        }
        readers.push(reader);
    }
    let mut send_error = None;
    for (sender, task) in sending.into_iter().enumerate() {
        let (writer, sent) = task.await.context("a sending task failed")?;
        writers[sender] = Some(writer);
        send_error = send_error.or(sent.error);
    }
    let mut pacer_lateness = None;
    if let Some(pacer) = pacer {
        let paced = pacer.await.context("the pacer failed")?;
        send_error = send_error.or(paced.sent.error);
        pacer_lateness = LatencySummary::of(&paced.lateness);
    }
    if let Some(error) = send_error {
        progress.warn(format!("a sender stopped early: {error}"));
    }

    let duration_s = if workload.messages > 0 {
        last_delivery
            .max(start_nanos + 1)
            .saturating_sub(start_nanos) as f64
            / 1e9
    } else {
        0.0
    };
    let server = match (target.process, rss_before_kb, accepted) {
        (Some(process), Some(rss_before_kb), Some(accepted)) => {
            let end = process.status()?;
            let (cpu_s, context_switches) = server_cpu.unwrap_or_default();
            Some(ServerReport {
                rss_before_kb,
                rss_accepted_kb: accepted.rss_kb,
                rss_per_client_bytes: (accepted.rss_kb as f64 - rss_before_kb as f64) * 1024.0
                    / clients as f64,
                kernel_per_client_bytes: kernel_before_kb.zip(kernel_accepted_kb).map(
                    |(before, accepted)| {
                        (accepted as f64 - before as f64) * 1024.0 / clients as f64
                    },
                ),
                maps_per_client: maps_before
                    .zip(maps_accepted)
                    .map_or(0.0, |(before, after)| {
                        (after as f64 - before as f64) / clients as f64
                    }),
                peak_rss_kb: end.peak_rss_kb,
                threads: accepted.threads.max(end.threads),
                cpu_s,
                cpu_ns_per_delivery: (totals.delivered > 0)
                    .then(|| cpu_s * 1e9 / totals.delivered as f64),
                context_switches,
            })
        }
        _ => None,
    };
    let report = RunReport {
        tag: tag.to_string(),
        connect_ms,
        accept_ms,
        expected: totals.expected,
        delivered: totals.delivered,
        lost: totals.lost,
        duplicated: totals.duplicated,
        out_of_order: totals.out_of_order,
        unexpected: totals.unexpected,
        echoed_to_sender,
        disconnected,
        disconnect_reason: disconnect_reason.filter(|_| disconnected > 0),
        stalled,
        duration_s,
        deliveries_per_s: if duration_s > 0.0 {
            totals.delivered as f64 / duration_s
        } else {
            0.0
        },
        latency: LatencySummary::of(&totals.latencies),
        pacer_lateness,
        server,
        workload: Arc::unwrap_or_clone(workload),
    };
    let writers = writers.into_iter().flatten().collect();
    Ok((
        report,
        Connections {
            _readers: readers,
            _writers: writers,
        },
    ))
}

/// Connects client `client`, says hello (and for an echo, sends its probe) and starts its
/// receiver.
async fn connect_client(
    client: usize,
    target: &Target,
    workload: &Workload,
    shared: Arc<Shared>,
    buffer_size: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(WriteSide, tokio::task::JoinHandle<(ReadSide, Receiver)>)> {
    let addr = target.addr_of(client);
    let stream = TcpStream::connect(addr).await?;
    // Small lines, each one awaited by someone: never hold them back for Nagle.
    stream.set_nodelay(true)?;
    let (reader, mut writer) = match &target.tls {
        None if target.ws => {
            let stream = WsLines::connect(stream, addr)
                .await
                .context("WebSocket handshake")?;
            let (reader, writer) = tokio::io::split(stream);
            (ReadSide::Ws(reader), WriteSide::Ws(writer))
        }
        None => {
            let (reader, writer) = stream.into_split();
            (ReadSide::Plain(reader), WriteSide::Plain(writer))
        }
        Some(tls) => {
            let stream = tls.connect(stream, addr).await.context("TLS handshake")?;
            let (reader, writer) = tokio::io::split(stream);
            (ReadSide::Tls(reader), WriteSide::Tls(writer))
        }
    };
    let receiver = Receiver {
        me: client as u16,
        own_lines_expected_back: workload.mode == Mode::Echo,
        own_lines: 0,
        tally: ReceiverTally::new(workload.senders, workload.messages, |sender| {
            workload.receives(client, sender)
        }),
        probe_from: match workload.mode {
            Mode::Broadcast if client == 0 => None,
            Mode::Broadcast => Some(0),
            Mode::Echo => Some(client as u16),
        },
        probed: false,
        moves_windows: if workload.windowed() {
            (0..workload.senders)
                .filter_map(|sender| Some((sender, workload.window_slot(sender, client)?)))
                .collect()
        } else {
            Vec::new()
        },
        complete: false,
        last_delivery_nanos: 0,
        last_line: Vec::new(),
        closed: false,
    };
    let receiving = tokio::spawn(receive(reader, receiver, buffer_size, shared.clone(), stop));
    // A server that turns this client away may close before these are written: its receiver
    // reports the closing, with what the server said, so write errors are not reported here.
    if let Some(hello) = &workload.hello {
        let line = format!("{}\n", hello.replace("{i}", &client.to_string()));
        let _ = send(&mut writer, line.as_bytes()).await;
    }
    if workload.mode == Mode::Echo {
        let _ = send(&mut writer, &probe_line(shared.tag, client, 0)).await;
    }
    Ok((writer, receiving))
}

/// A blocking-API handle on a sender's socket for the pacer thread. It shares the socket (and
/// its non-blocking flag) with tokio's half, which stays open in [`Connections`].
/// Paced runs are plaintext only: a TLS connection's records cannot be written from a second
/// handle.
fn duplicate(writer: &WriteSide) -> std::io::Result<std::net::TcpStream> {
    let WriteSide::Plain(writer) = writer else {
        return Err(std::io::Error::other(
            "paced runs (--rate) speak plaintext only",
        ));
    };
    let stream: &TcpStream = writer.as_ref();
    Ok(socket2::SockRef::from(stream).try_clone()?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(mode: Mode, clients: usize, senders: usize) -> Workload {
        Workload {
            mode,
            clients,
            senders,
            messages: 50,
            rate: None,
            window: default_window(mode, clients, senders),
            hello: None,
            settle: Duration::ZERO,
        }
    }

    #[test]
    fn a_room_line_is_one_delivery_per_other_client_an_echo_one() {
        assert_eq!(
            workload(Mode::Broadcast, 5, 2).expected_deliveries(),
            2 * 50 * 4
        );
        assert_eq!(workload(Mode::Echo, 5, 2).expected_deliveries(), 2 * 50);
        assert_eq!(workload(Mode::Broadcast, 1, 1).expected_deliveries(), 0);
    }

    #[test]
    fn the_default_window_bounds_deliveries_in_flight() {
        assert_eq!(default_window(Mode::Broadcast, 100, 10), 500);
        assert_eq!(default_window(Mode::Broadcast, 1000, 10), 50);
        assert_eq!(
            default_window(Mode::Broadcast, 100_000, 10),
            WINDOW_LINES_MIN
        );
        assert_eq!(default_window(Mode::Echo, 100, 100), 500);
        assert_eq!(default_window(Mode::Echo, 10_000, 10_000), 50);
    }

    #[test]
    fn a_window_follows_the_slowest_of_the_senders_receivers() {
        let room = workload(Mode::Broadcast, 4, 2);
        let window = Window::new(&room, 0);
        for (client, count) in [(1, 10), (2, 3), (3, 12)] {
            window.advance(room.window_slot(0, client).unwrap(), count);
        }
        assert_eq!(
            room.window_slot(0, 0),
            None,
            "a sender does not receive itself"
        );
        assert_eq!(window.slowest(), 3);
        window.advance(room.window_slot(0, 2).unwrap(), 11);
        assert_eq!(window.slowest(), 10);

        let echo = workload(Mode::Echo, 4, 4);
        assert_eq!(echo.window_slot(2, 2), Some(0));
        assert_eq!(echo.window_slot(2, 1), None);
        let window = Window::new(&echo, 2);
        window.advance(0, 7);
        assert_eq!(window.slowest(), 7);
    }

    #[test]
    fn only_a_receiver_at_the_floor_wakes_the_sender() {
        let room = workload(Mode::Broadcast, 3, 1);
        let window = Window::new(&room, 0);
        window.advance(1, 5);
        let first = window.moved.notified();
        tokio::pin!(first);
        assert!(first.as_mut().enable(), "client 1 was at the floor (0)");
        assert_eq!(window.slowest(), 0, "client 2 has seen nothing yet");
        // Client 1 is ahead of the floor: moving on cannot open the window.
        window.advance(1, 6);
        let woken = window.moved.notified();
        tokio::pin!(woken);
        assert!(
            !woken.as_mut().enable(),
            "woken by a receiver ahead of the floor"
        );
        window.advance(2, 4);
        assert!(
            woken.as_mut().enable(),
            "the slowest moving on wakes the sender"
        );
    }

    #[test]
    fn impossible_workloads_are_refused() {
        assert!(workload(Mode::Broadcast, 5, 6).check().is_err());
        assert!(workload(Mode::Broadcast, 0, 0).check().is_err());
        assert!(workload(Mode::Broadcast, CLIENTS_MAX + 1, 1)
            .check()
            .is_err());
        let mut paced = workload(Mode::Echo, 5, 2);
        paced.rate = Some(0.0);
        assert!(paced.check().is_err());
        assert!(workload(Mode::Echo, 5, 2).check().is_ok());
    }
}

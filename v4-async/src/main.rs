//! # v4-async: a tokio chat room with one writer task per client
//!
//! ```text
//! cargo run -p v4-async          # listens on 127.0.0.1:8080
//! telnet 127.0.0.1 8080          # in several terminals; or: cargo run -p client
//! ```
//!
//! **The model.** An accept loop spawns one task per client that reads lines and hands each one
//! to every other member of the room, plus one *writer task* per client that drains that
//! client's bounded outbound queue into its socket with `write_all().await`. Tokio multiplexes
//! thousands of these tasks over a couple of threads, as v2's `poll` loop did by hand, but each
//! task reads as plain sequential code.
//!
//! ```text
//!                       +-- reader task A --+    push     +-- outbox B --+   writer task B
//!  accept loop --spawn->|  read chunk        |----------->| bounded queue |--> write_all().await --> socket B
//!                       |  frame, sanitise   |----------->| outbox C      |--> writer task C   --> socket C
//!                       |  format once       |            +---------------+
//!                       +--------------------+  (full? the client is evicted, the room goes on)
//! ```
//!
//! **Why a writer task per client.** The Python original relayed with
//! `for w in writers: w.write(msg); await w.drain()`: the loop waits on each client in turn, so
//! one client that stops reading stalls the broadcast for everybody. Here the sender only
//! *pushes* into each receiver's queue, which never waits; each receiver's own writer task does
//! the waiting (`write_all().await` suspends while that socket's kernel buffer is full). That
//! wait is the backpressure: it slows exactly one queue, never the room.
//!
//! **Why the queue is bounded.** An unbounded queue turns a client that never reads into a
//! memory leak. Each outbox holds at most `--max-queue` bytes (default 256 KiB) while its
//! socket refuses bytes: the writer's socket is wrapped so that every `write` the kernel would
//! not take is noted in the outbox. A push past the limit to such a client evicts it: its
//! writer sends `* error: too slow, disconnected` if the socket still takes it, and the room
//! carries on. A client that reads as fast as it can is never evicted: readers yield after
//! every chunk they relay, so writers run between reads, and a queue past the limit whose
//! writer simply has not had its turn yet is allowed to stretch (to four times the limit).
//!
//! **What it costs.** Two small tasks and one queue per client: about 2.4 KB of memory per idle
//! client (no buffers are held between messages), against v1's 14 KB thread and v3's 200-byte
//! table slot. A relayed chunk is formatted once and shared by every receiver's queue through an
//! `Arc`; each writer copies what is queued for it into one buffer for one `write` system call,
//! and frees it after. The room is one `Mutex`, held only to push into queues, never across an
//! `.await`. Measured by `chat-bench compare`: about 25 M deliveries/s with 100 clients, 32 ns
//! of server CPU per delivery, 9 MB peak with 1000 clients in a burst.
//!
//! **What changed since v3.** v3 did the same bounded-buffer bookkeeping by hand in one `poll`
//! loop: readiness flags, `POLLOUT` interest, partial writes. Tokio's reactor does that part
//! now, so the code that is left is the chat: welcome, history, nicknames, commands, rate
//! limits, idle timeouts and a graceful shutdown.
//!
//! **What an open room must bound.** Anyone can connect, so every convenience has a limit.
//! The history a newcomer is replayed keeps at most `--history` lines and at most half a
//! `--max-queue` of bytes (`history.rs`): the replay always fits in the newcomer's queue with
//! room left for the live chat, so reading it never costs a connection, and long lines cannot
//! grow the server however many lines `--history` asks for. `--idle-timeout` counts only a
//! complete line with something in it as speaking: a byte without a newline, a blank line or a
//! telnet NOP keeps nobody's slot. `--max-per-ip` keeps one host from taking every slot (this
//! machine is exempt, so a class or a benchmark still can). A connection turned away, by it or
//! by `--max-clients`, gets its notice, then our FIN, and its own bytes are read and dropped
//! for a moment before the close, because closing over unread input resets the connection and
//! can destroy the notice. No client can make the others see a notice the server did not
//! send: the words that start notices are nobody's nickname, and a `/me` that would read as a
//! join, a leave or a rename is refused. Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all
//! end the server the same way: `* server shutting down` to everyone, then exit.

mod history;
mod rate;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chat_protocol::cli::{
    addr_arg, in_range, AnnounceLimit, ConnectionLimits, QueueLimit, V4_ADDR_DEFAULT,
};
use chat_protocol::command::{self, Command};
use chat_protocol::framing::{Frame, LineFramer};
use chat_protocol::limits::PerIp;
use chat_protocol::message::{self, CRLF};
use chat_protocol::startup;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::history::History;
use crate::rate::TokenBucket;

/// How much one read takes from a client before its lines are relayed. Bounded so that one
/// sender hands on at most this much per turn, then lets the writers run.
const READ_CHUNK: usize = 16 * 1024;

/// How far past `--max-queue` a queue may stretch while its writer has not yet had a turn
/// to offer the bytes to the kernel: four times the limit, and at least a megabyte more than
/// it (a few senders' formatted chunks, even with a tiny `--max-queue`). Bounds memory even if
/// a writer were starved.
fn stretched(limit: usize) -> usize {
    const FACTOR: usize = 4;
    const AT_LEAST: usize = 1024 * 1024;
    limit
        .saturating_mul(FACTOR)
        .max(limit.saturating_add(AT_LEAST))
}

/// How long the accept loop waits after an `accept` error (out of descriptors, say) before
/// trying again, instead of spinning on an error that will repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a shutdown waits for writers to flush `* server shutting down` before exiting;
/// the spec allows two seconds in all.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(1500);

/// How long a connection turned away (server full, too many from its address) may keep
/// sending after its notice before it is closed anyway: time enough for a client to read the
/// notice and close, short enough that a flood of refused connections holds few descriptors.
const TURN_AWAY_LINGER: Duration = Duration::from_secs(1);

/// What a turned-away connection's drain reads at a time; the bytes are thrown away.
const DRAIN_BUFFER: usize = 1024;

/// Default `--history`: enough recent lines for a newcomer to pick up the thread.
const HISTORY_DEFAULT: usize = 20;

/// `--history`: ten thousand lines is pages of scrollback, more than anyone reads on joining.
/// The history is bounded in bytes too (see [`history`]), whatever this says.
const HISTORY_RANGE: RangeInclusive<usize> = 0..=10_000;

/// Default `--rate`, lines per second per client: faster than anyone types, slower than a
/// script that would drown the room.
const RATE_DEFAULT: f64 = 10.0;

/// Highest `--rate`: a million lines a second is more than one client's reader gets through,
/// so a higher limit would be no limit at all, which is what `--rate 0` says.
const RATE_MAX: f64 = 1_000_000.0;

/// `--idle-timeout`: up to a week. Idle clients are cut off to free their slots, which a
/// longer wait would not; and an instant plus a week never overflows (an instant plus
/// `u64::MAX` seconds did, and panicked every client's task).
const IDLE_TIMEOUT_RANGE: RangeInclusive<u64> = 0..=7 * 24 * 60 * 60;

/// A client over its rate limit hears about it at most this often.
const SLOW_DOWN_INTERVAL: Duration = Duration::from_secs(1);

/// `v4-async`: the tokio chat room.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "sock-chat v4: a tokio chat room with per-client writer tasks"
)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT (port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT", default_value = V4_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    #[command(flatten)]
    connections: ConnectionLimits,

    #[command(flatten)]
    queue: QueueLimit,

    #[command(flatten)]
    announce: AnnounceLimit,

    /// Chat lines replayed to each newcomer, oldest first (within half a --max-queue of bytes).
    #[arg(long, value_name = "LINES", default_value_t = HISTORY_DEFAULT,
          value_parser = in_range(HISTORY_RANGE))]
    history: usize,

    /// Lines per second each client may send (bursts of twice that); 0 turns the limit off.
    #[arg(long, value_name = "LINES_PER_SEC", default_value_t = RATE_DEFAULT, value_parser = lines_per_second)]
    rate: f64,

    /// Disconnect a client that sends no line for this many seconds; 0 never does.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = in_range(IDLE_TIMEOUT_RANGE))]
    idle_timeout: u64,
}

/// `--rate`: lines per second from 0 to [`RATE_MAX`], fractions allowed (`0.5` is a line
/// every 2 s).
fn lines_per_second(input: &str) -> Result<f64, String> {
    match input.trim().parse::<f64>() {
        Ok(rate) if (0.0..=RATE_MAX).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "\"{input}\" is out of range: give lines per second from 0 to {RATE_MAX} (0: no limit)"
        )),
    }
}

fn main() {
    let cli = Cli::parse();
    let _log = startup::init_logging();
    startup::raise_fd_limit();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(cli)));
    if let Err(error) = result {
        startup::exit_with(&error);
    }
}

/// Binds, then accepts until Ctrl-C, SIGTERM or SIGHUP, then says goodbye to everyone.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    // Before the `listening on` line: a signal sent as soon as it shows must find us listening,
    // not the default action, which ends the process without a goodbye.
    let signals = ShutdownSignals::listen();
    let listener = startup::bind_listener(cli.addr)?;
    startup::log_listening("v4-async", &listener)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let room = Arc::new(Room::new(&cli));

    tokio::select! {
        () = accept_loop(&listener, &room) => {}
        signal = signals.first() => {
            tracing::info!("{signal}: shutting down");
        }
    }
    // Dropping the listener first: nobody new gets in while we say goodbye.
    drop(listener);
    room.shut_down().await;
    Ok(())
}

/// The signals that stop the server gracefully: Ctrl-C, SIGTERM (a service manager), and
/// SIGHUP (the terminal it ran in was closed). Each is `None` if it cannot be listened for.
struct ShutdownSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    hang_up: Option<Signal>,
}

impl ShutdownSignals {
    /// Starts listening: from here on these signals no longer end the process at once.
    fn listen() -> Self {
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
    async fn first(mut self) -> &'static str {
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

/// Accepts forever. Joining the room happens here, in order, so `--max-clients` is exact.
async fn accept_loop(listener: &TcpListener, room: &Arc<Room>) {
    loop {
        let (socket, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: the clients we have still deserve service, so wait for
                // descriptors to free up instead of exiting or spinning.
                tracing::warn!("accept failed: {error}; retrying in {ACCEPT_BACKOFF:?}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Chat lines are small and someone is waiting for each: send them now, not in 40 ms.
        let _ = socket.set_nodelay(true);
        let outbox = Arc::new(Outbox::new(room.max_queue));
        match room.join(addr, &outbox) {
            Ok(id) => {
                tracing::info!("{addr} connected");
                tokio::spawn(serve_client(Arc::clone(room), id, addr, socket, outbox));
            }
            Err(refusal) => {
                let notice = refusal.notice();
                tracing::warn!("turned {addr} away: {notice}");
                turn_away(socket, notice);
            }
        }
    }
}

/// Tells a connection that may not join why, and closes it so that the notice arrives
/// (SPEC 4): the notice, then our FIN, then whatever the client still sends is read and thrown
/// away until it closes too, or for [`TURN_AWAY_LINGER`] at most. Closing with unread input
/// (telnet speaks first) would make the kernel answer with a reset, which can destroy the
/// notice before the client reads it. In a task of its own, so the accept loop never waits.
fn turn_away(socket: TcpStream, notice: String) {
    tokio::spawn(async move {
        let (mut reader, mut writer) = socket.into_split();
        let goodbye = async {
            writer.write_all(&message::wire(&notice)).await?;
            writer.shutdown().await?;
            let mut discard = [0u8; DRAIN_BUFFER];
            while reader.read(&mut discard).await? > 0 {}
            io::Result::Ok(())
        };
        let _ = tokio::time::timeout(TURN_AWAY_LINGER, goodbye).await;
    });
}

/// One client's session: its writer task runs beside this reader loop until either ends.
async fn serve_client(
    room: Arc<Room>,
    id: ClientId,
    addr: SocketAddr,
    socket: TcpStream,
    outbox: Arc<Outbox>,
) {
    let (reader, writer) = socket.into_split();
    let mut writer_task = tokio::spawn(write_loop(Arc::clone(&outbox), writer));
    let now = Instant::now();
    let mut session = Session {
        bucket: room
            .rate
            // At least one line may always pass, however slow the rate.
            .map(|rate| TokenBucket::new(rate, (2.0 * rate).max(1.0), now)),
        room: Arc::clone(&room),
        id,
        name: addr.to_string(),
        outbox,
        relay: String::new(),
        text: String::new(),
        warned_slow_at: None,
        heard_at: now,
        quit: None,
    };
    let mut framer = LineFramer::new(room.max_line);
    let why = session
        .read_loop(&reader, &mut framer, &mut writer_task)
        .await;
    let name = &session.name;
    let reason = session.quit.as_ref().and_then(|reason| reason.as_deref());
    room.leave(id, name, reason);
    tracing::info!("{name} disconnected ({why})");
    // The writer sends whatever is still queued (the reply to a last line, say), then closes.
    session.outbox.close();
}

/// What one reader task knows about its client.
struct Session {
    room: Arc<Room>,
    id: ClientId,
    /// How others see this client: its address until `/nick` gives it a name.
    name: String,
    outbox: Arc<Outbox>,
    /// Chat lines of the current chunk, formatted for the others: relayed as one shared chunk.
    relay: String,
    /// Scratch space for one sanitised line, reused so a line costs no allocation.
    text: String,
    /// `None` with `--rate 0`.
    bucket: Option<TokenBucket>,
    /// When this client was last told to slow down: at most once a second.
    warned_slow_at: Option<Instant>,
    /// When this client last spoke, for `--idle-timeout`: see [`Session::on_line`].
    heard_at: Instant,
    /// Set by `/quit`, with its reason if one was given.
    quit: Option<Option<String>>,
}

/// Why a session ended, for the log.
type Ending = &'static str;

impl Session {
    /// Reads and relays until the client leaves; says why it ended.
    async fn read_loop(
        &mut self,
        reader: &OwnedReadHalf,
        framer: &mut LineFramer,
        writer_task: &mut JoinHandle<()>,
    ) -> Ending {
        loop {
            let idle = async {
                match self.room.idle_timeout {
                    Some(timeout) => {
                        tokio::time::sleep_until((self.heard_at + timeout).into()).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = reader.readable() => {
                    if ready.is_err() {
                        return "read error";
                    }
                }
                // The writer ends only when the client is gone or evicted: stop reading too.
                _ = &mut *writer_task => return "connection lost",
                () = idle => {
                    let secs = self.room.idle_timeout.map_or(0, |t| t.as_secs());
                    self.reply(&message::idle_timeout(secs));
                    return "idle";
                }
            }
            match self.read_chunk(reader, framer) {
                Ok(true) => {}
                Ok(false) => return "end of stream",
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return "connection reset",
            }
            if self.quit.is_some() {
                return "quit";
            }
            // One chunk per turn: let the writers (and other readers) run before reading more.
            tokio::task::yield_now().await;
        }
    }

    /// Reads one chunk without waiting and acts on its lines; false at end of stream.
    /// Not `async`: the buffer lives on the stack for this call only, not in every idle task.
    fn read_chunk(&mut self, reader: &OwnedReadHalf, framer: &mut LineFramer) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = reader.try_read(&mut chunk)?;
        let max_line = framer.max_line();
        let on_frame = |frame: Frame<'_>| match frame {
            Frame::Line(raw) => self.on_line(raw),
            Frame::TooLong => self.reply(&message::line_too_long(max_line)),
        };
        if n == 0 {
            framer.finish(on_frame);
        } else {
            framer.push(&chunk[..n], on_frame);
        }
        self.flush_relay();
        Ok(n > 0)
    }

    /// One framed line: sanitise, rate-limit, then chat or command.
    ///
    /// Only a line with something left in it after sanitising counts as speaking for
    /// `--idle-timeout`: bytes of an unfinished line, blank lines and telnet commands cost a
    /// client nothing to send and would keep an abandoned connection in its slot forever (an
    /// overlong line never gets here: nobody looked at what it held). A line the rate limit
    /// drops still counts: its sender is plainly there, the rate limit already answers it,
    /// and not counting it would stop nobody, since one line per timeout passes any limit.
    fn on_line(&mut self, raw: &[u8]) {
        if self.quit.is_some() {
            return;
        }
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        if chat_protocol::sanitize::sanitize_into(raw, &mut text) {
            self.heard_at = Instant::now();
            if self.within_rate() {
                self.act_on(command::parse(&text));
            }
        }
        self.text = text;
    }

    /// Takes a token from the bucket; over the limit, warns at most once a second.
    fn within_rate(&mut self) -> bool {
        let Some(bucket) = &mut self.bucket else {
            return true;
        };
        let now = Instant::now();
        if bucket.try_take(now) {
            return true;
        }
        let warned_recently = self
            .warned_slow_at
            .is_some_and(|at| now.duration_since(at) < SLOW_DOWN_INTERVAL);
        if !warned_recently {
            self.warned_slow_at = Some(now);
            self.reply(message::SLOW_DOWN);
        }
        false
    }

    fn act_on(&mut self, command: Command<'_>) {
        match command {
            Command::Chat(text) => self.queue_relay(&message::chat_line(&self.name, text)),
            Command::Me(text) if command::me_reads_as_notice(text) => {
                self.reply(message::ME_READS_AS_NOTICE)
            }
            Command::Me(text) => self.queue_relay(&message::action(&self.name, text)),
            Command::Nick(None) => self.reply(&message::you_are(&self.name)),
            Command::Nick(Some(new)) => {
                // Lines already queued went out under the old name; the rename comes after.
                self.flush_relay();
                match self.room.rename(self.id, &self.name, new) {
                    Ok(()) => {
                        tracing::info!("{}", message::renamed(&self.name, new));
                        self.name = new.to_owned();
                    }
                    Err(refusal) => self.reply(&refusal),
                }
            }
            Command::List => {
                for line in self.room.list() {
                    self.reply(&line);
                }
            }
            Command::Pm { to, text } => {
                self.flush_relay();
                let line = message::private(&self.name, text);
                if !self.room.send_private(to, &line) {
                    self.reply(&message::no_such_user(to));
                }
            }
            Command::Quit(reason) => {
                self.flush_relay();
                self.quit = Some(reason.map(str::to_owned));
            }
            Command::Help => {
                for line in message::HELP {
                    self.reply(line);
                }
            }
            Command::Usage(usage) => self.reply(&message::usage(usage)),
            Command::Unknown(word) => self.reply(&message::unknown_command(word)),
        }
    }

    /// Adds a line for the others to the chunk being built.
    fn queue_relay(&mut self, line: &str) {
        tracing::info!("{line}");
        self.relay.push_str(line);
        self.relay.push_str(CRLF);
    }

    /// Relays the lines gathered so far, formatted once and shared by every receiver.
    fn flush_relay(&mut self) {
        if !self.relay.is_empty() {
            let lines = std::mem::take(&mut self.relay);
            self.room.relay(self.id, lines);
        }
    }

    /// A notice for this client only.
    fn reply(&self, line: &str) {
        self.outbox.push(Chunk::from(message::wire(line)));
    }
}

/// Bytes on their way to clients. One chunk, formatted once, is shared by every receiver.
type Chunk = Arc<[u8]>;

/// Drains one client's outbox into its socket until the client is gone or evicted.
async fn write_loop(outbox: Arc<Outbox>, socket: OwnedWriteHalf) {
    let mut socket = WatchedSocket {
        socket,
        outbox: Arc::clone(&outbox),
    };
    loop {
        let batch = match outbox.take_batch() {
            Batch::Bytes(batch) => batch,
            Batch::Empty => {
                outbox.ready.notified().await;
                continue;
            }
            Batch::Closed => return,
            Batch::Evicted => break,
        };
        tokio::select! {
            // The drain: suspends while this client's kernel buffer is full. Only this
            // client's queue waits; senders keep pushing until it hits --max-queue.
            written = socket.write_all(&batch) => {
                if written.is_err() {
                    return;
                }
            }
            () = outbox.evicted.notified() => break,
        }
        outbox.sent(batch.len());
    }
    // Evicted: one attempt to say why, without waiting for a socket that is not being read.
    let _ = socket
        .socket
        .try_write(message::wire(message::TOO_SLOW).as_slice());
}

/// The writer's socket, telling the outbox whether the kernel took the last bytes offered.
/// That is what "full" means: only a client whose socket refused bytes can be evicted, never
/// one whose writer simply has not had its turn yet.
struct WatchedSocket {
    socket: OwnedWriteHalf,
    outbox: Arc<Outbox>,
}

impl AsyncWrite for WatchedSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.socket).poll_write(cx, bytes);
        this.outbox
            .socket_full
            .store(written.is_pending(), Ordering::Relaxed);
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}

/// One client's bounded outbound queue, shared by every task that sends to it.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// `--max-queue`: bytes queued or being written beyond which a client whose socket refuses
    /// bytes is evicted.
    limit: usize,
    /// True while the kernel refuses this client's bytes (its last write would have blocked).
    socket_full: AtomicBool,
    /// Wakes the writer: something was queued, or the outbox was closed.
    ready: Notify,
    /// Wakes a writer stuck in `write_all`: the client was evicted.
    evicted: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    chunks: VecDeque<Chunk>,
    /// Bytes in `chunks` plus the batch the writer is writing now.
    bytes: usize,
    closing: Closing,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Closing {
    #[default]
    Open,
    /// Send what is queued, then close (the client left, or the server is shutting down).
    AfterFlush,
    /// Too slow: drop what is queued and close now.
    Evicted,
}

/// What the writer finds when it looks at its outbox.
enum Batch {
    Bytes(Vec<u8>),
    Empty,
    Closed,
    Evicted,
}

/// What became of a push.
#[derive(Debug, PartialEq, Eq)]
enum Pushed {
    Queued,
    /// This push evicted the client.
    Evicted,
    /// The client was already leaving; the bytes were dropped.
    Refused,
}

impl Outbox {
    fn new(limit: usize) -> Self {
        Self {
            state: Mutex::default(),
            limit,
            socket_full: AtomicBool::new(false),
            ready: Notify::new(),
            evicted: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic elsewhere cannot leave a queue half-updated: every update is one statement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `chunk`, or evicts the client if its queue is full. Never waits.
    ///
    /// Full means past `--max-queue` while the socket refuses bytes: the client is not reading.
    /// Past the limit while the writer has merely not run yet (a burst from many senders in one
    /// turn), the queue may stretch, up to [`stretched`] bytes.
    fn push(&self, chunk: Chunk) -> Pushed {
        let mut state = self.lock();
        if state.closing != Closing::Open {
            return Pushed::Refused;
        }
        let queued = state.bytes + chunk.len();
        let full = queued > self.limit && self.socket_full.load(Ordering::Relaxed);
        if full || queued > stretched(self.limit) {
            state.closing = Closing::Evicted;
            state.chunks = VecDeque::new();
            drop(state);
            self.evicted.notify_one();
            self.ready.notify_one();
            return Pushed::Evicted;
        }
        state.bytes += chunk.len();
        state.chunks.push_back(chunk);
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Everything queued, copied into one buffer for one `write_all`: one system call for many
    /// lines. The buffer is dropped after each write, so an idle client holds none.
    fn take_batch(&self) -> Batch {
        let mut state = self.lock();
        if state.closing == Closing::Evicted {
            return Batch::Evicted;
        }
        if state.chunks.is_empty() {
            return match state.closing {
                Closing::Open => Batch::Empty,
                _ => Batch::Closed,
            };
        }
        let mut batch = Vec::with_capacity(state.chunks.iter().map(|c| c.len()).sum());
        for chunk in state.chunks.drain(..) {
            batch.extend_from_slice(&chunk);
        }
        state.chunks = VecDeque::new();
        Batch::Bytes(batch)
    }

    /// The writer finished writing `n` bytes of a batch.
    fn sent(&self, n: usize) {
        let mut state = self.lock();
        state.bytes = state.bytes.saturating_sub(n);
    }

    /// No more pushes: the writer sends what is queued, then closes the socket.
    fn close(&self) {
        let mut state = self.lock();
        if state.closing == Closing::Open {
            state.closing = Closing::AfterFlush;
        }
        drop(state);
        self.ready.notify_one();
    }
}

/// Identifies a member of the room for as long as it is connected; increases with each join,
/// so the members listed in id order are listed in the order they came.
type ClientId = u64;

/// Everyone connected, what they said lately, and the limits that apply to them.
#[derive(Debug)]
struct Room {
    state: Mutex<RoomState>,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    announce_limit: usize,
    /// Lines per second per client; `None` with `--rate 0`.
    rate: Option<f64>,
    idle_timeout: Option<Duration>,
    /// Signalled when the last member leaves, for the shutdown to know it is done.
    emptied: Notify,
}

#[derive(Debug)]
struct RoomState {
    members: BTreeMap<ClientId, Member>,
    next_id: ClientId,
    /// Members per address, for `--max-per-ip`: counted from accept to leave.
    per_ip: PerIp,
    /// The last chat lines, as relayed, within `--history` lines and half a queue of bytes.
    history: History,
}

#[derive(Debug)]
struct Member {
    /// How the others see this client.
    name: String,
    /// Where it connected from, for `--max-per-ip`.
    ip: IpAddr,
    outbox: Arc<Outbox>,
}

/// Why a connection may not join; it is told so before it is closed.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `--max-clients` are connected.
    Full { max_clients: usize },
    /// Its address holds `--max-per-ip` connections already.
    TooManyFromAddress { max_per_ip: usize },
}

impl Refusal {
    fn notice(self) -> String {
        match self {
            Refusal::Full { max_clients } => message::server_full(max_clients),
            Refusal::TooManyFromAddress { max_per_ip } => {
                message::too_many_from_address(max_per_ip)
            }
        }
    }
}

impl Room {
    fn new(cli: &Cli) -> Self {
        let state = RoomState {
            members: BTreeMap::new(),
            next_id: 0,
            per_ip: PerIp::new(cli.connections.max_per_ip),
            history: History::new(cli.history, history::budget(cli.queue.max_queue)),
        };
        Self {
            state: Mutex::new(state),
            max_clients: cli.connections.max_clients,
            max_line: cli.connections.max_line,
            max_queue: cli.queue.max_queue,
            announce_limit: cli.announce.announce_limit,
            rate: (cli.rate > 0.0).then_some(cli.rate),
            idle_timeout: (cli.idle_timeout > 0).then(|| Duration::from_secs(cli.idle_timeout)),
            emptied: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a client, welcomes it with the recent history and tells the others, or says why
    /// it may not join. Under one lock, so no line slips between the history and the live
    /// stream.
    ///
    /// The history goes into the newcomer's empty queue as the very chunks relayed, shared,
    /// not copied; it is at most half a queue ([`history::budget`]), so the live chat that
    /// follows fits beside it while the newcomer reads it.
    fn join(&self, addr: SocketAddr, outbox: &Arc<Outbox>) -> Result<ClientId, Refusal> {
        let mut state = self.lock();
        if state.members.len() >= self.max_clients {
            return Err(Refusal::Full {
                max_clients: self.max_clients,
            });
        }
        if !state.per_ip.try_add(addr.ip()) {
            return Err(Refusal::TooManyFromAddress {
                max_per_ip: state.per_ip.max(),
            });
        }
        let id = state.next_id;
        state.next_id += 1;
        let online = state.members.len() + 1;
        let name = addr.to_string();
        outbox.push(Chunk::from(message::wire(&message::welcome(&name, online))));
        for line in state.history.lines() {
            outbox.push(Arc::clone(line));
        }
        if online <= self.announce_limit {
            let notice = Chunk::from(message::wire(&message::joined(&name, online)));
            send_to_all(&state.members, None, &notice);
        }
        let member = Member {
            name,
            ip: addr.ip(),
            outbox: Arc::clone(outbox),
        };
        state.members.insert(id, member);
        Ok(id)
    }

    /// Removes a client and tells the others, with the reason it gave to `/quit`.
    fn leave(&self, id: ClientId, name: &str, reason: Option<&str>) {
        let mut state = self.lock();
        let Some(member) = state.members.remove(&id) else {
            return;
        };
        state.per_ip.remove(member.ip);
        let online = state.members.len();
        if online <= self.announce_limit {
            let notice = Chunk::from(message::wire(&message::left(name, online, reason)));
            send_to_all(&state.members, None, &notice);
        }
        if online == 0 {
            self.emptied.notify_waiters();
        }
    }

    /// Hands chat lines (one or many, each ending in CRLF) to every member but the sender, in
    /// one pass under the lock so every receiver sees lines in the same order, and keeps them
    /// for the history.
    fn relay(&self, from: ClientId, lines: String) {
        let mut state = self.lock();
        state.history.record_all(&lines, CRLF);
        send_to_all(&state.members, Some(from), &Chunk::from(lines.into_bytes()));
    }

    /// Gives member `id` the name `new` unless someone else has it in any case; everyone,
    /// the renamed member included, is told.
    fn rename(&self, id: ClientId, old: &str, new: &str) -> Result<(), String> {
        if let Err(why) = command::check_nick(new) {
            return Err(message::bad_nick(new, why));
        }
        if new == old {
            return Err(message::you_are(old));
        }
        let mut state = self.lock();
        let taken = state
            .members
            .iter()
            .any(|(&other, member)| other != id && member.name.eq_ignore_ascii_case(new));
        if taken {
            return Err(message::nick_taken(new));
        }
        if let Some(member) = state.members.get_mut(&id) {
            member.name = new.to_owned();
        }
        let notice = Chunk::from(message::wire(&message::renamed(old, new)));
        send_to_all(&state.members, None, &notice);
        Ok(())
    }

    /// `* online (N): ...`, in the order members joined, in lines of bounded length.
    fn list(&self) -> Vec<String> {
        let state = self.lock();
        message::online_list(state.members.values().map(|member| member.name.as_str()))
    }

    /// Sends `line` to the member called `to` (any case); false if there is none.
    fn send_private(&self, to: &str, line: &str) -> bool {
        let state = self.lock();
        let target = state
            .members
            .values()
            .find(|member| member.name.eq_ignore_ascii_case(to));
        match target {
            Some(member) => {
                member.outbox.push(Chunk::from(message::wire(line)));
                true
            }
            None => false,
        }
    }

    /// Tells everyone the server is stopping, lets the writers flush, and returns once every
    /// client is gone or [`SHUTDOWN_FLUSH`] has passed.
    async fn shut_down(&self) {
        let emptied = self.emptied.notified();
        tokio::pin!(emptied);
        emptied.as_mut().enable();
        {
            let state = self.lock();
            if state.members.is_empty() {
                return;
            }
            let goodbye = Chunk::from(message::wire(message::SHUTTING_DOWN));
            for member in state.members.values() {
                member.outbox.push(Arc::clone(&goodbye));
                member.outbox.close();
            }
        }
        if tokio::time::timeout(SHUTDOWN_FLUSH, emptied).await.is_err() {
            tracing::warn!("some clients did not take the goodbye in time");
        }
    }
}

/// Pushes `chunk` to every member except `from`. A push never waits; one that overflows a
/// queue evicts that member, whose own tasks then clean up.
fn send_to_all(members: &BTreeMap<ClientId, Member>, from: Option<ClientId>, chunk: &Chunk) {
    for (&id, member) in members {
        if Some(id) != from && member.outbox.push(Arc::clone(chunk)) == Pushed::Evicted {
            tracing::warn!("{} evicted: its queue is full (too slow)", member.name);
        }
    }
}

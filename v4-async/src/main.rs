//! # v4-async: a tokio chat room with one writer task per client
//!
//! ```text
//! cargo run -p v4-async          # listens on 127.0.0.1:8080
//! telnet 127.0.0.1 8080          # in several terminals; or: cargo run -p client
//! ```
//!
//! **The model.** An accept loop spawns one task per client that reads lines and hands each one
//! to every other member of the room, plus one *writer task* per client that drains that
//! client's bounded outbound queue into its socket. Tokio multiplexes thousands of these tasks
//! over a couple of threads, as v2's `poll` loop did by hand, but each task reads as plain
//! sequential code.
//!
//! ```text
//!                       +-- reader task A --+    push     +-- outbox B --+   writer task B
//!  accept loop --spawn->|  wait for room     |----------->| bounded queue |--> write().await --> socket B
//!                       |  read a chunk      |----------->| outbox C      |--> writer task C --> socket C
//!                       |  frame, sanitise   |            +---------------+
//!                       |  format once       |   room? every other queue at most half full
//!                       +--------------------+   (one that stays fuller for --stall-ms is evicted)
//! ```
//!
//! **Why a writer task per client.** The Python original relayed with
//! `for w in writers: w.write(msg); await w.drain()`: the loop waits on each client in turn, so
//! one client that stops reading stalls the broadcast for everybody, for as long as it likes.
//! Here a reader only *pushes* into each receiver's queue; each receiver's own writer task waits
//! for its socket (`write().await` suspends while that socket's kernel buffer is full), so how
//! fast one receiver reads decides how fast its own queue drains, and nothing else.
//!
//! **Backpressure: readers wait for room before they read.** Pushing without waiting is safe only
//! if senders cannot outrun the receivers, and they easily could: a two-byte line `a\n` becomes
//! `127.0.0.1:52344 says: a\r\n`, twelve times the bytes, for every receiver. So a reader reads
//! only when every other member's queue is at most half full, and then at most what can become no
//! more than the free half (`message::relayed_bound`, the growth of the worst lines, gives the
//! size). Checking and reserving that room is one step under the room lock, so two readers never
//! count the same free space and no queue passes `--max-queue` (`Room::reserve` says why).
//! Otherwise the reader waits, on a `Notify` that the full queue's writer signals once it has
//! drained to half, and the sender's bytes wait in the kernel: its TCP window closes, and TCP slows
//! the sender, as v1's blocking `write` did, but without a thread per client. Nothing is dropped.
//!
//! **Slow consumers, and the trade-off.** While one queue is more than half full, the whole
//! room waits for it, so it may not do so for long. Its outbox notes since when it has held a
//! reader back, and forgets it once the queue has drained to half; a queue that has held the
//! room back for `--stall-ms` in a row (default 500 ms) is evicted: what it had queued is
//! dropped, and the client reads `* error: too slow, disconnected` after what the kernel
//! already holds for it (`close_with_notice`). A client that reads as fast as its socket allows
//! drains half a queue in far less than that, so it is never evicted, whatever the senders do;
//! one that stopped reading, or reads a trickle, costs the room a pause of at most `--stall-ms`
//! and is gone. That number is the trade-off: a longer one forgives a client on a poor network
//! more and lets one stalled client freeze the room for longer; a shorter one keeps the room
//! lively and gives up on the slow sooner.
//!
//! **What memory this bounds.** Chat lines enter a queue only into room a reader reserved, so
//! they never take it past `--max-queue` (default 256 KiB), except one read into a queue at
//! most half full when not a byte more would fit (a tiny `--max-queue`, or a long line already
//! held): one chunk may then pass, or such a line could never be relayed. Notices (answers,
//! joins, leaves, renames) never wait for room, so they never hold a reader back; they may take
//! a queue 64 KiB past the limit and are dropped for a client further behind than that. And a
//! queue holds pointers, not copies: a relay is formatted once into an `Arc`, every receiver's
//! queue points at the same bytes, and a writer hands the kernel its chunks where they are in
//! one vectored write. So a thousand clients that never read cost one copy of what was said,
//! plus a pointer per chunk each, until they are evicted.
//!
//! **What it costs.** Two small tasks and one queue per client: about 2.4 KB of memory per idle
//! client (no buffers are held between messages), against v1's 14 KB thread and v3's 200-byte
//! table slot. The room is one `Mutex`, held to check and reserve room and to push into queues,
//! never across an `.await`; while no queue is over half full, a reader learns that from one
//! counter, without looking at every queue. Measured by `chat-bench compare`: about 25 M
//! deliveries/s with 100 clients, 32 ns of server CPU per delivery, 9 MB peak with 1000 clients
//! in a burst.
//!
//! **What changed since v3.** v3 does the same bookkeeping by hand in one `poll` loop:
//! per-client byte queues, `POLLIN` taken away from senders while a receiver is full, `POLLOUT`,
//! partial writes. Tokio's reactor does the waiting now, and a reader that waits for room is
//! plain code that `.await`s; what is left is the chat: welcome, history, nicknames, commands,
//! rate limits, idle timeouts and a graceful shutdown.
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
//! can destroy the notice; a client closed as too slow or idle is closed the same way. No
//! client can make the others see a notice the server did not send: the words that start
//! notices are nobody's nickname, and a `/me` that would read as a join, a leave or a rename is
//! refused. Ctrl-C, SIGTERM and SIGHUP (a closed terminal) all end the server the same way:
//! `* server shutting down` to everyone, then exit.

mod history;
mod rate;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chat_protocol::cli::{
    addr_arg, in_range, AnnounceLimit, ConnectionLimits, QueueLimit, StallLimit, V4_ADDR_DEFAULT,
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

/// The most one read takes from a client. Usually the room's free space limits a read before
/// this does (see [`Room::reserve`]); the buffer lives on the stack only while a read runs.
const READ_CHUNK: usize = 16 * 1024;

/// How far past `--max-queue` notices (replies, joins, leaves, renames) may take a queue. Chat
/// lines are read only when they fit under `--max-queue`, but a notice never waits, so it needs
/// room of its own: 64 KiB is hundreds of notices, more than a client that reads ever has
/// waiting, and it bounds what one that does not read can cost (its notices are dropped past it).
const NOTICE_ROOM: usize = 64 * 1024;

/// Most queued chunks handed to the kernel in one vectored write: enough that a queue of short
/// relays costs a few system calls, small enough for the stack of one `poll`.
const WRITE_SLICES: usize = 64;

/// How long closing a client with a last notice may take, from writing the notice to the
/// client's own close ([`close_with_notice`]): time enough for a client to read the notice and
/// close, short enough that a flood of refused or evicted connections holds few descriptors.
const LAST_NOTICE_GRACE: Duration = Duration::from_secs(1);

/// What [`close_with_notice`] reads at a time of what a departing client still sends; the bytes
/// are thrown away.
const DISCARD_BUFFER: usize = 1024;

/// How long the accept loop waits after an `accept` error (out of descriptors, say) before
/// trying again, instead of spinning on an error that will repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a shutdown waits for writers to flush `* server shutting down` before exiting;
/// the spec allows two seconds in all.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(1500);

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
    stall: StallLimit,

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
        let outbox = Arc::new(room.new_outbox());
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

/// Tells a connection that may not join why, and closes it so that the notice arrives, with
/// [`close_with_notice`] (telnet speaks first, so there may well be unread input). In a task of
/// its own, so the accept loop never waits.
fn turn_away(socket: TcpStream, notice: String) {
    tokio::spawn(close_with_notice(socket, Vec::new(), notice));
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
    let ending = session
        .read_loop(&reader, &mut framer, &mut writer_task)
        .await;
    let name = &session.name;
    let reason = session.quit.as_ref().and_then(|reason| reason.as_deref());
    room.leave(id, name, reason);
    tracing::info!("{name} disconnected ({})", ending.why());
    let notice = match ending {
        Ending::Left(_) => {
            // The writer sends whatever is still queued (the reply to a last line, say), then
            // closes.
            session.outbox.close();
            return;
        }
        Ending::TooSlow { socket, unsent } => {
            if let Ok(socket) = reader.reunite(socket) {
                // Boxed: the closing's state is needed once, not in every client's task.
                Box::pin(close_with_notice(
                    socket,
                    unsent,
                    message::TOO_SLOW.to_owned(),
                ))
                .await;
            }
            return;
        }
        Ending::Idle if session.outbox.stop() => {
            message::idle_timeout(room.idle_timeout.map_or(0, |timeout| timeout.as_secs()))
        }
        // Evicted at the same moment: the writer is stopping for that already.
        Ending::Idle => message::TOO_SLOW.to_owned(),
    };
    // Boxed, as above.
    Box::pin(async move {
        if let Ok(WriterEnd::Stopped { socket, unsent }) = writer_task.await {
            if let Ok(socket) = reader.reunite(socket) {
                close_with_notice(socket, unsent, notice).await;
            }
        }
    })
    .await;
}

/// Closes a client with a last notice that arrives (SPEC 4): every close that has something to
/// say comes here (too slow, idle, server full, too many from one address). The caller has
/// stopped reading the client. This writes `unsent` (the rest of a line the client was in the
/// middle of receiving, so that the notice starts a line of its own) and the notice, then shuts
/// down the write side, so that the client reads the notice and then a clean end of stream;
/// meanwhile it reads and discards whatever the client still sends, until the client closes its
/// side too; all of that within [`LAST_NOTICE_GRACE`]. Only then is the socket closed. Closing
/// it at once would be simpler and wrong: closing a socket with unread input makes the kernel
/// answer with a reset, and a reset destroys what the client has not read yet, the notice
/// first.
async fn close_with_notice(mut socket: TcpStream, unsent: Vec<u8>, notice: String) {
    let mut last_words = unsent;
    last_words.extend_from_slice(&message::wire(&notice));
    let (mut from_client, mut to_client) = socket.split();
    let say = async {
        to_client.write_all(&last_words).await?;
        to_client.shutdown().await
    };
    let discard = async {
        let mut sink = [0u8; DISCARD_BUFFER];
        while from_client.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let closing = async { tokio::join!(say, discard) };
    if tokio::time::timeout(LAST_NOTICE_GRACE, closing)
        .await
        .is_err()
    {
        tracing::debug!("closed a client that had not taken its last notice and closed in time");
    }
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

/// Why a session ended.
enum Ending {
    /// The client left, or its connection broke; says how, for the log.
    Left(&'static str),
    /// Silent for `--idle-timeout`: the server closes it, telling it so.
    Idle,
    /// Evicted as too slow: its writer stopped and handed back its socket, with what it still
    /// owed of a line, for the server to close it, telling it so.
    TooSlow {
        socket: OwnedWriteHalf,
        unsent: Vec<u8>,
    },
}

impl Ending {
    /// The session ends because the writer task did: evicted as too slow, or the socket broke.
    fn writer_ended(end: Result<WriterEnd, tokio::task::JoinError>) -> Self {
        match end {
            Ok(WriterEnd::Stopped { socket, unsent }) => Ending::TooSlow { socket, unsent },
            _ => Ending::Left("connection lost"),
        }
    }

    /// For the log line.
    fn why(&self) -> &'static str {
        match self {
            Ending::Left(why) => why,
            Ending::Idle => "idle",
            Ending::TooSlow { .. } => "too slow",
        }
    }
}

impl Session {
    /// Reads and relays until the client leaves; says why it ended.
    async fn read_loop(
        &mut self,
        reader: &OwnedReadHalf,
        framer: &mut LineFramer,
        writer_task: &mut JoinHandle<WriterEnd>,
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
                        return Ending::Left("read error");
                    }
                }
                // The writer ends only when the client is gone or evicted: stop reading too.
                end = &mut *writer_task => return Ending::writer_ended(end),
                () = idle => return Ending::Idle,
            }
            // The backpressure: no read until every other queue has room for what it becomes.
            // Meanwhile this client's bytes wait in the kernel, and TCP slows the client.
            let room = match self
                .room
                .reserve(self.id, self.name_bound(), framer.buffered())
            {
                Verdict::Read(room) => room,
                // Boxed: waiting is the exception, so its state is not kept in every task.
                wait => tokio::select! {
                    room = Box::pin(self.wait_for_room(wait, framer)) => room,
                    end = &mut *writer_task => return Ending::writer_ended(end),
                },
            };
            match self.read_chunk(reader, framer, room) {
                Ok(true) => {}
                Ok(false) => return Ending::Left("end of stream"),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Ending::Left("connection reset"),
            }
            if self.quit.is_some() {
                return Ending::Left("quit");
            }
        }
    }

    /// The longest name this client's lines may carry in the next read: a `/nick` in the
    /// middle of it may make the name longer.
    fn name_bound(&self) -> usize {
        self.name.len().max(command::NICK_MAX)
    }

    /// Waits as `verdict` says until every other member's queue has room for what this
    /// client's next read could become, and reserves it; see [`Room::reserve`].
    async fn wait_for_room(&self, mut verdict: Verdict, framer: &LineFramer) -> Reservation {
        loop {
            match verdict {
                Verdict::Read(reservation) => return reservation,
                Verdict::WaitFor(receiver) => receiver.wait().await,
                Verdict::WaitForReads => self.room.wait_for_reads().await,
            }
            verdict = self
                .room
                .reserve(self.id, self.name_bound(), framer.buffered());
        }
    }

    /// Reads what `room` was reserved for, without waiting, acts on its lines and gives the
    /// room back; false at end of stream. Not `async`: the buffer lives on the stack for this
    /// call only, not in every idle task.
    fn read_chunk(
        &mut self,
        reader: &OwnedReadHalf,
        framer: &mut LineFramer,
        mut room: Reservation,
    ) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = match reader.try_read(&mut chunk[..room.read]) {
            Ok(n) => n,
            Err(error) => {
                self.room.settle(self.id, String::new(), room);
                return Err(error);
            }
        };
        // Fewer bytes than reserved for can become less: give the rest back at once, so that
        // other readers need not wait for this one to finish.
        self.room.shrink(&mut room, n);
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
        let lines = std::mem::take(&mut self.relay);
        self.room.settle(self.id, lines, room);
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
            Command::List => self.reply_lines(&self.room.list()),
            Command::Pm { to, text } => {
                self.flush_relay();
                let line = message::private(&self.name, text);
                if !self.room.send_private(self.id, to, &line) {
                    self.reply(&message::no_such_user(to));
                }
            }
            Command::Quit(reason) => {
                self.flush_relay();
                self.quit = Some(reason.map(str::to_owned));
            }
            Command::Help => self.reply_lines(message::HELP),
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
        self.reply_lines(&[line]);
    }

    /// Notices for this client only, as one chunk: an answer of several lines (`/help`,
    /// `/list`) is queued whole or, for a client too far behind, dropped whole.
    fn reply_lines(&self, lines: &[impl AsRef<str>]) {
        let mut answer = Vec::new();
        for line in lines {
            answer.extend_from_slice(&message::wire(line.as_ref()));
        }
        if self.outbox.push_notice(Chunk::from(answer)).is_err() {
            tracing::debug!("{}: answer dropped, too far behind", self.name);
        }
    }
}

/// Bytes on their way to clients. One chunk, formatted once, is shared by every receiver.
type Chunk = Arc<[u8]>;

/// How a writer task ended.
enum WriterEnd {
    /// Its outbox was closed and everything queued was written; the socket closes with it.
    Flushed,
    /// The socket failed: the client is gone.
    Failed,
    /// The writer was stopped (the client was evicted, or is idle) and hands back its socket,
    /// for the last notice, with the rest of the line it was in the middle of writing, if any.
    Stopped {
        socket: OwnedWriteHalf,
        unsent: Vec<u8>,
    },
}

/// Drains one client's outbox into its socket until the client is gone or the writer is
/// stopped.
async fn write_loop(outbox: Arc<Outbox>, mut socket: OwnedWriteHalf) -> WriterEnd {
    loop {
        let mut batch = match outbox.take_batch() {
            Batch::Chunks(chunks) => chunks,
            Batch::Empty => {
                outbox.ready.notified().await;
                continue;
            }
            Batch::Closed => return WriterEnd::Flushed,
            Batch::Stopped => {
                let unsent = Vec::new();
                return WriterEnd::Stopped { socket, unsent };
            }
        };
        // Bytes of the batch's first chunk already written.
        let mut offset = 0;
        while !batch.is_empty() {
            tokio::select! {
                // Suspends while this client's kernel buffer is full: only this writer waits.
                written = write_chunks(&mut socket, &batch, offset) => match written {
                    Ok(n) if n > 0 => {
                        outbox.sent(n);
                        offset = skip_written(&mut batch, offset + n);
                    }
                    _ => return WriterEnd::Failed,
                },
                () = outbox.stopped.notified() => {
                    let unsent = rest_of_line(&batch, offset);
                    return WriterEnd::Stopped { socket, unsent };
                }
            }
        }
    }
}

/// One vectored write of the queued chunks, starting `offset` bytes into the first: the
/// chunks are shared with every other receiver's queue and written from where they are, never
/// copied per receiver. The slices live on the stack of one `poll`, not in the writer's future.
fn write_chunks<'a>(
    socket: &'a mut OwnedWriteHalf,
    batch: &'a VecDeque<Chunk>,
    offset: usize,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let mut count = 0;
        for (slice, chunk) in slices.iter_mut().zip(batch) {
            let unwritten = if count == 0 { &chunk[offset..] } else { chunk };
            *slice = IoSlice::new(unwritten);
            count += 1;
        }
        Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..count])
    })
}

/// Drops the chunks that `written` bytes (counted from the start of the first) covered;
/// returns how far into the new first chunk they reached.
fn skip_written(batch: &mut VecDeque<Chunk>, mut written: usize) -> usize {
    while let Some(first) = batch.front() {
        if written < first.len() {
            return written;
        }
        written -= first.len();
        batch.pop_front();
    }
    0
}

/// What is left of the line being written when a writer stops `offset` bytes into the first
/// chunk: a chunk holds whole lines, so the line ends within it.
fn rest_of_line(batch: &VecDeque<Chunk>, offset: usize) -> Vec<u8> {
    let Some(first) = batch.front() else {
        return Vec::new();
    };
    if offset == 0 || first[offset - 1] == b'\n' {
        return Vec::new();
    }
    let rest = &first[offset..];
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest.len(), |i| i + 1);
    rest[..end].to_vec()
}

/// One client's bounded outbound queue, shared by every task that sends to it.
///
/// What counts against `--max-queue` is everything queued or being written. Chat lines are
/// pushed only into room a reader reserved before reading ([`Room::reserve`]); notices are
/// pushed without waiting, up to [`NOTICE_ROOM`] past the limit. A queue more than half full
/// holds the room's readers back until it has drained to half; [`Outbox::holding_back`] notes
/// since when, and a queue that holds them back for `--stall-ms` is evicted.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// `--max-queue`.
    limit: usize,
    /// Shared with the room's other outboxes.
    backlog: Arc<Backlog>,
    /// Whether this queue is over half full now, readable without the lock: a reader that
    /// looks for full queues among a thousand members locks only those.
    over_half: AtomicBool,
    /// Wakes the writer: something was queued, or the outbox was closed.
    ready: Notify,
    /// Wakes a writer stuck writing: it must stop.
    stopped: Notify,
}

/// What every outbox of a room shares with the room's readers.
#[derive(Debug, Default)]
struct Backlog {
    /// How many open queues are more than half full: while none is, a reader needs to look at
    /// no queue to know that it may read.
    over_half: AtomicUsize,
    /// Wakes the readers waiting for room: a queue they waited for drained to half, or closed.
    drained: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    chunks: VecDeque<Chunk>,
    /// Bytes in `chunks` plus those of the writer's batch not yet written.
    queued: usize,
    closing: Closing,
    /// Since when this queue, more than half full, has held a reader back; `None` again once
    /// it drains to half.
    holding_back_since: Option<Instant>,
    /// A reader waits for this queue to drain to half: wake it then.
    reader_waiting: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Closing {
    #[default]
    Open,
    /// Send what is queued, then close (the client left, or the server is shutting down).
    AfterFlush,
    /// Evicted as too slow, or idle: drop what is queued, stop the writer now and hand its
    /// socket back for the last notice.
    Stopped,
}

/// What the writer finds when it looks at its outbox.
enum Batch {
    Chunks(VecDeque<Chunk>),
    Empty,
    Closed,
    Stopped,
}

/// A notice was dropped: the client has [`NOTICE_ROOM`] more than `--max-queue` waiting.
#[derive(Debug)]
struct TooFarBehind;

impl Outbox {
    fn new(limit: usize, backlog: Arc<Backlog>) -> Self {
        Self {
            state: Mutex::default(),
            limit,
            backlog,
            over_half: AtomicBool::new(false),
            ready: Notify::new(),
            stopped: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic elsewhere cannot leave a queue half-updated: every update is one statement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Half of `--max-queue`: a queue fuller than this holds readers back.
    fn half(&self) -> usize {
        self.limit / 2
    }

    /// Whether this queue holds readers back now: open and more than half full.
    fn holds_readers_back(&self, state: &OutboxState) -> bool {
        state.closing == Closing::Open && state.queued > self.half()
    }

    /// Applies `change` to the state, keeping [`Backlog::over_half`] and the waiting
    /// readers up to date with whether this queue holds readers back.
    fn update<T>(&self, change: impl FnOnce(&mut OutboxState) -> T) -> T {
        let mut state = self.lock();
        let was_over = self.holds_readers_back(&state);
        let result = change(&mut state);
        let is_over = self.holds_readers_back(&state);
        if is_over && !was_over {
            self.over_half.store(true, Ordering::SeqCst);
            self.backlog.over_half.fetch_add(1, Ordering::SeqCst);
        } else if was_over && !is_over {
            self.over_half.store(false, Ordering::SeqCst);
            self.backlog.over_half.fetch_sub(1, Ordering::SeqCst);
            state.holding_back_since = None;
            if std::mem::take(&mut state.reader_waiting) {
                self.backlog.drained.notify_waiters();
            }
        }
        result
    }

    /// Queues `chunk` without looking at the limit, unless the client is leaving: for chat
    /// lines a reader reserved room for, and the one goodbye at shutdown.
    fn push(&self, chunk: Chunk) {
        let _ = self.queue(chunk, usize::MAX);
    }

    /// Queues a notice, which never waits, unless the client is leaving; drops it if the client
    /// is [`NOTICE_ROOM`] past `--max-queue` behind. A queue short of that takes a whole notice,
    /// however long (a welcome with the history, a `/list`), so a notice is never cut.
    fn push_notice(&self, chunk: Chunk) -> Result<(), TooFarBehind> {
        self.queue(chunk, self.limit.saturating_add(NOTICE_ROOM))
    }

    /// Queues `chunk` unless the client is leaving, or refuses it if `full` bytes or more are
    /// queued already.
    fn queue(&self, chunk: Chunk, full: usize) -> Result<(), TooFarBehind> {
        let queued = self.update(|state| {
            if state.closing != Closing::Open {
                return Ok(false);
            }
            if state.queued >= full {
                return Err(TooFarBehind);
            }
            state.queued += chunk.len();
            state.chunks.push_back(chunk);
            Ok(true)
        })?;
        if queued {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Everything queued, for the writer to write from where it is. The queue starts afresh,
    /// so an idle client holds no buffer.
    fn take_batch(&self) -> Batch {
        let mut state = self.lock();
        if state.closing == Closing::Stopped {
            return Batch::Stopped;
        }
        if state.chunks.is_empty() {
            return match state.closing {
                Closing::Open => Batch::Empty,
                _ => Batch::Closed,
            };
        }
        Batch::Chunks(std::mem::take(&mut state.chunks))
    }

    /// The kernel took `n` more bytes of the writer's batch.
    fn sent(&self, n: usize) {
        self.update(|state| state.queued -= n);
    }

    /// No more pushes: the writer sends what is queued, then closes the socket.
    fn close(&self) {
        self.update(|state| {
            if state.closing == Closing::Open {
                state.closing = Closing::AfterFlush;
            }
        });
        self.ready.notify_one();
    }

    /// Drops what is queued and has the writer stop after the line it is writing and hand back
    /// its socket, for a last notice (too slow, idle). False if the client was already leaving.
    fn stop(&self) -> bool {
        let stopping = self.update(|state| {
            if state.closing != Closing::Open {
                return false;
            }
            let dropped: usize = state.chunks.iter().map(|chunk| chunk.len()).sum();
            state.queued -= dropped;
            state.chunks = VecDeque::new();
            state.closing = Closing::Stopped;
            true
        });
        if stopping {
            self.stopped.notify_one();
            self.ready.notify_one();
        }
        stopping
    }

    /// If this queue holds readers back (open and more than half full), since when: from now
    /// if it had not yet held anyone back since it last drained to half.
    fn holding_back(&self, now: Instant) -> Option<Instant> {
        if !self.over_half.load(Ordering::SeqCst) {
            return None;
        }
        let mut state = self.lock();
        if !self.holds_readers_back(&state) {
            return None;
        }
        Some(*state.holding_back_since.get_or_insert(now))
    }
}

/// A queue a reader must wait for: more than half full, and since when that must end.
struct FullQueue {
    outbox: Arc<Outbox>,
    /// When the first of the queues that held the reader back will have done so for
    /// `--stall-ms`: the reader looks again then, and evicts it.
    deadline: Instant,
}

impl FullQueue {
    /// Returns once this queue, or another one a reader waited for, has drained to half or
    /// closed, or the deadline has passed; the caller looks again.
    async fn wait(self) {
        let has_room = self.outbox.backlog.drained.notified();
        tokio::pin!(has_room);
        // Listening before saying so: a writer that drains the queue between the two wakes us.
        has_room.as_mut().enable();
        let still_full = {
            let mut state = self.outbox.lock();
            state.reader_waiting = self.outbox.holds_readers_back(&state);
            state.reader_waiting
        };
        if still_full {
            let _ = tokio::time::timeout_at(self.deadline.into(), has_room).await;
        }
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
    /// `--stall-ms`: how long one queue may hold the readers back before it is evicted.
    stall: Duration,
    /// Shared with every member's outbox: how many queues are more than half full.
    backlog: Arc<Backlog>,
    /// Wakes readers waiting for reads in progress to give back what they reserved.
    settled: Notify,
}

#[derive(Debug)]
struct RoomState {
    members: BTreeMap<ClientId, Member>,
    next_id: ClientId,
    /// Members per address, for `--max-per-ip`: counted from accept to leave.
    per_ip: PerIp,
    /// The last chat lines, as relayed, within `--history` lines and half a queue of bytes.
    history: History,
    /// Bytes that reads in progress may still push into every queue; see [`Room::reserve`].
    reserved: usize,
    /// A reader waits for a read in progress to settle: wake it then.
    reader_waiting: bool,
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
            reserved: 0,
            reader_waiting: false,
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
            stall: Duration::from_millis(cli.stall.stall_ms),
            backlog: Arc::default(),
            settled: Notify::new(),
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
        relay_under_lock(&mut self.lock(), from, lines);
    }

    /// A new client's outbox, sharing this room's [`Backlog`].
    fn new_outbox(&self) -> Outbox {
        Outbox::new(self.max_queue, Arc::clone(&self.backlog))
    }

    /// Whether reader `reader`, named with at most `name_len` bytes, whose framer holds `held`
    /// bytes of an unfinished line, may read now, and how much.
    ///
    /// It may read when no other member's queue is more than half full. It then reads at most
    /// what can become no more than the free half of a queue, less what reads in progress
    /// have reserved ([`message::readable_within`], [`message::relayed_bound`]), and reserves
    /// that bound until [`Room::settle`]. Why that keeps every queue bounded: the check and the
    /// reservation happen under the room lock, so no two readers count the same free space;
    /// each queue was at most half full, its writer only takes bytes away, and all the reads in
    /// progress together can push at most what they reserved, which fits in the other half. So
    /// chat lines never take a queue past `--max-queue`, except one read into a queue at most
    /// half full when not even a byte more fits (a tiny `--max-queue`, or a long line already
    /// held): that read may take one chunk, or such a line could never pass.
    ///
    /// Every queue over half full holds the reader back: since when is noted in its outbox,
    /// and one that has held it back for `--stall-ms` is evicted here.
    fn reserve(&self, reader: ClientId, name_len: usize, held: usize) -> Verdict {
        let mut state = self.lock();
        if self.backlog.over_half.load(Ordering::SeqCst) > 0 {
            if let Some(full) = self.find_full_queue(&state, reader) {
                return Verdict::WaitFor(full);
            }
        }
        let free = (self.max_queue - self.max_queue / 2).saturating_sub(state.reserved);
        let mut read = message::readable_within(name_len, held, free, READ_CHUNK);
        if read == 0 {
            if state.reserved > 0 {
                return Verdict::WaitForReads;
            }
            read = READ_CHUNK;
        }
        let bytes = message::relayed_bound(name_len, held + read);
        state.reserved += bytes;
        Verdict::Read(Reservation {
            read,
            bytes,
            name_len,
            held,
        })
    }

    /// A queue other than `reader`'s that is more than half full, after evicting every one
    /// that has held the readers back for `--stall-ms`; `None` if there is none left.
    fn find_full_queue(&self, state: &RoomState, reader: ClientId) -> Option<FullQueue> {
        let now = Instant::now();
        let mut found: Option<FullQueue> = None;
        for (&id, member) in &state.members {
            if id == reader {
                continue;
            }
            let Some(since) = member.outbox.holding_back(now) else {
                continue;
            };
            let deadline = since + self.stall;
            if deadline <= now {
                if member.outbox.stop() {
                    tracing::warn!(
                        "{} evicted: its full queue held the room back for {} ms (too slow)",
                        member.name,
                        self.stall.as_millis()
                    );
                }
                continue;
            }
            match &mut found {
                Some(full) => full.deadline = full.deadline.min(deadline),
                None => {
                    let outbox = Arc::clone(&member.outbox);
                    found = Some(FullQueue { outbox, deadline });
                }
            }
        }
        found
    }

    /// A read of `reservation` took `read` bytes: gives back what more bytes could have
    /// become.
    fn shrink(&self, reservation: &mut Reservation, read: usize) {
        let needed = message::relayed_bound(reservation.name_len, reservation.held + read);
        if needed < reservation.bytes {
            self.give_back(&mut self.lock(), reservation.bytes - needed);
            reservation.bytes = needed;
        }
    }

    /// Relays the last `lines` of a read (none, if empty) and gives back what the read
    /// reserved, in one pass under the lock.
    fn settle(&self, from: ClientId, lines: String, reservation: Reservation) {
        let mut state = self.lock();
        if !lines.is_empty() {
            relay_under_lock(&mut state, from, lines);
        }
        self.give_back(&mut state, reservation.bytes);
    }

    /// Gives back `bytes` of the reads' reservations and wakes the readers waiting for that.
    fn give_back(&self, state: &mut RoomState, bytes: usize) {
        state.reserved -= bytes;
        if std::mem::take(&mut state.reader_waiting) {
            self.settled.notify_waiters();
        }
    }

    /// Returns once the reads in progress now have settled (at once if none is).
    async fn wait_for_reads(&self) {
        let settled = self.settled.notified();
        tokio::pin!(settled);
        // Listening before saying so: a read that settles between the two wakes us.
        settled.as_mut().enable();
        let in_progress = {
            let mut state = self.lock();
            state.reader_waiting = state.reserved > 0;
            state.reader_waiting
        };
        if in_progress {
            settled.await;
        }
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

    /// Sends `line` from member `from` to the member called `to` (any case); false if there is
    /// none. To another member it is pushed like a chat line, into room its reader reserved; to
    /// the sender itself, like a notice.
    fn send_private(&self, from: ClientId, to: &str, line: &str) -> bool {
        let state = self.lock();
        let target = state
            .members
            .iter()
            .find(|(_, member)| member.name.eq_ignore_ascii_case(to));
        let Some((&id, member)) = target else {
            return false;
        };
        let chunk = Chunk::from(message::wire(line));
        if id != from {
            member.outbox.push(chunk);
        } else if member.outbox.push_notice(chunk).is_err() {
            tracing::debug!(
                "{}: private line to itself dropped, too far behind",
                member.name
            );
        }
        true
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

/// Pushes the notice `chunk` (a join, a leave, a rename) to every member except `from`. It
/// never waits; a member too far behind misses it (see [`Outbox::push_notice`]).
fn send_to_all(members: &BTreeMap<ClientId, Member>, from: Option<ClientId>, chunk: &Chunk) {
    for (&id, member) in members {
        if Some(id) != from && member.outbox.push_notice(Arc::clone(chunk)).is_err() {
            tracing::debug!("{}: notice dropped, too far behind", member.name);
        }
    }
}

/// What a reader may do next; see [`Room::reserve`].
enum Verdict {
    /// Read, within the reservation.
    Read(Reservation),
    /// Wait for this queue to drain.
    WaitFor(FullQueue),
    /// Wait for the reads in progress to push what they read and give back their reservation.
    WaitForReads,
}

/// Room held in every queue for one read: at most `read` bytes, which can become at most
/// `bytes` for each receiver. Given back with [`Room::settle`].
#[must_use]
struct Reservation {
    read: usize,
    bytes: usize,
    /// What `bytes` was worked out from: the longest name the lines may carry, and the bytes
    /// of an unfinished line the framer held before the read.
    name_len: usize,
    held: usize,
}

/// Hands chat lines (one or many, each ending in CRLF) to every member but `from`, and keeps
/// them for the history. Pushed past no limit: the reader reserved room for them in every queue
/// before it read them.
fn relay_under_lock(state: &mut RoomState, from: ClientId, lines: String) {
    state.history.record_all(&lines, CRLF);
    let chunk = Chunk::from(lines.into_bytes());
    for (&id, member) in &state.members {
        if id != from {
            member.outbox.push(Arc::clone(&chunk));
        }
    }
}

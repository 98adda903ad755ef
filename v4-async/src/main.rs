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
//! memory leak. Each outbox holds at most `--max-queue` bytes (default 256 KiB). A push that
//! would go past it means the writer has been stuck in `write_all` (the kernel would not take
//! the bytes) while a quarter megabyte piled up: the client is evicted, its writer sends
//! `* error: too slow, disconnected` if the socket still takes it, and the room carries on.
//! A reader yields after every chunk it relays, so writers run between reads and a client that
//! reads as fast as its socket allows never sees its queue fill.
//!
//! **What it costs.** Two small tasks and one queue per client: a few hundred bytes while idle
//! (no buffers are held between messages), versus a whole thread stack in v1. A relayed chunk
//! is formatted once and shared by every receiver through an `Arc`, not copied per receiver.
//! The room is one `Mutex`, held only to push into queues, never across an `.await`.
//!
//! **What changed since v3.** v3 did the same bounded-buffer bookkeeping by hand in one `poll`
//! loop: readiness flags, `POLLOUT` interest, partial writes. Tokio's reactor does that part
//! now, so the code that is left is the chat: welcome, history, nicknames, commands, rate
//! limits, idle timeouts and a graceful shutdown.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use chat_protocol::cli::{addr_arg, AnnounceLimit, ConnectionLimits, QueueLimit, V4_ADDR_DEFAULT};
use chat_protocol::framing::{Frame, LineFramer};
use chat_protocol::message::{self, CRLF};
use chat_protocol::startup;
use clap::Parser;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How much one read takes from a client before its lines are relayed. Bounded so that one
/// sender hands on at most this much per turn, then lets the writers run.
const READ_CHUNK: usize = 16 * 1024;

/// How long the accept loop waits after an `accept` error (out of descriptors, say) before
/// trying again, instead of spinning on an error that will repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a shutdown waits for writers to flush `* server shutting down` before exiting;
/// the spec allows two seconds in all.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(1500);

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

/// Binds, then accepts until Ctrl-C or SIGTERM, then says goodbye to everyone.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let listener = startup::bind_listener(cli.addr)?;
    startup::log_listening("v4-async", &listener)?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let room = Arc::new(Room::new(&cli));

    tokio::select! {
        () = accept_loop(&listener, &room) => {}
        signal = shutdown_signal() => {
            tracing::info!("{signal}: shutting down");
        }
    }
    // Dropping the listener first: nobody new gets in while we say goodbye.
    drop(listener);
    room.shut_down().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, naming which one came.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!("cannot listen for SIGTERM: {error}");
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate.recv() => "SIGTERM",
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
            Some(id) => {
                tracing::info!("{addr} connected");
                tokio::spawn(serve_client(Arc::clone(room), id, addr, socket, outbox));
            }
            None => turn_away(socket, room.max_clients),
        }
    }
}

/// Tells a connection beyond `--max-clients` why it is closed. A fresh socket's send buffer is
/// empty, so a non-blocking write takes this one line; if it somehow does not, the close is
/// the answer.
fn turn_away(socket: TcpStream, max_clients: usize) {
    let _ = socket.try_write(message::wire(&message::server_full(max_clients)).as_slice());
    tracing::warn!("turned a client away: {max_clients} clients already");
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
    let mut session = Session {
        room: Arc::clone(&room),
        id,
        name: addr.to_string(),
        outbox,
        framer: LineFramer::new(room.max_line),
    };
    let why = session.read_loop(&reader, &mut writer_task).await;
    let name = session.name;
    room.leave(id, &name);
    tracing::info!("{name} disconnected ({why})");
    // The writer sends whatever is still queued (the reply to a last line, say), then closes.
    session.outbox.close();
}

/// What one reader task knows about its client.
struct Session {
    room: Arc<Room>,
    id: ClientId,
    /// How others see this client: its address.
    name: String,
    outbox: Arc<Outbox>,
    framer: LineFramer,
}

impl Session {
    /// Reads and relays until the client leaves; says why it ended.
    async fn read_loop(
        &mut self,
        reader: &OwnedReadHalf,
        writer_task: &mut JoinHandle<()>,
    ) -> &'static str {
        loop {
            tokio::select! {
                ready = reader.readable() => {
                    if ready.is_err() {
                        return "read error";
                    }
                }
                // The writer ends only when the client is gone or evicted: stop reading too.
                _ = &mut *writer_task => return "connection lost",
            }
            match self.read_chunk(reader) {
                Ok(Some(())) => {}
                Ok(None) => return "end of stream",
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return "connection reset",
            }
            // One chunk per turn: let the writers (and other readers) run before reading more.
            tokio::task::yield_now().await;
        }
    }

    /// Reads one chunk without waiting and relays its lines. `Ok(None)` at end of stream.
    /// Not `async`: the buffer lives on the stack for this call only, not in every idle task.
    fn read_chunk(&mut self, reader: &OwnedReadHalf) -> io::Result<Option<()>> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = reader.try_read(&mut chunk)?;
        let mut relay = String::new();
        let mut replies = String::new();
        let (name, max_line) = (&self.name, self.framer.max_line());
        let on_frame = |frame: Frame<'_>| match frame {
            Frame::Line(raw) => {
                let start = relay.len();
                if message::push_chat_line(&mut relay, name, raw) {
                    tracing::info!("{}", relay[start..].trim_end());
                }
            }
            Frame::TooLong => {
                replies.push_str(&message::line_too_long(max_line));
                replies.push_str(CRLF);
            }
        };
        if n == 0 {
            self.framer.finish(on_frame);
        } else {
            self.framer.push(&chunk[..n], on_frame);
        }
        if !relay.is_empty() {
            self.room
                .broadcast(Some(self.id), Chunk::from(relay.into_bytes()));
        }
        if !replies.is_empty() {
            self.outbox.push(Chunk::from(replies.into_bytes()));
        }
        Ok((n > 0).then_some(()))
    }
}

/// Bytes on their way to clients. One chunk, formatted once, is shared by every receiver.
type Chunk = Arc<[u8]>;

/// Drains one client's outbox into its socket until the client is gone or evicted.
async fn write_loop(outbox: Arc<Outbox>, mut socket: OwnedWriteHalf) {
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
    let _ = socket.try_write(message::wire(message::TOO_SLOW).as_slice());
}

/// One client's bounded outbound queue, shared by every task that sends to it.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// `--max-queue`: bytes queued or being written beyond which the client is evicted.
    limit: usize,
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
    fn push(&self, chunk: Chunk) -> Pushed {
        let mut state = self.lock();
        if state.closing != Closing::Open {
            return Pushed::Refused;
        }
        if state.bytes + chunk.len() > self.limit {
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

/// Identifies a member of the room for as long as it is connected.
type ClientId = u64;

/// Everyone connected, and the limits that apply to them.
#[derive(Debug)]
struct Room {
    members: Mutex<Members>,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    announce_limit: usize,
    /// Signalled when the last member leaves, for the shutdown to know it is done.
    emptied: Notify,
}

#[derive(Debug, Default)]
struct Members {
    by_id: HashMap<ClientId, Member>,
    next_id: ClientId,
}

#[derive(Debug)]
struct Member {
    /// How the others see this client.
    name: String,
    outbox: Arc<Outbox>,
}

impl Room {
    fn new(cli: &Cli) -> Self {
        Self {
            members: Mutex::default(),
            max_clients: cli.connections.max_clients,
            max_line: cli.connections.max_line,
            max_queue: cli.queue.max_queue,
            announce_limit: cli.announce.announce_limit,
            emptied: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Members> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a client, welcomes it and tells the others; `None` if the room is full.
    fn join(&self, addr: SocketAddr, outbox: &Arc<Outbox>) -> Option<ClientId> {
        let mut members = self.lock();
        if members.by_id.len() >= self.max_clients {
            return None;
        }
        let id = members.next_id;
        members.next_id += 1;
        let online = members.by_id.len() + 1;
        let name = addr.to_string();
        outbox.push(Chunk::from(message::wire(&message::welcome(&name, online))));
        if online <= self.announce_limit {
            let notice = Chunk::from(message::wire(&message::joined(&name, online)));
            Self::send_to_all(&members, None, &notice);
        }
        members.by_id.insert(
            id,
            Member {
                name,
                outbox: Arc::clone(outbox),
            },
        );
        Some(id)
    }

    /// Removes a client and tells the others.
    fn leave(&self, id: ClientId, name: &str) {
        let mut members = self.lock();
        if members.by_id.remove(&id).is_none() {
            return;
        }
        let online = members.by_id.len();
        if online <= self.announce_limit {
            let notice = Chunk::from(message::wire(&message::left(name, online, None)));
            Self::send_to_all(&members, None, &notice);
        }
        if online == 0 {
            self.emptied.notify_waiters();
        }
    }

    /// Hands `chunk` to every member except `from`, in one pass under the lock, so every
    /// receiver sees lines in the same order.
    fn broadcast(&self, from: Option<ClientId>, chunk: Chunk) {
        Self::send_to_all(&self.lock(), from, &chunk);
    }

    fn send_to_all(members: &Members, from: Option<ClientId>, chunk: &Chunk) {
        for (&id, member) in &members.by_id {
            if Some(id) != from && member.outbox.push(Arc::clone(chunk)) == Pushed::Evicted {
                tracing::warn!("{} evicted: its queue is full (too slow)", member.name);
            }
        }
    }

    /// Tells everyone the server is stopping, lets the writers flush, and returns once every
    /// client is gone or [`SHUTDOWN_FLUSH`] has passed.
    async fn shut_down(&self) {
        let emptied = self.emptied.notified();
        tokio::pin!(emptied);
        emptied.as_mut().enable();
        {
            let members = self.lock();
            if members.by_id.is_empty() {
                return;
            }
            let goodbye = Chunk::from(message::wire(message::SHUTTING_DOWN));
            for member in members.by_id.values() {
                member.outbox.push(Arc::clone(&goodbye));
                member.outbox.close();
            }
        }
        if tokio::time::timeout(SHUTDOWN_FLUSH, emptied).await.is_err() {
            tracing::warn!("some clients did not take the goodbye in time");
        }
    }
}

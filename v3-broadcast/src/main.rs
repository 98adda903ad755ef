//! # v3-broadcast: v2's `poll(2)` loop plus a chat room
//!
//! ```text
//! cargo run -p v3-broadcast                  # listens on 127.0.0.1:8083
//! telnet 127.0.0.1 8083                      # in two or more terminals,
//!                                            # or: cargo run -p client -- 8083
//! ```
//!
//! What one client types reaches every other client as `127.0.0.1:52344 says: hi`; the
//! others see `* 127.0.0.1:52344 joined (2 online)` and `* ... left (1 online)`.
//!
//! ## The model
//!
//! The same single thread and non-blocking sockets as v2, but a line now goes to everyone
//! else instead of back to its sender. A turn has two halves: first the loop reads one chunk
//! from each ready client and queues its lines in every other client's outbox; then it writes
//! to each client, once, everything the turn queued for it. An outbox is bounded by
//! `--max-queue`, and a client that does not read is disconnected before it can slow the room
//! or grow the server's memory.
//!
//! ```text
//!     +-------------------------------------------------------------------+
//!     v                                                                   |
//!   poll(listener, every client)      sleeps until some socket is ready   |
//!     |                                                                   |
//!     +-> client readable: read one chunk -> framer -> lines -> log       |
//!     |     -> format the chunk's lines once: "ADDR says: ...\r\n..."     |
//!     |     -> queue that one buffer in every other client's outbox       |
//!     +-> client writable: list it for the writes below                   |
//!     +-> listener ready:  accept (a batch at most), queue join notices   |
//!     |                                                                   |
//!     +-> each client given bytes this turn: one writev of its outbox;    |
//!           if the socket refused some and the rest passes --max-queue,   |
//!           disconnect it ----------------------------------------------->+
//! ```
//!
//! ## What changed since v2
//!
//! - **Relay, not echo.** A read is framed and sanitised once, and its lines are formatted
//!   once into one buffer that every other client's outbox shares. The sender gets only
//!   notices (`* error: line too long ...`).
//! - **A room.** Joins and leaves are announced to the others with the number online, as long
//!   as that number is at most `--announce-limit`; above it, telling everyone about everyone
//!   is quadratic traffic and the room stays quiet about it. A client that half-closes
//!   leaves the room at once (its last line is relayed first), then only waits for its
//!   outbox to drain.
//! - **Writes wait for the end of the turn.** v2 writes an echo as soon as it has read the
//!   line. Here that would mean one `write` per receiver per sender: with ten people talking,
//!   ten writes to every client in a turn. Deferring the writes lets one `writev` per client
//!   carry what all of them said (see "What it costs").
//! - **The slow consumer matters.** In v2 a client that did not read hurt only itself. Here
//!   every sender fills every receiver's outbox, so one reader that stops would hold the
//!   room's lines forever. The outbox bound is what keeps the room moving: a receiver is too
//!   slow when its socket, just offered everything, refused some, and what is left passes
//!   `--max-queue`: it gets `* error: too slow, disconnected` if that still fits, and goes.
//!   A client that reads as fast as it can is never dropped, because the kernel takes the
//!   bytes as fast as it reads them, even when many senders burst at once: the loop reads one
//!   bounded chunk per sender per turn and hands it on before reading more.
//!
//! ## What it costs
//!
//! Nearly all of the server's time goes to the kernel's side of `write`: on loopback one call
//! costs microseconds whatever it carries, because the receiving end of TCP runs inside it.
//! So what counts is system calls per delivery. Each chunk is formatted once and shared
//! (`Rc`) by the outboxes, never copied per receiver, and each receiver gets one `writev` per
//! turn with the chunks of every sender of that turn. Measured with `chat-bench` on a 2-core
//! VM, 1000 clients of which 10 burst: writing each chunk to each receiver at once made about
//! three writes per receiver per turn, 5 M deliveries/s at 170 ns of server CPU each; one
//! `writev` per receiver per turn made 20 M/s at 33 ns. A quiet room cannot share the cost:
//! a turn then holds a single line, so with 100 clients each line is 99 writes of about 7 µs,
//! and the loop needs 0.7 ms to hand it out.
//!
//! Memory is about 200 bytes per idle client (a table slot, its name, an empty framer and an
//! empty outbox), plus at most `--max-queue` per client that is behind. As in v2, each turn
//! polls every descriptor, which takes milliseconds with 10 000 clients, and one thread does
//! all the work.
//!
//! ## What the Python original got wrong
//!
//! The Python v3 relayed with a blocking `send` to each client inside the loop. A client that
//! stops reading fills its socket buffer; the next `send` to it blocks, and with it the only
//! thread: one slow (or suspended, or malicious) client froze the whole server for everyone.
//! Here no write ever waits: what does not fit waits in an outbox, and the outbox has a limit.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_protocol::cli::{addr_arg, AnnounceLimit, ConnectionLimits, QueueLimit, V3_ADDR_DEFAULT};
use chat_protocol::message::{
    joined, left, line_too_long, push_chat_line, server_full, wire, CRLF, TOO_SLOW,
};
use chat_protocol::startup::{
    bind_listener, exit_with, init_logging, log_listening, raise_fd_limit, LISTEN_BACKLOG,
};
use chat_protocol::{Frame, LineFramer};
use clap::Parser;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::{debug, info, warn};

/// Most bytes read from one client in one turn. Bounded so that a client that floods cannot
/// keep the loop from the others, and so that what one read produces is handed on before the
/// next read: the server never takes in more than it can pass on. 16 KiB is a few hundred chat
/// lines, and about what the kernel hands over per wake-up anyway.
const READ_CHUNK: usize = 16 * 1024;

/// Most connections accepted in one turn: as many as the kernel's accept queue holds
/// ([`LISTEN_BACKLOG`]), so that one turn can empty a full queue. Every turn costs a `poll` over
/// all clients (milliseconds with thousands of them), so in a connect storm a smaller batch
/// means more turns; the queue overflows while the loop polls, and the kernel drops SYNs that
/// are retried only a second later. Measured with `chat-bench`, 10 000 clients connecting at
/// once: with batches of 256 they took 0.85 s to get in (median of 7 runs; 1.5 s in one where
/// the queue overflowed); with this batch, 0.6 s. The bound keeps a storm from starving the
/// clients already here: an accept costs microseconds, so a full batch delays them by a few
/// milliseconds.
const ACCEPT_BATCH: usize = LISTEN_BACKLOG as usize;

/// Most chunks handed to the kernel in one `writev`. A client that keeps up has a few (one per
/// sender this turn); one that is far behind may have hundreds, and gets them 64 at a time. Far
/// below the kernel's limit (`IOV_MAX`, 1024) and small enough to build on the stack.
const WRITE_SLICES: usize = 64;

/// How long the listener rests after an accept error such as `EMFILE` (out of descriptors).
/// The connection that failed stays in the backlog, so polling the listener again at once would
/// report it ready and spin; meanwhile the clients already here are served as usual.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// sock-chat v3: one thread, a poll(2) loop, a chat room.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(long, value_name = "ADDR", default_value = V3_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    #[command(flatten)]
    limits: ConnectionLimits,

    #[command(flatten)]
    queue: QueueLimit,

    #[command(flatten)]
    announce: AnnounceLimit,
}

fn main() {
    let cli = Cli::parse();
    let _log = init_logging();
    raise_fd_limit();
    if let Err(error) = run(&cli) {
        exit_with(&error)
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let listener = bind_listener(cli.addr)?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listening socket non-blocking")?;
    log_listening("v3-broadcast", &listener)?;
    Server::new(listener, cli).run()
}

/// Everything the one thread owns. Nothing is shared with another thread, so nothing is locked.
#[derive(Debug)]
struct Server {
    listener: TcpListener,
    /// Connected clients, indexed by token. A client's slot is reused after it leaves, so the
    /// table is as long as the most clients ever connected at once, and finding a client is an
    /// index, not a hash lookup.
    clients: Vec<Option<Client>>,
    /// Tokens of the empty slots in `clients`.
    free: Vec<usize>,
    /// Occupied slots: what `--max-clients` limits (a half-closed client still draining its
    /// outbox holds a descriptor, so it counts).
    connected: usize,
    /// Clients in the room: connected and not half-closed. The number in join/leave notices.
    online: usize,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    announce_limit: usize,
    /// Set after an accept error: the listener is not polled until then (see [`ACCEPT_BACKOFF`]).
    accept_paused_until: Option<Instant>,
    /// The one read buffer. Each read is relayed before the next, so one buffer serves every
    /// client.
    read_buf: Box<[u8]>,
    /// The chat lines of one read, formatted here, then copied once into the chunk that every
    /// receiver's outbox shares; reused.
    relay: String,
    /// The notices one read earns its sender (`line too long`); reused.
    to_sender: String,
    /// The clients that `poll` reported this turn, with their events; reused.
    ready: Vec<(usize, PollFlags)>,
    /// Clients to write to at the end of this turn: those given bytes this turn, and those
    /// whose socket became writable. Each is listed once (see [`Client::flush_due`]).
    to_flush: Vec<usize>,
}

/// One connection, and what the loop must remember about it between turns.
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    /// The socket address as Rust prints it (`127.0.0.1:52344`): its name in the room.
    name: String,
    /// The start of a line whose `\n` has not arrived yet.
    framer: LineFramer,
    /// Bytes for this client that its socket has not taken yet.
    outbox: Outbox,
    /// True from the accept until the client half-closes or is removed: it is read from and
    /// relayed to. Afterwards it only waits for its outbox to drain.
    in_room: bool,
    /// True while the client is in `Server::to_flush`: it is written to at the end of the turn.
    flush_due: bool,
}

/// Why a client's connection is closed.
#[derive(Debug)]
enum Close {
    /// It half-closed and everything queued for it was sent.
    Finished,
    /// Its socket refused bytes just offered, and what is left passes `--max-queue`: it does
    /// not read, or not nearly fast enough.
    TooSlow,
    /// The socket failed: a reset, a broken pipe.
    Broken(io::Error),
}

impl Server {
    fn new(listener: TcpListener, cli: &Cli) -> Server {
        Server {
            listener,
            clients: Vec::new(),
            free: Vec::new(),
            connected: 0,
            online: 0,
            max_clients: cli.limits.max_clients,
            max_line: cli.limits.max_line,
            max_queue: cli.queue.max_queue,
            announce_limit: cli.announce.announce_limit,
            accept_paused_until: None,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            relay: String::new(),
            to_sender: String::new(),
            ready: Vec::new(),
            to_flush: Vec::new(),
        }
    }

    /// The loop: wait, serve the ready clients, accept newcomers, write what the turn gave
    /// each client, forever.
    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            let listener_ready = match self.wait() {
                Ok(listener_ready) => listener_ready,
                // A signal arrived while we slept: nothing is ready, just wait again.
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno).context("poll failed"),
            };
            for i in 0..self.ready.len() {
                let (token, events) = self.ready[i];
                self.serve(token, events);
            }
            // Accepting after serving means a slot freed this turn is reused only once the
            // turn's `ready` list is done with it.
            if listener_ready {
                self.accept_batch();
            }
            self.flush_turn();
        }
    }

    /// Sleeps in `poll(2)` until a socket is ready, then fills `ready`. Returns whether the
    /// listener has connections waiting.
    fn wait(&mut self) -> Result<bool, Errno> {
        let timeout = match self.accept_paused_until {
            Some(until) if Instant::now() < until => {
                // Sleep no longer than the pause, rounding up so we do not wake a hair early.
                let millis = until.duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
            _ => {
                self.accept_paused_until = None;
                PollTimeout::NONE
            }
        };
        let accepting = self.accept_paused_until.is_none();

        // The array borrows every socket, so it lives only for this call; `ready` remembers
        // which token each entry stood for.
        let mut fds = Vec::with_capacity(self.connected + 1);
        if accepting {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        self.ready.clear();
        for (token, slot) in self.clients.iter().enumerate() {
            if let Some(client) = slot {
                fds.push(PollFd::new(client.stream.as_fd(), client.interest()));
                self.ready.push((token, PollFlags::empty()));
            }
        }

        poll(&mut fds, timeout)?;

        let mut reported = fds.iter().map(|fd| {
            // Flags nix does not know: try the I/O, which will tell what happened.
            fd.revents()
                .unwrap_or(PollFlags::POLLIN | PollFlags::POLLOUT)
        });
        let listener_ready = accepting && reported.next().is_some_and(|events| !events.is_empty());
        for ((_, events), revents) in self.ready.iter_mut().zip(reported) {
            *events = revents;
        }
        self.ready.retain(|(_, events)| !events.is_empty());
        Ok(listener_ready)
    }

    /// Does what one client's readiness allows: read one chunk and relay it. A writable
    /// client is only marked: it is written to with everything else at the end of the turn.
    fn serve(&mut self, token: usize, events: PollFlags) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        if events.contains(PollFlags::POLLOUT) {
            flush_at_end_of_turn(&mut self.to_flush, token, client);
        }
        if client.in_room {
            // A reset or hang-up shows up as POLLERR/POLLHUP; the read then reports it.
            if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_and_relay(token);
            }
        } else if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            // Half-closed earlier, and now the peer is gone entirely: nobody will read the rest.
            self.remove(token, Close::Finished);
        }
    }

    /// Reads one chunk from a client and relays its lines to everyone else in the room.
    fn read_and_relay(&mut self, token: usize) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        let (relay, to_sender, max_line) = (&mut self.relay, &mut self.to_sender, self.max_line);
        relay.clear();
        to_sender.clear();
        let on_frame = |frame: Frame<'_>| match frame {
            Frame::Line(raw) => {
                let start = relay.len();
                if push_chat_line(relay, &client.name, raw) {
                    info!("{}", &relay[start..relay.len() - CRLF.len()]);
                }
            }
            Frame::TooLong => {
                to_sender.push_str(&line_too_long(max_line));
                to_sender.push_str(CRLF);
            }
        };
        let at_eof = match read_some(&client.stream, &mut self.read_buf) {
            Ok(0) => {
                // End of file: the client half-closed. Its last line may lack a `\n`.
                client.framer.finish(on_frame);
                true
            }
            Ok(n) => {
                client.framer.push(&self.read_buf[..n], on_frame);
                false
            }
            // Readiness was stale (a spurious wake-up): try next turn.
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => return self.remove(token, Close::Broken(error)),
        };

        if !self.to_sender.is_empty() {
            client.outbox.push(&Rc::from(self.to_sender.as_bytes()));
            flush_at_end_of_turn(&mut self.to_flush, token, client);
        }
        if !self.relay.is_empty() {
            // One copy of the chunk, shared by every receiver's outbox.
            self.broadcast(Some(token), &Rc::from(self.relay.as_bytes()));
        }
        if at_eof {
            self.leave_room(token);
        }
    }

    /// Queues `chunk` for every client in the room except `except`. Nothing is written here:
    /// each receiver gets everything the turn gave it in one write, in [`Server::flush_turn`].
    fn broadcast(&mut self, except: Option<usize>, chunk: &Rc<[u8]>) {
        for (token, slot) in self.clients.iter_mut().enumerate() {
            let Some(client) = slot else { continue };
            if !client.in_room || except == Some(token) {
                continue;
            }
            client.outbox.push(chunk);
            flush_at_end_of_turn(&mut self.to_flush, token, client);
        }
    }

    /// Writes, once per client, what this turn queued for it (and what a full socket refused
    /// before, for a client now writable). Only here can a client turn out to be too slow: its
    /// socket was just asked and refused, and what is left passes `--max-queue`.
    fn flush_turn(&mut self) {
        let mut next = 0;
        while let Some(&token) = self.to_flush.get(next) {
            next += 1;
            // Empty if the client was removed since it was listed.
            let Some(client) = self.clients[token].as_mut() else {
                continue;
            };
            if !client.flush_due {
                // Listed again after it was removed and its slot reused: already flushed.
                continue;
            }
            client.flush_due = false;
            let close = match client.outbox.flush(&client.stream) {
                Err(close) => close,
                Ok(()) if client.outbox.len() > self.max_queue => Close::TooSlow,
                // Half-closed, and now everything it was owed is sent.
                Ok(()) if !client.in_room && client.outbox.is_empty() => Close::Finished,
                Ok(()) => continue,
            };
            // Its leave notice is queued for the others, and the loop reaches them.
            self.remove(token, close);
        }
        self.to_flush.clear();
    }

    /// A half-closed client leaves the room: the others hear of it, and it is closed as soon
    /// as its outbox is empty.
    fn leave_room(&mut self, token: usize) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        if !client.in_room {
            return;
        }
        client.in_room = false;
        let name = client.name.clone();
        if client.outbox.is_empty() {
            // Nothing is owed to it: close now.
            self.remove(token, Close::Finished);
        }
        self.announce_leave(&name);
    }

    /// Tells the room that `name` (already out of it) left, if the room is now small enough
    /// (the same rule as for joins: the number the notice carries is at most the limit).
    fn announce_leave(&mut self, name: &str) {
        self.online -= 1;
        if self.online <= self.announce_limit {
            self.broadcast(None, &wire(&left(name, self.online, None)).into());
        }
    }

    /// Closes a client's socket, frees its slot and, if it was still in the room, tells the
    /// others. Removing a client never harms another: its leave notice is only queued, and
    /// written with the rest of the turn's output.
    fn remove(&mut self, token: usize, close: Close) {
        let Some(client) = self.clients[token].take() else {
            return;
        };
        self.free.push(token);
        self.connected -= 1;
        match close {
            Close::Finished => {}
            Close::TooSlow => {
                warn!(
                    "{} is too slow: its socket is full and its outbox would pass {} bytes; \
                     disconnecting it",
                    client.name, self.max_queue
                );
                // Once, without waiting: it goes whether the notice fits or not.
                let _ = write_some(&client.stream, &[IoSlice::new(&wire(TOO_SLOW))]);
            }
            Close::Broken(error) => debug!("{}: {error}", client.name),
        }
        info!("{} disconnected", client.name);
        let Client {
            stream,
            name,
            in_room,
            ..
        } = client;
        // Closed before the others hear of it: a leave notice means the connection is gone.
        drop(stream);
        if in_room {
            self.announce_leave(&name);
        }
    }

    /// Accepts waiting connections until there are none left, or a batch is done.
    fn accept_batch(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.accept() {
                Ok((stream, addr)) => self.admit(stream, addr),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                // Interrupted, or the peer gave up before we got to it: take the next one.
                Err(error)
                    if matches!(
                        error.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(error) => {
                    // Typically EMFILE: out of descriptors. It passes when clients leave, so
                    // rest the listener instead of failing, and keep serving who is here.
                    warn!("cannot accept a connection: {error}; retrying in {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Gives a new connection a slot and a place in the room, or turns it away if the server
    /// is full.
    fn admit(&mut self, stream: TcpStream, addr: SocketAddr) {
        // Accepted sockets do not inherit O_NONBLOCK from the listener on Linux.
        if let Err(error) = stream.set_nonblocking(true) {
            warn!("{addr}: cannot make the socket non-blocking: {error}; closing it");
            return;
        }
        // Chat lines are small and wanted now: do not let Nagle's algorithm hold a line back
        // waiting for more. A failure costs only latency.
        let _ = stream.set_nodelay(true);
        if self.connected >= self.max_clients {
            info!("{addr} turned away: server full");
            return turn_away(stream, self.max_clients, &mut self.read_buf);
        }
        let client = Client {
            stream,
            name: addr.to_string(),
            framer: LineFramer::new(self.max_line),
            outbox: Outbox::default(),
            in_room: true,
            flush_due: false,
        };
        info!("{} connected", client.name);
        // Each join is news for everyone: a room filling up would cost O(n^2) notices.
        let online = self.online + 1;
        let notice = (online <= self.announce_limit).then(|| wire(&joined(&client.name, online)));
        let token = match self.free.pop() {
            Some(token) => {
                self.clients[token] = Some(client);
                token
            }
            None => {
                self.clients.push(Some(client));
                self.clients.len() - 1
            }
        };
        self.connected += 1;
        self.online = online;
        if let Some(notice) = notice {
            self.broadcast(Some(token), &notice.into());
        }
    }
}

impl Client {
    /// What to ask `poll` about this client. `POLLOUT` only while something waits to be
    /// written: an idle socket is always writable and would wake the loop on every turn.
    fn interest(&self) -> PollFlags {
        let mut events = PollFlags::empty();
        if self.in_room {
            events |= PollFlags::POLLIN;
        }
        if !self.outbox.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        events
    }
}

/// Lists `client` (at `token`) for a write at the end of the turn, once however often it is
/// given bytes during the turn.
fn flush_at_end_of_turn(to_flush: &mut Vec<usize>, token: usize, client: &mut Client) {
    if !client.flush_due {
        client.flush_due = true;
        to_flush.push(token);
    }
}

/// Tells a connection beyond `--max-clients` why it is refused, without waiting for it.
fn turn_away(stream: TcpStream, max_clients: usize, scratch: &mut [u8]) {
    let _ = write_some(&stream, &[IoSlice::new(&wire(&server_full(max_clients)))]);
    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // notice before the client reads it (telnet, for one, speaks first): read what came.
    let _ = read_some(&stream, scratch);
}

/// Bytes for one client that its socket has not taken yet.
///
/// A relayed chunk is formatted once and shared (`Rc`) by every receiver's outbox, so a burst
/// is never copied once per receiver, not even for receivers that fall behind. The outbox
/// holds only pointers between the writes at the end of each turn, and releases even those
/// when it drains, so an idle client holds no buffer.
#[derive(Debug, Default)]
struct Outbox {
    /// The oldest chunk not fully written yet. Kept apart from `later` because a client that
    /// keeps up usually has one chunk at a time, and then needs no allocation at all. That is
    /// worth the extra field: with every chunk in the queue, each broadcast allocated and freed
    /// a small buffer per receiver, and the allocator kept the freed ones (measured: 257 bytes
    /// per idle client after one line to 10 000 of them, against 200 now).
    front: Option<Rc<[u8]>>,
    /// The chunks after `front`, oldest first.
    later: VecDeque<Rc<[u8]>>,
    /// How much of `front` the socket has already taken.
    written: usize,
    /// Bytes still to write, all chunks together: what `--max-queue` limits.
    len: usize,
}

impl Outbox {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `chunk` after what is already waiting. Never writes: see [`Outbox::flush`].
    fn push(&mut self, chunk: &Rc<[u8]>) {
        self.len += chunk.len();
        if self.front.is_none() {
            self.front = Some(Rc::clone(chunk));
        } else {
            self.later.push_back(Rc::clone(chunk));
        }
    }

    /// Writes queued chunks, as many per system call as [`WRITE_SLICES`] allows, until the
    /// socket is full or the outbox is empty. Never blocks.
    fn flush(&mut self, stream: &TcpStream) -> Result<(), Close> {
        while let Some(front) = &self.front {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            slices[0] = IoSlice::new(&front[self.written..]);
            let mut offered = 1;
            for (slice, chunk) in slices[1..].iter_mut().zip(&self.later) {
                *slice = IoSlice::new(chunk);
                offered += 1;
            }
            let slices = &slices[..offered];
            let wanted: usize = slices.iter().map(|slice| slice.len()).sum();
            let taken = write_some(stream, slices)?;
            self.consume(taken);
            // A short write means the socket buffer is full: asking again now would only be
            // told `WouldBlock`. Wait for `POLLOUT`.
            if taken < wanted {
                return Ok(());
            }
        }
        // Drained: release the queue's allocation too.
        *self = Outbox::default();
        Ok(())
    }

    /// Forgets the first `taken` bytes, which the socket has taken.
    fn consume(&mut self, mut taken: usize) {
        self.len -= taken;
        while let Some(front) = &self.front {
            let front_left = front.len() - self.written;
            if taken < front_left {
                self.written += taken;
                return;
            }
            taken -= front_left;
            self.front = self.later.pop_front();
            self.written = 0;
        }
    }
}

/// One non-blocking `writev`: how many bytes the socket took, 0 if it is full.
fn write_some(mut stream: &TcpStream, slices: &[IoSlice<'_>]) -> Result<usize, Close> {
    loop {
        match stream.write_vectored(slices) {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(Close::Broken(error)),
        }
    }
}

/// One non-blocking read, retried if a signal interrupted it; `WouldBlock` is the caller's.
fn read_some(mut stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            result => return result,
        }
    }
}

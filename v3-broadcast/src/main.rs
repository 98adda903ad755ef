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
//! else instead of back to its sender. Each client's outbox (bounded by `--max-queue`) is fed
//! by the other clients, and a client that does not read is disconnected before it can slow the
//! room or grow the server's memory.
//!
//! ```text
//!     +-------------------------------------------------------------------+
//!     v                                                                   |
//!   poll(listener, every client)      sleeps until some socket is ready   |
//!     |                                                                   |
//!     +-> client writable: write what its outbox holds ------------------>+
//!     +-> client readable: read one chunk -> framer -> lines -> log       |
//!     |     -> format the chunk's lines once: "ADDR says: ...\r\n..."     |
//!     |     -> each other client: write now, queue the rest, or, if       |
//!     |        its socket and its outbox are both full, disconnect it --->+
//!     +-> listener ready:  accept (a batch at most), announce joins ----->+
//! ```
//!
//! ## What changed since v2
//!
//! - **Relay, not echo.** A read is framed and sanitised once, and its lines are formatted
//!   once into one buffer that is handed to every other client's outbox. The sender gets only
//!   notices (`* error: line too long ...`).
//! - **A room.** Joins and leaves are announced to the others with the number online, as long
//!   as that number is at most `--announce-limit`; above it, telling everyone about everyone
//!   is quadratic traffic and the room stays quiet about it. A client that half-closes
//!   leaves the room at once (its last line is relayed first), then only waits for its
//!   outbox to drain.
//! - **The slow consumer matters.** In v2 a client that did not read hurt only itself. Here
//!   every sender fills every receiver's outbox, so one reader that stops would hold the
//!   room's lines forever. The outbox bound is what keeps the room moving: a receiver whose
//!   outbox would pass `--max-queue` is first flushed, and only if its socket takes nothing
//!   is it too slow: it gets `* error: too slow, disconnected` if that still fits, and goes.
//!   A client that reads as fast as it can is never dropped, because the kernel takes the
//!   bytes as fast as it reads them, even when many senders burst at once: the loop reads one
//!   bounded chunk per sender per turn and hands it on before reading more.
//!
//! ## What it costs
//!
//! A relayed chunk costs one `write` per receiver (a chunk holds many lines, so at load a
//! write carries many deliveries), and no copy at all for receivers that keep up: only what a
//! socket refuses is copied into that client's outbox. Memory is a few hundred bytes per idle
//! client, plus at most `--max-queue` per client that is behind. As in v2, each turn scans
//! every descriptor, and one thread does all the work.
//!
//! ## What the Python original got wrong
//!
//! The Python v3 relayed with a blocking `send` to each client inside the loop. A client that
//! stops reading fills its socket buffer; the next `send` to it blocks, and with it the only
//! thread: one slow (or suspended, or malicious) client froze the whole server for everyone.
//! Here no write ever waits: what does not fit waits in an outbox, and the outbox has a limit.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_protocol::cli::{addr_arg, AnnounceLimit, ConnectionLimits, QueueLimit, V3_ADDR_DEFAULT};
use chat_protocol::message::{
    joined, left, line_too_long, push_chat_line, server_full, wire, CRLF, TOO_SLOW,
};
use chat_protocol::startup::{
    bind_listener, exit_with, init_logging, log_listening, raise_fd_limit,
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

/// Most connections accepted in one turn: a connect storm must not starve the clients that are
/// already here. The rest wait in the listen backlog for the next turn.
const ACCEPT_BATCH: usize = 256;

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
    /// The chat lines of one read, formatted once for all receivers; reused.
    relay: String,
    /// The notices one read earns its sender (`line too long`); reused.
    to_sender: String,
    /// Clients found too slow or broken while a line was being handed out. They are removed
    /// once the hand-out is done, because removing one means telling the others, which is
    /// another hand-out.
    doomed: VecDeque<(usize, Close)>,
    /// The clients that `poll` reported this turn, with their events; reused.
    ready: Vec<(usize, PollFlags)>,
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
}

/// Why a client's connection is closed.
#[derive(Debug)]
enum Close {
    /// It half-closed and everything queued for it was sent.
    Finished,
    /// Its outbox is full and its socket takes nothing: it does not read.
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
            doomed: VecDeque::new(),
            ready: Vec::new(),
        }
    }

    /// The loop: wait, serve the ready clients, accept newcomers, forever.
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

    /// Does what one client's readiness allows: write (making room before this turn's relays
    /// reach it), then read one chunk.
    fn serve(&mut self, token: usize, events: PollFlags) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        if events.contains(PollFlags::POLLOUT) {
            if let Err(close) = client.outbox.flush(&client.stream) {
                return self.drop_client(token, close);
            }
        }
        if client.in_room {
            // A reset or hang-up shows up as POLLERR/POLLHUP; the read then reports it.
            if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_and_relay(token);
            }
        } else if client.outbox.is_empty()
            || events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            // Half-closed earlier, and now everything is sent, or the peer is gone entirely
            // and nobody will read the rest.
            self.drop_client(token, Close::Finished);
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
            Err(error) => return self.drop_client(token, Close::Broken(error)),
        };

        let to_sender = self.to_sender.as_bytes();
        if !to_sender.is_empty() {
            if let Err(close) = client
                .outbox
                .send(&client.stream, to_sender, self.max_queue)
            {
                self.doomed.push_back((token, close));
            }
        }
        if !self.relay.is_empty() {
            // Taken out for the hand-out, which needs the whole server; put back to keep the
            // allocation.
            let relay = std::mem::take(&mut self.relay);
            self.broadcast(Some(token), relay.as_bytes());
            self.relay = relay;
        }
        if at_eof {
            self.leave_room(token);
        }
        self.bury_doomed();
    }

    /// Hands `bytes` to every client in the room except `except`: written at once where the
    /// socket takes it, queued where it does not. Receivers found too slow or broken are only
    /// marked here; [`Server::bury_doomed`] removes them.
    fn broadcast(&mut self, except: Option<usize>, bytes: &[u8]) {
        for (token, slot) in self.clients.iter_mut().enumerate() {
            let Some(client) = slot else { continue };
            if !client.in_room || except == Some(token) {
                continue;
            }
            if let Err(close) = client.outbox.send(&client.stream, bytes, self.max_queue) {
                self.doomed.push_back((token, close));
            }
        }
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
            self.doomed.push_back((token, Close::Finished));
        }
        self.announce_leave(&name);
    }

    /// Tells the room that `name` (already out of it) left, if the room is now small enough
    /// (the same rule as for joins: the number the notice carries is at most the limit).
    fn announce_leave(&mut self, name: &str) {
        self.online -= 1;
        if self.online <= self.announce_limit {
            self.broadcast(None, &wire(&left(name, self.online, None)));
        }
    }

    /// Closes a client now, and then everyone its departure made fail in turn.
    fn drop_client(&mut self, token: usize, close: Close) {
        self.doomed.push_back((token, close));
        self.bury_doomed();
    }

    /// Removes the doomed clients. Each removal may announce a leave, which may doom more
    /// clients, so this runs until none are left.
    fn bury_doomed(&mut self) {
        while let Some((token, close)) = self.doomed.pop_front() {
            self.remove(token, close);
        }
    }

    /// Closes a client's socket, frees its slot and, if it was still in the room, tells the
    /// others. A client can be doomed twice in one hand-out; the second time its slot is empty.
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
                let _ = write_some(&client.stream, &wire(TOO_SLOW));
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
        };
        info!("{} connected", client.name);
        let notice = wire(&joined(&client.name, self.online + 1));
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
        self.online += 1;
        // Each join is news for everyone: a room filling up would cost O(n^2) notices.
        if self.online <= self.announce_limit {
            self.broadcast(Some(token), &notice);
            self.bury_doomed();
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

/// Tells a connection beyond `--max-clients` why it is refused, without waiting for it.
fn turn_away(stream: TcpStream, max_clients: usize, scratch: &mut [u8]) {
    let _ = write_some(&stream, &wire(&server_full(max_clients)));
    // Closing a socket with unread input makes the kernel send a reset, which can destroy the
    // notice before the client reads it (telnet, for one, speaks first): read what came.
    let _ = read_some(&stream, scratch);
}

/// Bytes accepted for one client that its socket has not taken yet.
///
/// Empty while the client keeps up, which is nearly always: bytes go straight to the socket
/// and only what the kernel refuses is copied here. The allocation is released whenever the
/// outbox drains, so an idle client holds no buffer.
#[derive(Debug, Default)]
struct Outbox {
    bytes: Vec<u8>,
    /// How much of `bytes` the socket has already taken. Moving the rest to the front after
    /// every partial write would copy up to `--max-queue` bytes each time.
    written: usize,
}

impl Outbox {
    fn len(&self) -> usize {
        self.bytes.len() - self.written
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends `data` after whatever is queued, without ever blocking.
    ///
    /// The client is too slow only when its outbox would pass `max_queue` *and* its socket,
    /// asked just now, took nothing: a client that reads as fast as it can is never dropped.
    fn send(&mut self, stream: &TcpStream, data: &[u8], max_queue: usize) -> Result<(), Close> {
        let mut rest = data;
        if self.is_empty() {
            // Nothing queued, so nothing to overtake: offer the bytes to the socket first. It
            // usually takes them all, and they are never copied.
            rest = &rest[write_some(stream, rest)?..];
        } else if self.len() + rest.len() > max_queue {
            self.flush(stream)?;
        }
        if rest.is_empty() {
            return Ok(());
        }
        if self.len() + rest.len() > max_queue {
            return Err(Close::TooSlow);
        }
        // Reclaim the written front only once it is at least half the buffer: each byte is
        // then moved at most once on average.
        if self.written > 0 && self.written >= self.bytes.len() / 2 {
            self.bytes.drain(..self.written);
            self.written = 0;
        }
        self.bytes.extend_from_slice(rest);
        Ok(())
    }

    /// Writes queued bytes until the socket is full or the outbox is empty.
    fn flush(&mut self, stream: &TcpStream) -> Result<(), Close> {
        while !self.is_empty() {
            let n = write_some(stream, &self.bytes[self.written..])?;
            if n == 0 {
                return Ok(());
            }
            self.written += n;
        }
        *self = Outbox::default();
        Ok(())
    }
}

/// One non-blocking write: how many bytes the socket took, 0 if it is full.
fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> Result<usize, Close> {
    loop {
        match stream.write(bytes) {
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

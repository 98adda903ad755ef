//! # v2-select: one thread, a `poll(2)` readiness loop, every line echoed
//!
//! ```text
//! cargo run -p v2-select                     # listens on 127.0.0.1:8082
//! telnet 127.0.0.1 8082                      # or: cargo run -p client -- 8082
//! ```
//!
//! Type a line: the server logs it and echoes it back to you as `127.0.0.1:52344 says: hi`.
//! Open several terminals: one thread serves them all.
//!
//! ## The model
//!
//! One thread owns every socket, and every socket is non-blocking. The thread sleeps in
//! `poll(2)` until the kernel says some sockets are ready, does only the work that cannot wait
//! (one read, one write, one accept batch), and goes back to sleep: nothing ever blocks, so no
//! client can stall another.
//!
//! ```text
//!     +-------------------------------------------------------------------+
//!     v                                                                   |
//!   poll(listener, every client)      sleeps until some socket is ready   |
//!     |                                                                   |
//!     +-> client writable: write what its outbox holds ------------------>+
//!     +-> client readable: read one chunk -> framer -> lines              |
//!     |     -> log, echo: write now, queue what the socket refused ------>+
//!     +-> listener ready:  accept until WouldBlock (a batch at most) ---->+
//! ```
//!
//! ## Why `poll` and not `select`
//!
//! `select(2)` describes the descriptors it watches as bitmaps of `FD_SETSIZE` bits, and
//! `FD_SETSIZE` is 1024 on Linux: a socket numbered 1024 or more cannot be watched at all (in
//! C, setting its bit writes past the bitmap; Python's `select.select` refuses it with
//! "filedescriptor out of range"). A `select` server therefore dies at about a thousand
//! clients whatever `ulimit -n` says. `poll(2)` takes an array of `(fd, events)` of any length.
//! Both cost the same per call: the kernel looks at every descriptor on every turn. That
//! linear cost is what `epoll`, and tokio in v4, remove.
//!
//! ## Writes that never block
//!
//! Even an echo can meet a full socket: a client that sends without reading fills its socket
//! buffer, and a blocking `write` would freeze the whole loop. So each client has an outbox.
//! A reply is written at once when nothing is queued (the usual case, so most writes never
//! need `POLLOUT`); what the kernel does not take waits in the outbox, and the client is polled
//! for `POLLOUT` only while its outbox is non-empty (polling an always-writable socket for
//! `POLLOUT` would wake the loop on every turn). The outbox is bounded by `--max-queue`: a
//! client whose socket takes nothing while its outbox is full does not read, and it is
//! disconnected with `* error: too slow, disconnected` if that still fits.
//!
//! ## What it costs
//!
//! One thread and a few hundred bytes per idle client (a table slot, its name, an empty framer
//! and an empty, unallocated outbox); the kernel keeps the socket buffers. Every turn rebuilds
//! the `poll` array and the kernel scans all of it, so a turn costs O(clients) even when one
//! client is busy: with 10 000 clients, a few milliseconds per turn on a 2-core VM. And
//! everything runs on one core: any slow step in the loop delays everyone.
//!
//! ## Since v1, and what the Python original got wrong
//!
//! v1 gave each client a thread that blocks; here no thread ever blocks, so a thousand clients
//! cost a thousand table slots instead of a thousand stacks, and the state needs no lock. The
//! price is that the code must remember, per client, what the stack of a v1 thread remembered:
//! the unfinished line (the framer) and the unsent bytes (the outbox).
//!
//! The Python original was built on `select()`, so it inherited the `FD_SETSIZE` ceiling
//! above, and it wrote with a plain `send` inside the loop. On a socket that is full, that
//! either blocks the only thread (a blocking socket: everyone waits for one client) or sends
//! only part of the line and drops the rest (a non-blocking one). The outbox fixes both;
//! v3-broadcast shows what the blocking `send` did to a room.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_protocol::cli::{addr_arg, ConnectionLimits, QueueLimit, V2_ADDR_DEFAULT};
use chat_protocol::message::{line_too_long, push_chat_line, server_full, wire, CRLF, TOO_SLOW};
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
/// once: with batches of 256 the queue overflowed in 11 runs of 17 and they took 1.5 s to get
/// in (median; up to 2.6 s); with this batch it overflowed in none of 13 runs and they took
/// 0.6 s. The bound keeps a storm from starving the clients already here: an accept costs
/// microseconds, so a full batch delays them by a few milliseconds.
const ACCEPT_BATCH: usize = LISTEN_BACKLOG as usize;

/// How long the listener rests after an accept error such as `EMFILE` (out of descriptors).
/// The connection that failed stays in the backlog, so polling the listener again at once would
/// report it ready and spin; meanwhile the clients already here are served as usual.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// sock-chat v2: one thread, a poll(2) loop, every line echoed to its sender.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(long, value_name = "ADDR", default_value = V2_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    #[command(flatten)]
    limits: ConnectionLimits,

    #[command(flatten)]
    queue: QueueLimit,
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
    log_listening("v2-select", &listener)?;
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
    /// Occupied slots: what `--max-clients` limits.
    connected: usize,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    /// Set after an accept error: the listener is not polled until then (see [`ACCEPT_BACKOFF`]).
    accept_paused_until: Option<Instant>,
    /// The one read buffer. Each read is framed and echoed before the next, so one buffer
    /// serves every client.
    read_buf: Box<[u8]>,
    /// What one read turns into (echoes and notices), formatted once; reused to keep the
    /// allocation.
    reply: String,
    /// The clients that `poll` reported this turn, with their events; reused.
    ready: Vec<(usize, PollFlags)>,
}

/// One connection, and what the loop must remember about it between turns: where v1 kept
/// this on a thread's stack, a poll loop keeps it in a table.
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    /// The socket address as Rust prints it (`127.0.0.1:52344`): its name in the log and echo.
    name: String,
    /// The start of a line whose `\n` has not arrived yet.
    framer: LineFramer,
    /// Bytes for this client that its socket has not taken yet.
    outbox: Outbox,
    /// False once the client half-closed: then it only waits for its outbox to drain.
    reading: bool,
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
            max_clients: cli.limits.max_clients,
            max_line: cli.limits.max_line,
            max_queue: cli.queue.max_queue,
            accept_paused_until: None,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            reply: String::new(),
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

    /// Does what one client's readiness allows: write, then read one chunk.
    fn serve(&mut self, token: usize, events: PollFlags) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        if events.contains(PollFlags::POLLOUT) {
            if let Err(close) = client.outbox.flush(&client.stream) {
                return self.close(token, close);
            }
        }
        if client.reading {
            // A reset or hang-up shows up as POLLERR/POLLHUP; the read then reports it.
            if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_and_echo(token);
            }
        } else if client.outbox.is_empty()
            || events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)
        {
            // Half-closed earlier, and now everything is sent, or the peer is gone entirely
            // and nobody will read the rest.
            self.close(token, Close::Finished);
        }
    }

    /// Reads one chunk from a client and echoes every line in it back to that client.
    fn read_and_echo(&mut self, token: usize) {
        let Some(client) = self.clients[token].as_mut() else {
            return;
        };
        let (reply, max_line) = (&mut self.reply, self.max_line);
        reply.clear();
        let on_frame = |frame: Frame<'_>| echo(reply, &client.name, frame, max_line);
        match read_some(&client.stream, &mut self.read_buf) {
            Ok(0) => {
                // End of file: the client half-closed. Its last line may lack a `\n`.
                client.framer.finish(on_frame);
                client.reading = false;
            }
            Ok(n) => client.framer.push(&self.read_buf[..n], on_frame),
            // Readiness was stale (another reader, a spurious wake-up): try next turn.
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => return self.close(token, Close::Broken(error)),
        }
        let reply = self.reply.as_bytes();
        if !reply.is_empty() {
            if let Err(close) = client.outbox.send(&client.stream, reply, self.max_queue) {
                return self.close(token, close);
            }
        }
        if !client.reading && client.outbox.is_empty() {
            self.close(token, Close::Finished);
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

    /// Gives a new connection a slot, or turns it away if the server is full.
    fn admit(&mut self, stream: TcpStream, addr: SocketAddr) {
        // Accepted sockets do not inherit O_NONBLOCK from the listener on Linux.
        if let Err(error) = stream.set_nonblocking(true) {
            warn!("{addr}: cannot make the socket non-blocking: {error}; closing it");
            return;
        }
        // Chat lines are small and wanted now: do not let Nagle's algorithm hold an echo back
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
            reading: true,
        };
        info!("{} connected", client.name);
        match self.free.pop() {
            Some(token) => self.clients[token] = Some(client),
            None => self.clients.push(Some(client)),
        }
        self.connected += 1;
    }

    /// Closes a client's socket and frees its slot.
    fn close(&mut self, token: usize, close: Close) {
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
        // Dropping `client` closes its descriptor.
    }
}

impl Client {
    /// What to ask `poll` about this client. `POLLOUT` only while something waits to be
    /// written: an idle socket is always writable and would wake the loop on every turn.
    fn interest(&self) -> PollFlags {
        let mut events = PollFlags::empty();
        if self.reading {
            events |= PollFlags::POLLIN;
        }
        if !self.outbox.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        events
    }
}

/// Appends what one frame turns into: the echo of a line (which is also logged), or the
/// too-long notice. Sanitised-empty lines add nothing.
fn echo(reply: &mut String, name: &str, frame: Frame<'_>, max_line: usize) {
    match frame {
        Frame::Line(raw) => {
            let start = reply.len();
            if push_chat_line(reply, name, raw) {
                info!("{}", &reply[start..reply.len() - CRLF.len()]);
            }
        }
        Frame::TooLong => {
            reply.push_str(&line_too_long(max_line));
            reply.push_str(CRLF);
        }
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

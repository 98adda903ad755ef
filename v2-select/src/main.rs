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
//!   poll(listener, every client, the closing)   sleeps until one is ready |
//!     |       a client is asked for input only while its outbox has room  |
//!     |                                                                   |
//!     +-> client writable: write what its outbox holds ------------------>+
//!     +-> client readable: read what its outbox has room to answer        |
//!     |     -> framer -> lines -> log, echo: write now, queue the rest -->+
//!     +-> closing readable: read and drop; closed at end of file -------->+
//!     +-> listener ready:  accept until WouldBlock (a batch at most)      |
//!           full, or too many from that address: notice, then closing --->+
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
//! linear cost is what `epoll` removes (`--poller epoll`, below), and what tokio in v4 builds on.
//!
//! ## Backpressure: the same as v1, without a thread per client
//!
//! A client may send faster than it reads its echoes: a script pasting a file, a phone on a
//! slow link. v1 copes without trying: its thread blocks in `write` until the client makes
//! room, and while it waits it does not read, so the client's bytes pile up in the kernel
//! until TCP's window closes and the client's own `send` blocks. Nothing is lost; the client
//! just goes at the speed it reads. A poll loop must not block, so v2 builds the same thing
//! from two parts:
//!
//! - **An outbox per client.** A reply is written at once when nothing is queued (the usual
//!   case, so most writes never need `POLLOUT`); what the kernel does not take waits in the
//!   outbox, and the client is polled for `POLLOUT` only while its outbox is non-empty
//!   (polling an always-writable socket for `POLLOUT` would wake the loop on every turn).
//! - **`POLLIN` only while the outbox has room.** The loop asks `poll` for a client's input
//!   only while its outbox can take what the next read may become, and reads no more than
//!   that. An echo can be far larger than what was read: `a\n` becomes
//!   `127.0.0.1:52344 says: a\r\n`, twelve times as long, and an invalid byte grows three-fold
//!   when it becomes U+FFFD, so [`reply_bound`] says how much a read may become and
//!   [`Client::readable`] how much may be read. While a client's echoes wait, the loop leaves
//!   its input in the kernel; once the socket's receive buffer is full, the kernel advertises
//!   a zero window and TCP stops the sender, exactly as it does for v1's blocked thread.
//!
//! So the outbox never passes `--max-queue` (unless that is set below one long line's echo;
//! see [`MIN_READ`]), nothing is dropped, and a client that reads at any speed gets every
//! echo in order. The trade-off is the same as v1's: a client that never
//! reads keeps its connection, its socket buffers and up to `--max-queue` of outbox for as
//! long as it stays, and is never disconnected as too slow: it holds nobody else back (an
//! echo has no other receivers; contrast v3's room, which must give up on a stalled reader),
//! and what it may cost is bounded by `--max-queue`, `--max-clients` and `--max-per-ip`.
//! What v2 pays that v1 does not is bookkeeping: the loop must work out, per client and per
//! turn, how much it may read.
//!
//! ## Turning a connection away
//!
//! A connection beyond `--max-clients`, or from an address that already holds `--max-per-ip`
//! (127.0.0.1 and ::1 are exempt), gets one notice (`* server full (1024 clients)`,
//! `* error: too many connections from your address (max 64)`) and is closed. Closing at once
//! would often destroy the notice: a client that spoke first (telnet users do) has input the
//! server never read, and closing a socket with unread input makes the kernel send a reset,
//! which throws away what the client had not read yet. So the write side is shut down after
//! the notice and the socket joins the *closing* list, polled like a client: whatever arrives
//! is read and dropped until the client closes, or [`CLOSE_DRAIN`] passes. Nothing waits for
//! it, and at most [`MAX_CLOSING`] are drained at once.
//!
//! ## poll or epoll (`--poller`)
//!
//! `v2-select --poller epoll` runs the same loop and waits with `epoll(7)` instead (SPEC 12).
//! What differs is where the list of "what I want from each socket" lives:
//!
//! ```text
//!   poll   every turn    [listener:IN, c0:IN, c1:IN|OUT, ... c9999:IN] --> the kernel checks
//!                        <-- the same array, what happened filled in       every entry
//!
//!   epoll  on accept     epoll_ctl(ADD, c7, IN)         the kernel keeps the interest list;
//!          on a change   epoll_ctl(MOD, c1, IN|OUT)     a socket puts itself on the ready
//!          every turn    epoll_wait() <-- [c1: OUT]     list when data arrives
//!          before close  epoll_ctl(DEL, c1)
//! ```
//!
//! A `poll` turn costs O(clients): the loop builds an array of every descriptor, the kernel
//! copies it in, and for each one checks the socket and hangs a wait-queue entry on it (so
//! that any of them can wake the sleeping thread), then takes every entry off again, and the
//! loop walks the answers. An `epoll_wait` turn costs O(ready): each socket was hooked up once,
//! when it was added, and puts itself on the instance's ready list when data arrives. With a
//! few dozen clients the difference is small; with thousands connected and a few talking (a
//! chat server's ordinary day) `poll` pays for every silent one on every turn and `epoll` does
//! not. chat-bench's crowd workload measures exactly that (`docs/benchmarks/crowd.md`: 10
//! clients echoing 10 lines a second among N): with `poll` the server's CPU per echo grows
//! from 103 µs with 100 clients connected to 6.46 ms with 19 936, and the median echo takes
//! 16.80 ms instead of 131 µs; with `epoll` it stays between 41 and 47 µs, and the median
//! echo between 101 and 111 µs, whatever N.
//!
//! The epoll loop is **level-triggered** (epoll's default, and what `poll` does): a socket
//! that is still readable is reported again next turn, so the loop reads one chunk and moves
//! on, exactly as with `poll`, and backpressure works the same way. Edge-triggered epoll
//! (`EPOLLET`) reports only changes: the loop would have to read until `WouldBlock` or never
//! hear of the rest, which is faster and a different loop.
//!
//! What epoll asks in return, its warts:
//!
//! - **One system call per change of interest.** `poll` is told everything every turn; epoll
//!   only what it is told. Each time a client's interest changes (its outbox fills: `POLLOUT`
//!   on; its echoes fill the outbox: `POLLIN` off, which is the backpressure), the loop must
//!   call `epoll_ctl`. [`Server::update_interest`] compares with what is registered and calls
//!   only on a change; a loop whose interests flip every turn can spend more on `epoll_ctl`
//!   than it saves.
//! - **Deregister before close.** The interest list holds the socket, not the descriptor's
//!   number: closing the descriptor takes the socket off the list only when no other
//!   descriptor refers to it (a `dup`, a child after `fork`). Otherwise epoll goes on reporting
//!   a socket the loop has forgotten, under a number that may already be someone else's. So
//!   [`Server::deregister`] takes every socket off before it is dropped.
//! - **A paused listener must be told.** After an accept error (`EMFILE`) `poll` simply leaves
//!   the listener out of the next array; with epoll the listener's entry is changed to ask for
//!   nothing, and changed back when the pause ends, or the failed connection still in the
//!   backlog would wake the loop on every turn.
//! - **Linux only.** The BSDs and macOS have `kqueue`, Windows has IOCP: portable programs, and
//!   tokio in v4 (through mio), hide them behind one interface.
//!
//! ## What it costs
//!
//! One thread and a few hundred bytes per idle client (a table slot, its name, an empty framer
//! and an empty, unallocated outbox; `docs/benchmarks/results.md` measures 190 B per idle
//! connection). The kernel's side is larger: results.md counts 8.1 KB of kernel memory per
//! idle connection, both ends of a loopback connection together (two sockets and their files),
//! and the kernel keeps the socket buffers. With `poll`, every turn rebuilds the array and the
//! kernel scans all of it, so a turn costs O(clients) even when one client is busy (with
//! `--poller epoll`, O(ready clients), plus one `epoll_ctl` per change of interest). And
//! everything runs on one core: any slow step in the loop delays everyone.
//!
//! ## Since v1, and what the Python original got wrong
//!
//! A client sees no difference: the same echo, the same line rules, and the same backpressure
//! (send faster than you read, and TCP slows you down; nothing is dropped). What changed is
//! inside. v1 gave each client a thread that blocks; here no thread ever blocks, so a thousand
//! clients cost a thousand table slots instead of a thousand stacks, and the state needs no
//! lock. The price is that the code must remember, per client, what the stack of a v1 thread
//! remembered: the unfinished line (the framer) and the unsent bytes (the outbox), and must
//! decide itself when to stop reading a client, which v1's blocked thread did by just waiting.
//!
//! The Python v2 (see `docs/python-original.md`) was built on `select()`, so it inherited the
//! `FD_SETSIZE` ceiling above and died at about the thousandth client; it printed what it read
//! and sent nothing back, so it never met a full socket at all. Its sketch of a broadcast
//! (`v2/ex.py`) called a blocking `send` inside the loop, which v3-broadcast shows the cost of.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_protocol::cli::{addr_arg, ConnectionLimits, QueueLimit, V2_ADDR_DEFAULT};
use chat_protocol::limits::PerIp;
use chat_protocol::message::{
    line_too_long, push_chat_line, relayed_bound, server_full, too_many_from_address, wire, CRLF,
};
use chat_protocol::startup::{
    bind_listener, exit_with, init_logging, log_listening, raise_fd_limit, LISTEN_BACKLOG,
};
use chat_protocol::{Frame, LineFramer};
use clap::Parser;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tracing::{debug, info, warn};

/// Most bytes read from one client in one turn. Bounded so that a client that floods cannot
/// keep the loop from the others. 16 KiB is a few hundred chat lines, and about what the
/// kernel hands over per wake-up anyway. A read is smaller when the client's outbox has less
/// room than 16 KiB can become (see [`reply_bound`]).
const READ_CHUNK: usize = 16 * 1024;

/// What an empty outbox always has room for: the replies to this many more bytes, even when
/// `--max-queue` is smaller than that. Without it, a `--max-queue` smaller than the echo of one
/// long line would never let the line's last bytes be read, and the client would be stuck
/// for good. With the default flags it changes nothing: one line's echo and the replies to
/// 1 KiB are far under 256 KiB.
const MIN_READ: usize = 1024;

/// Most connections accepted in one turn: as many as the kernel's accept queue holds
/// ([`LISTEN_BACKLOG`]), so that one turn can empty a full queue. Every turn costs a `poll` over
/// all clients, so in a connect storm a smaller batch means more turns; the queue overflows
/// while the loop polls, and the kernel drops SYNs that the clients retry only a second later.
/// With this batch, `docs/benchmarks/results.md` times a storm of 10 000 clients ("10000
/// clients accepted in"). The bound keeps a storm from starving the clients already here: an
/// accept costs microseconds, so a full batch delays them by a few milliseconds.
const ACCEPT_BATCH: usize = LISTEN_BACKLOG as usize;

/// How long the listener rests after an accept error such as `EMFILE` (out of descriptors).
/// The connection that failed stays in the backlog, so polling the listener again at once would
/// report it ready and spin; meanwhile the clients already here are served as usual.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a turned-away connection is drained after its last notice before it is closed.
/// Closing a socket while input from the client is still unread makes the kernel answer with
/// a reset instead of an orderly close, and a reset destroys whatever the client has not read
/// yet: the notice. A client that reads sees the notice and the end of the stream within a
/// round trip and closes (telnet and nc do), which ends the drain long before this; one that
/// goes on sending is closed anyway once its notice has had a second to arrive, as v4 does.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Most turned-away connections drained at once. Each holds a descriptor and a `poll` entry
/// for up to [`CLOSE_DRAIN`]; a storm of refused connections beyond this many is closed at
/// once after the notice, as if no drain existed (the notice usually still arrives, a reset
/// may destroy it), so the storm cannot take the descriptors that clients need.
const MAX_CLOSING: usize = 256;

/// Most ready sockets one `epoll_wait` reports. More than that stay ready (level-triggered)
/// and are reported on the next turn: the bound costs a turn, never an event. 1024 is far more
/// clients than are busy at once in a chat, and a 12 KiB buffer.
const EPOLL_EVENTS_MAX: usize = 1024;

/// The epoll token of the listener. A client's token is its id, a closing connection's is
/// [`CLOSING_TOKEN`] plus its descriptor's number: ids and descriptors stay far below both.
const LISTENER_TOKEN: u64 = u64::MAX;

/// Where the tokens of connections being closed start (see [`LISTENER_TOKEN`]).
const CLOSING_TOKEN: u64 = 1 << 32;

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

    /// How the loop waits for ready sockets: poll(2), the lesson as taught, or epoll(7).
    #[arg(long, value_enum, default_value_t = Poller::Poll)]
    poller: Poller,
}

/// The two ways to wait (SPEC 12). The loop is the same; see "poll or epoll" above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Poller {
    /// `poll(2)`: every descriptor handed to the kernel on every turn.
    Poll,
    /// `epoll(7)`: the interest list kept in the kernel, told only of changes.
    Epoll,
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
    Server::new(listener, cli)?.run()
}

/// Everything the loop's thread owns. No other thread touches it, so nothing is locked. (The
/// process has one more thread, the logger's, which only receives finished log lines: see
/// `chat_protocol::startup::init_logging`.)
#[derive(Debug)]
struct Server {
    listener: TcpListener,
    /// Connected clients; a client's id is the index of its slot. A slot is reused after its
    /// client leaves, so the table is as long as the most clients ever connected at once, and
    /// finding a client is an index, not a hash lookup.
    clients: Vec<Option<Client>>,
    /// Ids of the empty slots in `clients`.
    free: Vec<usize>,
    /// Occupied slots: what `--max-clients` limits.
    connected: usize,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    /// Connections held per address: what `--max-per-ip` limits.
    per_ip: PerIp,
    /// `* error: line too long (max N bytes)\r\n`, formatted once.
    too_long: String,
    /// Turned-away connections whose last notice is on its way; see [`Closing`].
    closing: Vec<Closing>,
    /// Set after an accept error: the listener is not polled until then (see [`ACCEPT_BACKOFF`]).
    accept_paused_until: Option<Instant>,
    /// The one read buffer. Each read is framed and echoed before the next, so one buffer
    /// serves every client.
    read_buf: Box<[u8]>,
    /// What one read turns into (echoes and notices), formatted once; reused to keep the
    /// allocation.
    echoes: String,
    /// The clients that `poll` reported this turn, with their events; reused.
    ready: Vec<(usize, PollFlags)>,
    /// Which of `closing` `poll` reported this turn, in the same order; reused.
    closing_ready: Vec<bool>,
    /// With `--poller epoll`: the kernel's interest list. `None`: the loop waits in `poll`.
    epoll: Option<EpollSet>,
}

/// What `--poller epoll` adds: an epoll instance, whose interest list in the kernel holds the
/// listener, every client and every closing connection, each with what the loop wants from
/// it, and the buffer `epoll_wait` reports the ready ones into.
#[derive(Debug)]
struct EpollSet {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    /// Whether the listener's entry asks for `EPOLLIN` (not while accepting is paused).
    listening: bool,
}

/// One connection, and what the loop must remember about it between turns: where v1 kept
/// this on a thread's stack, a poll loop keeps it in a table.
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    /// The address it connects from, as `--max-per-ip` counts it.
    ip: IpAddr,
    /// The socket address as Rust prints it (`127.0.0.1:52344`): its name in the log and echo.
    name: String,
    /// The start of a line whose `\n` has not arrived yet.
    framer: LineFramer,
    /// Bytes for this client that its socket has not taken yet.
    outbox: Outbox,
    /// False once the client half-closed: then it only waits for its outbox to drain.
    reading: bool,
    /// With epoll: what the kernel's interest list holds for it, so that it is told only when
    /// [`Client::interest`] changes.
    registered: PollFlags,
}

/// A connection turned away with a last notice (SPEC 4): the notice is sent and the write side
/// shut down at once, then whatever the client still sends is read and dropped until it
/// closes or [`CLOSE_DRAIN`] passes, so that closing never leaves input unread.
#[derive(Debug)]
struct Closing {
    stream: TcpStream,
    /// When the drain gives up and closes the socket anyway.
    until: Instant,
}

/// Why a client's connection is closed.
#[derive(Debug)]
enum Close {
    /// It half-closed and everything queued for it was sent.
    Finished,
    /// It half-closed, then hung up entirely with echoes still owed: nobody will read them.
    HungUp,
    /// The socket failed: a reset, a broken pipe.
    Broken(io::Error),
}

impl Server {
    fn new(listener: TcpListener, cli: &Cli) -> anyhow::Result<Server> {
        let epoll = match cli.poller {
            Poller::Poll => None,
            Poller::Epoll => {
                let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
                    .context("cannot create an epoll instance")?;
                let listening = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN);
                epoll
                    .add(&listener, listening)
                    .context("cannot add the listener to epoll")?;
                let events = vec![EpollEvent::empty(); EPOLL_EVENTS_MAX];
                Some(EpollSet {
                    epoll,
                    events,
                    listening: true,
                })
            }
        };
        Ok(Server {
            listener,
            clients: Vec::new(),
            free: Vec::new(),
            connected: 0,
            max_clients: cli.limits.max_clients,
            max_line: cli.limits.max_line,
            max_queue: cli.queue.max_queue,
            per_ip: PerIp::new(cli.limits.max_per_ip),
            too_long: line_too_long(cli.limits.max_line) + CRLF,
            closing: Vec::new(),
            accept_paused_until: None,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            echoes: String::new(),
            ready: Vec::new(),
            closing_ready: Vec::new(),
            epoll,
        })
    }

    /// The loop: wait, serve the ready clients, drain the closing, accept newcomers, forever.
    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            let listener_ready = match self.wait() {
                Ok(listener_ready) => listener_ready,
                // A signal arrived while we slept: nothing is ready, just wait again.
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno).context("poll failed"),
            };
            for i in 0..self.ready.len() {
                let (id, events) = self.ready[i];
                self.serve(id, events);
                // Serving changes what we want from the client next: with epoll, the kernel
                // must be told (with poll, the next array says it).
                self.update_interest(id);
            }
            // Before accepting, while `closing_ready` still lines up with `closing`.
            self.drain_closing();
            // Accepting after serving means a slot freed this turn is reused only once the
            // turn's `ready` list is done with it.
            if listener_ready {
                self.accept_batch();
            }
        }
    }

    /// Sleeps until a socket is ready or a deadline comes (the end of an accept pause or of a
    /// drain), then fills `ready` and `closing_ready`. Returns whether the listener has
    /// connections waiting.
    fn wait(&mut self) -> Result<bool, Errno> {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
        }
        let accepting = self.accept_paused_until.is_none();
        let deadline = self
            .closing
            .iter()
            .map(|closing| closing.until)
            .chain(self.accept_paused_until)
            .min();
        let timeout = match deadline {
            // Rounded up, so that we do not wake a hair early and go straight back to sleep.
            Some(deadline) => {
                let millis = deadline.saturating_duration_since(now).as_millis() + 1;
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        if self.epoll.is_some() {
            self.wait_epoll(accepting, timeout)
        } else {
            self.wait_poll(accepting, timeout)
        }
    }

    /// `poll(2)`: builds the array of every socket and what the loop wants from it, and the
    /// kernel looks at all of them, however few are ready.
    fn wait_poll(&mut self, accepting: bool, timeout: PollTimeout) -> Result<bool, Errno> {
        // The array borrows every socket, so it lives only for this call; `ready` remembers
        // which id each entry stood for.
        let mut fds = Vec::with_capacity(1 + self.connected + self.closing.len());
        if accepting {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }
        self.ready.clear();
        for (id, slot) in self.clients.iter().enumerate() {
            if let Some(client) = slot {
                let interest = client.interest(self.max_queue, self.too_long.len());
                fds.push(PollFd::new(client.stream.as_fd(), interest));
                self.ready.push((id, PollFlags::empty()));
            }
        }
        for closing in &self.closing {
            fds.push(PollFd::new(closing.stream.as_fd(), PollFlags::POLLIN));
        }

        poll(&mut fds, timeout)?;

        let mut reported = fds.iter().map(|fd| {
            // Flags nix does not know: try the I/O, which will tell what happened.
            fd.revents()
                .unwrap_or(PollFlags::POLLIN | PollFlags::POLLOUT)
        });
        let listener_ready = accepting && reported.next().is_some_and(|events| !events.is_empty());
        for ((_, events), revents) in self.ready.iter_mut().zip(&mut reported) {
            *events = revents;
        }
        self.ready.retain(|(_, events)| !events.is_empty());
        self.closing_ready.clear();
        self.closing_ready
            .extend(reported.map(|events| !events.is_empty()));
        Ok(listener_ready)
    }

    /// `epoll_wait(2)`: the kernel already holds what the loop wants from every socket (kept
    /// up to date by [`Server::update_interest`] and friends), so a turn hands it nothing and
    /// gets back only the ready ones.
    fn wait_epoll(&mut self, accepting: bool, timeout: PollTimeout) -> Result<bool, Errno> {
        let Some(set) = self.epoll.as_mut() else {
            return Ok(false);
        };
        if set.listening != accepting {
            // Paused after an accept error, or resumed. Left asking for input, a listener
            // with a failed connection in its backlog would wake every turn (level-triggered).
            let interest = if accepting {
                EpollFlags::EPOLLIN
            } else {
                EpollFlags::empty()
            };
            let mut event = EpollEvent::new(interest, LISTENER_TOKEN);
            set.epoll.modify(&self.listener, &mut event)?;
            set.listening = accepting;
        }

        let reported = set.epoll.wait(&mut set.events, timeout)?;

        let mut listener_ready = false;
        self.ready.clear();
        self.closing_ready.clear();
        self.closing_ready.resize(self.closing.len(), false);
        for event in &set.events[..reported] {
            match event.data() {
                LISTENER_TOKEN => listener_ready = accepting,
                token if token >= CLOSING_TOKEN => {
                    // At most MAX_CLOSING of them: finding one by its descriptor is cheap.
                    let fd = token - CLOSING_TOKEN;
                    let found = self
                        .closing
                        .iter()
                        .position(|closing| closing.stream.as_raw_fd() as u64 == fd);
                    if let Some(i) = found {
                        self.closing_ready[i] = true;
                    }
                }
                id => self.ready.push((id as usize, poll_flags(event.events()))),
            }
        }
        Ok(listener_ready)
    }

    /// With epoll, tells the kernel what the loop now wants from client `id`, if that changed:
    /// one `epoll_ctl` per change, the price of not handing over every socket every turn.
    fn update_interest(&mut self, id: usize) {
        let (Some(set), Some(client)) = (&self.epoll, self.clients[id].as_mut()) else {
            return;
        };
        let interest = client.interest(self.max_queue, self.too_long.len());
        if interest == client.registered {
            return;
        }
        let mut event = EpollEvent::new(epoll_flags(interest), id as u64);
        match set.epoll.modify(&client.stream, &mut event) {
            Ok(()) => client.registered = interest,
            Err(errno) => self.close(id, Close::Broken(errno.into())),
        }
    }

    /// With epoll, adds a socket to the kernel's interest list under `token`.
    fn register(&self, socket: &TcpStream, interest: PollFlags, token: u64) -> io::Result<()> {
        if let Some(set) = &self.epoll {
            set.epoll
                .add(socket, EpollEvent::new(epoll_flags(interest), token))?;
        }
        Ok(())
    }

    /// With epoll, takes a socket off the kernel's interest list before it is closed. The
    /// kernel would drop it by itself when the descriptor closes, but only if no other
    /// descriptor shares the socket (a `dup`, a child after `fork`): otherwise epoll goes on
    /// reporting a socket the loop has forgotten. Deregistering first is the rule.
    fn deregister(&self, socket: &TcpStream) {
        if let Some(set) = &self.epoll {
            // It can only fail if the socket was never registered: nothing to undo then.
            let _ = set.epoll.delete(socket);
        }
    }

    /// Does what one client's readiness allows: write, then read one chunk.
    fn serve(&mut self, id: usize, events: PollFlags) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        // An error or hang-up is reported even when not asked for. With echoes waiting, the
        // write reports it; with none, the read below does.
        if events.intersects(PollFlags::POLLOUT | PollFlags::POLLERR | PollFlags::POLLHUP) {
            if let Err(close) = client.outbox.flush(&client.stream) {
                return self.close(id, close);
            }
        }
        if client.reading {
            if events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_and_echo(id);
            }
        } else if client.outbox.is_empty() {
            // Half-closed earlier, and now everything is sent.
            self.close(id, Close::Finished);
        } else if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
            self.close(id, Close::HungUp);
        }
    }

    /// Reads from a client as much as its outbox has room to answer, and echoes every line in
    /// it back to that client.
    fn read_and_echo(&mut self, id: usize) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        let room = client.readable(self.max_queue, self.too_long.len());
        if room == 0 {
            // Its echoes fill the outbox (`poll` reported a hang-up, not input): read once
            // they are sent.
            return;
        }
        let (echoes, too_long) = (&mut self.echoes, self.too_long.as_str());
        echoes.clear();
        let on_frame = |frame: Frame<'_>| echo(echoes, &client.name, frame, too_long);
        match read_some(&client.stream, &mut self.read_buf[..room]) {
            Ok(0) => {
                // End of file: the client half-closed. Its last line may lack a `\n`.
                client.framer.finish(on_frame);
                client.reading = false;
            }
            Ok(n) => client.framer.push(&self.read_buf[..n], on_frame),
            // Readiness was stale (another reader, a spurious wake-up): try next turn.
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => return self.close(id, Close::Broken(error)),
        }
        let echoes = self.echoes.as_bytes();
        if !echoes.is_empty() {
            if let Err(close) = client.outbox.send(&client.stream, echoes) {
                return self.close(id, close);
            }
        }
        if !client.reading && client.outbox.is_empty() {
            self.close(id, Close::Finished);
        }
    }

    /// Reads and drops what turned-away connections still send; closes each one once it has
    /// closed its side, failed, or had its [`CLOSE_DRAIN`].
    fn drain_closing(&mut self) {
        let now = Instant::now();
        // Backwards, so that `swap_remove` moves only entries already looked at.
        for i in (0..self.closing.len()).rev() {
            let closing = &self.closing[i];
            let done = if self.closing_ready.get(i) == Some(&true) {
                // One chunk per turn, like a client: a sender cannot keep the loop here.
                match read_some(&closing.stream, &mut self.read_buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(error) => error.kind() != ErrorKind::WouldBlock,
                }
            } else {
                false
            };
            if done || closing.until <= now {
                self.deregister(&closing.stream);
                // Dropping it closes the descriptor.
                self.closing.swap_remove(i);
            }
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

    /// Gives a new connection a slot, or turns it away if the server is full or its address
    /// holds `--max-per-ip` connections already.
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
            return self.turn_away(stream, &server_full(self.max_clients));
        }
        if !self.per_ip.try_add(addr.ip()) {
            info!("{addr} turned away: too many connections from its address");
            return self.turn_away(stream, &too_many_from_address(self.per_ip.max()));
        }
        let mut client = Client {
            stream,
            ip: addr.ip(),
            name: addr.to_string(),
            framer: LineFramer::new(self.max_line),
            outbox: Outbox::default(),
            reading: true,
            registered: PollFlags::empty(),
        };
        let id = self.free.last().copied().unwrap_or(self.clients.len());
        client.registered = client.interest(self.max_queue, self.too_long.len());
        if let Err(error) = self.register(&client.stream, client.registered, id as u64) {
            warn!("{addr}: cannot add the socket to epoll: {error}; closing it");
            self.per_ip.remove(client.ip);
            return;
        }
        info!("{} connected", client.name);
        match self.free.pop() {
            Some(id) => self.clients[id] = Some(client),
            None => self.clients.push(Some(client)),
        }
        self.connected += 1;
    }

    /// Tells a refused connection why, and closes it so that the notice arrives: write side
    /// shut down after the notice, the rest drained (see [`Closing`]).
    fn turn_away(&mut self, stream: TcpStream, notice: &str) {
        // A fresh socket's send buffer is empty: the notice fits.
        let _ = write_some(&stream, &wire(notice));
        // The client reads the notice, then end of file.
        let _ = stream.shutdown(Shutdown::Write);
        let token = CLOSING_TOKEN + stream.as_raw_fd() as u64;
        if self.closing.len() < MAX_CLOSING
            && self.register(&stream, PollFlags::POLLIN, token).is_ok()
        {
            let until = Instant::now() + CLOSE_DRAIN;
            self.closing.push(Closing { stream, until });
        } else {
            // No room to drain: at least read what already came (telnet, for one, speaks
            // first), which is what most often turns the close into a reset.
            let _ = read_some(&stream, &mut self.read_buf);
        }
    }

    /// Closes a client's socket and frees its slot.
    fn close(&mut self, id: usize, close: Close) {
        let Some(client) = self.clients[id].take() else {
            return;
        };
        self.deregister(&client.stream);
        self.free.push(id);
        self.connected -= 1;
        self.per_ip.remove(client.ip);
        match close {
            Close::Finished => {}
            Close::HungUp => debug!(
                "{}: hung up with {} bytes of echoes unsent",
                client.name,
                client.outbox.len()
            ),
            Close::Broken(error) => debug!("{}: {error}", client.name),
        }
        info!("{} disconnected", client.name);
        // Dropping `client` closes its descriptor.
    }
}

impl Client {
    /// What to ask `poll` about this client. `POLLIN` only while its outbox has room for what
    /// a read can become: that is the backpressure. `POLLOUT` only while something waits to
    /// be written: an idle socket is always writable and would wake the loop on every turn.
    fn interest(&self, max_queue: usize, too_long_len: usize) -> PollFlags {
        let mut events = PollFlags::empty();
        // An empty outbox always has room for a read (see `readable`): the usual case, and
        // no arithmetic.
        if self.reading && (self.outbox.is_empty() || self.readable(max_queue, too_long_len) > 0) {
            events |= PollFlags::POLLIN;
        }
        if !self.outbox.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        events
    }

    /// How many bytes may be read from this client now: the most whose replies are sure to
    /// fit in what its outbox has left of `max_queue` (at most [`READ_CHUNK`]; 0 while its
    /// echoes fill the outbox).
    fn readable(&self, max_queue: usize, too_long_len: usize) -> usize {
        let held = self.framer.buffered();
        let max_line = self.framer.max_line();
        let bound = |input| reply_bound(self.name.len(), max_line, too_long_len, held, input);
        let room = max_queue
            .max(bound(MIN_READ))
            .saturating_sub(self.outbox.len());
        if bound(READ_CHUNK) <= room {
            return READ_CHUNK;
        }
        // The bound grows with the input: find the largest input that fits, by bisection.
        let (mut fits, mut too_much) = (0, READ_CHUNK);
        while too_much - fits > 1 {
            let middle = fits + (too_much - fits) / 2;
            if bound(middle) <= room {
                fits = middle;
            } else {
                too_much = middle;
            }
        }
        fits
    }
}

/// The epoll flags for what the loop wants, which it states in `poll`'s terms.
fn epoll_flags(interest: PollFlags) -> EpollFlags {
    let mut flags = EpollFlags::empty();
    if interest.contains(PollFlags::POLLIN) {
        flags |= EpollFlags::EPOLLIN;
    }
    if interest.contains(PollFlags::POLLOUT) {
        flags |= EpollFlags::EPOLLOUT;
    }
    flags
}

/// What epoll reported, in `poll`'s terms, so that serving a client does not depend on how
/// the loop waited. Errors and hang-ups are reported whether asked for or not, as by `poll`.
fn poll_flags(events: EpollFlags) -> PollFlags {
    let pairs = [
        (EpollFlags::EPOLLIN, PollFlags::POLLIN),
        (EpollFlags::EPOLLOUT, PollFlags::POLLOUT),
        (EpollFlags::EPOLLERR, PollFlags::POLLERR),
        (EpollFlags::EPOLLHUP, PollFlags::POLLHUP),
    ];
    pairs
        .into_iter()
        .filter(|(epoll, _)| events.contains(*epoll))
        .fold(PollFlags::empty(), |flags, (_, poll)| flags | poll)
}

/// At most how many bytes of replies a client named with `name_len` bytes can get from
/// `input` more bytes, when its framer holds `held` bytes of an unfinished line, lines are
/// limited to `max_line` bytes and the too-long notice is `too_long_len` bytes.
///
/// The held bytes contain no `\n`, so they belong to one line, whose text is at most three
/// times as long once sanitised (an invalid byte becomes U+FFFD's three). The new bytes end at
/// most `(input + 1) / 2` lines, the first of which may need only its `\n`: that is
/// [`relayed_bound`] of one byte more. A line over `max_line` is answered with the notice
/// instead of its echo, and took at least `max_line + 1` of the bytes.
fn reply_bound(
    name_len: usize,
    max_line: usize,
    too_long_len: usize,
    held: usize,
    input: usize,
) -> usize {
    let too_long_lines = (held + input) / (max_line + 1);
    held.saturating_mul(3)
        .saturating_add(relayed_bound(name_len, input + 1))
        .saturating_add(too_long_lines.saturating_mul(too_long_len))
}

/// Appends what one frame turns into: the echo of a line (which is also logged), or the
/// too-long notice. Sanitised-empty lines add nothing.
fn echo(echoes: &mut String, name: &str, frame: Frame<'_>, too_long: &str) {
    match frame {
        Frame::Line(raw) => {
            let start = echoes.len();
            if push_chat_line(echoes, name, raw) {
                info!("{}", &echoes[start..echoes.len() - CRLF.len()]);
            }
        }
        Frame::TooLong => echoes.push_str(too_long),
    }
}

/// Bytes accepted for one client that its socket has not taken yet.
///
/// Empty while the client keeps up, which is nearly always: bytes go straight to the socket
/// and only what the kernel refuses is copied here. The allocation is released whenever the
/// outbox drains, so an idle client holds no buffer. It never holds more than `--max-queue`
/// (or one long line's echo, when `--max-queue` is smaller; see [`MIN_READ`]), because the
/// loop reads from a client only what its outbox has room to answer.
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

    /// Sends `data` after whatever is queued, without ever blocking: what the socket refuses
    /// waits here.
    fn send(&mut self, stream: &TcpStream, data: &[u8]) -> Result<(), Close> {
        let mut rest = data;
        if self.is_empty() {
            // Nothing queued, so nothing to overtake: offer the bytes to the socket first. It
            // usually takes them all, and they are never copied.
            rest = &rest[write_some(stream, rest)?..];
        }
        if rest.is_empty() {
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reply one read makes, for a client called `name`: the framer fed `stream` in
    /// `reads` pieces, each checked against [`reply_bound`] with what the framer held before.
    fn check_bound(name: &str, max_line: usize, stream: &[u8], reads: usize) {
        let too_long = line_too_long(max_line) + CRLF;
        let mut framer = LineFramer::new(max_line);
        let piece = stream.len().div_ceil(reads).max(1);
        for chunk in stream.chunks(piece) {
            let held = framer.buffered();
            let mut reply = String::new();
            framer.push(chunk, |frame| echo(&mut reply, name, frame, &too_long));
            let bound = reply_bound(name.len(), max_line, too_long.len(), held, chunk.len());
            assert!(
                reply.len() <= bound,
                "{name} max_line {max_line}: {} bytes from {held} held + {chunk:?} > {bound}",
                reply.len()
            );
        }
        let held = framer.buffered();
        let mut reply = String::new();
        framer.finish(|frame| echo(&mut reply, name, frame, &too_long));
        assert!(reply.len() <= reply_bound(name.len(), max_line, too_long.len(), held, 0));
    }

    #[test]
    fn a_read_never_makes_more_replies_than_its_bound() {
        let streams: [&[u8]; 7] = [
            &b"a\n".repeat(500),
            &b"\x80\n".repeat(500),
            &b"\x80".repeat(999),
            &b"ab\n".repeat(300),
            &b"hello world\r\n".repeat(70),
            &[b"x".repeat(3000), b"\n".to_vec()].concat(),
            &b"\xff\xfb\x01\n\n\r\n\x80\x80".repeat(100),
        ];
        for name in ["1.2.3.4:5", "127.0.0.1:52344", "[2001:db8::1]:52344"] {
            for max_line in [1, 2, 5, 1024] {
                for stream in streams {
                    for reads in [1, 2, 7, 100, stream.len()] {
                        check_bound(name, max_line, stream, reads);
                    }
                }
            }
        }
    }
}

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
//! else instead of back to its sender. A turn has two halves: first the loop reads from each
//! ready sender and queues its lines for every other client; then it writes to each client,
//! once, everything the turn queued for it.
//!
//! The room reads only as fast as its receivers take the bytes. Before each `poll` the loop
//! looks at every queue, and while one of them is too full to take what a full read could
//! become, it does not ask `poll` about input (`POLLIN`) at all, only about the sockets it has
//! bytes for (`POLLOUT`). The senders' bytes then wait in their own sockets, TCP closes their
//! window and their `write`s block: the room slows its senders down, and nothing is dropped.
//! A receiver that has kept the room waiting for `--stall-ms` in a row is not keeping up with
//! it: it is sent `* error: too slow, disconnected`, and the room moves on without it.
//!
//! ```text
//!     +-------------------------------------------------------------------+
//!     v                                                                   |
//!   review the queues: one too full for a read?  -> no POLLIN this turn   |
//!                      one held the room back    -> too slow: its last    |
//!                      for --stall-ms?              notice, then closed   |
//!     |                                                                   |
//!   poll(listener, every client)      sleeps until some socket is ready,  |
//!     |                               or until the next stall runs out    |
//!     +-> client readable: read what every queue has room for -> framer   |
//!     |     -> lines -> log -> format them once: "ADDR says: ...\r\n..."  |
//!     |     -> queue that one buffer for every other client               |
//!     +-> client writable: list it for the writes below                   |
//!     +-> listener ready:  accept (a batch at most), queue join notices   |
//!     |                                                                   |
//!     +-> each client given bytes this turn: one writev of its queue ---->+
//! ```
//!
//! ## What changed since v2
//!
//! - **Relay, not echo.** A read is framed and sanitised once, and its lines are formatted
//!   once into one buffer that every other client's queue shares. The sender gets only
//!   notices (`* error: line too long ...`).
//! - **A room.** Joins and leaves are announced to the others with the number online, as long
//!   as that number is at most `--announce-limit`; above it, telling everyone about everyone
//!   is quadratic traffic and the room stays quiet about it. A client that half-closes
//!   leaves the room at once (its last line is relayed first), is sent what it is still owed,
//!   and is closed.
//! - **Writes wait for the end of the turn.** v2 writes an echo as soon as it has read the
//!   line. Here that would mean one `write` per receiver per sender: with ten people talking,
//!   ten writes to every client in a turn. Deferring the writes lets one `writev` per client
//!   carry what all of them said (see "What it costs").
//! - **Backpressure spans the room.** v2 stops reading a client while its own echoes wait. Here
//!   one read fills every *other* client's queue, and grows on the way: `a\n` reaches each
//!   receiver as `127.0.0.1:52344 says: a\r\n`, about twelve times longer. So the loop reads from a
//!   sender only what can become no more than every queue has room for
//!   ([`chat_protocol::message::readable_within`], from the worst case
//!   [`chat_protocol::message::relayed_bound`]), and reads from no sender while some queue is
//!   too full for a read. An empty queue always takes one read, so no setting of
//!   `--max-queue` and `--max-line` can stop the room.
//! - **How long to wait for one receiver.** A room that waits for its slowest receiver must
//!   decide when to stop waiting, or one client that stops reading (or a laptop that goes to
//!   sleep) would stop everyone. `--stall-ms` (500 by default) is that decision: a receiver
//!   whose queue has been too full for the next read that long in a row is dropped, whether it
//!   stopped reading or reads a trickle; one that reads as fast as its socket allows empties
//!   its queue in far less, so it is never dropped, whatever the senders do. The trade-off is
//!   the number: a longer stall is kinder to a receiver on a poor network and costs everyone
//!   a longer pause when one stops; a shorter one keeps the room brisk and gives up sooner.
//! - **A last notice that arrives.** Closing a socket whose input was not read makes the
//!   kernel answer with a reset, and a reset destroys what the client had not read yet: the
//!   notice. So a client closed with a notice (too slow, `* server full`, too many connections
//!   from one address) is not read from any more, is sent the notice, then its write side is
//!   shut down and its input read and thrown away until it closes too, or [`CLOSING_GRACE`]
//!   runs out. None of that waits: it is one more state a client can be in between turns
//!   ([`State::Closing`]), the same a client that half-closed goes through.
//!
//! ## What it costs
//!
//! Nearly all of the server's time goes to the kernel's side of `write`: on loopback one call
//! costs microseconds whatever it carries, because the receiving end of TCP runs inside it.
//! So what counts is system calls per delivery. Each chunk is formatted once and shared
//! (`Rc`) by the queues, never copied per receiver, and each receiver gets one `writev` per
//! turn with the chunks of every sender of that turn. `docs/benchmarks/results.md` shows both
//! ends of it: in a burst from 10 of 100 clients a turn carries many lines to each receiver,
//! and a delivery costs the server 12 ns of CPU (43.12 M deliveries/s); in paced chat a turn
//! usually carries one line, and a delivery costs 4899 ns, one `writev` each.
//!
//! Backpressure costs little when receivers keep up: a few passes over the clients' slots
//! before each `poll`, to find the fullest queue and the next deadline, cheap next to `poll`'s
//! own pass over every descriptor in the kernel. When they do not keep up, the room goes at
//! the pace of its slowest receiver, for at most `--stall-ms` at a time.
//!
//! Memory is about 200 bytes per idle client (results.md: 193 B; a table slot, its name, an
//! empty framer and an empty queue), beside the kernel's own for each connection (results.md:
//! 7.4 KB, counting both ends of a loopback connection: two sockets and their files). A client
//! that is behind costs about `--max-queue` more, or one read's worth, whichever is more: join
//! and leave notices are queued even for a full queue, but a full queue is dropped within
//! `--stall-ms`. As in v2, each turn polls every descriptor (with `--poller epoll`, only the
//! ready ones are reported), and one thread does all the work.
//!
//! ## poll or epoll (`--poller`)
//!
//! `v3-broadcast --poller epoll` waits with `epoll(7)` instead of `poll(2)`, as v2 can: the
//! same loop, level-triggered, the kernel keeping the interest list so that a turn costs the
//! ready sockets, not all of them (v2's lesson draws both and lists epoll's warts:
//! deregister before close, one `epoll_ctl` per change of interest).
//!
//! The room makes the second wart bite. Its backpressure takes `POLLIN` away from *every*
//! client at once while some queue is too full, and gives it back when there is room. With
//! `poll` that is free: the next array leaves `POLLIN` out. With epoll, done the same way, it
//! would be one `epoll_ctl` per client each time the room fills and again each time it
//! empties, which under a burst is every few turns: thousands of system calls to save one
//! `poll`. So the epoll loop takes input away lazily ([`Server::update_interest`]): a client
//! keeps its `EPOLLIN` while the room is full until it is actually reported readable; only
//! then (it is not read: the room is full) is its `EPOLLIN` removed, and it is listed to get
//! it back once the room has space. Idle clients, who send nothing, are never touched: the
//! cost follows the senders, not the room.
//!
//! What epoll does not remove: the review before each wait still walks every client's slot
//! to find the fullest queue and the next deadline. That is a pass in user space over a
//! table, far cheaper than `poll`'s pass in the kernel over descriptors (each one a socket's
//! readiness to check), but it is O(clients) per turn too.
//!
//! And in a room it hardly matters. Every line is written to every client, so a turn's writes
//! grow with the room exactly as `poll`'s pass does, and cost far more: in
//! `docs/benchmarks/crowd.md` (10 senders, a line a second each, among N) a delivery costs
//! the server 6.6 µs with `poll` and 6.5 µs with `epoll` in a room of 100, 6.9 and 6.0 µs in
//! a room of 5000. It is v2's echo, where a line reaches one client and the silent ones only
//! wait, that shows what `poll` costs. (From 10 000 clients on, ten lines a second are more
//! than this 2-core machine can write to everyone as they come: the median line then reaches
//! the room in hundreds of milliseconds, with either poller.)
//!
//! ## What the Python original got wrong
//!
//! The Python v3 relayed with a blocking `send` to each client inside the loop. A client that
//! stops reading fills its socket buffer; the next `send` to it blocks, and with it the only
//! thread: one slow (or suspended, or malicious) client froze the whole server for everyone,
//! for as long as it liked. Here no write ever waits: what does not fit waits in a queue, the
//! room stops reading while a queue is full, and it waits for one receiver `--stall-ms` at most.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chat_protocol::cli::{
    addr_arg, AnnounceLimit, ConnectionLimits, QueueLimit, StallLimit, MAX_CLIENTS_DEFAULT,
    V3_ADDR_DEFAULT,
};
use chat_protocol::limits::PerIp;
use chat_protocol::message::{
    joined, left, line_too_long, push_chat_line, readable_within, relayed_bound, server_full,
    too_many_from_address, wire, CRLF, TOO_SLOW,
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

/// Most bytes read from one client at once: a few hundred chat lines, and about what the
/// kernel hands over per wake-up anyway. Bounded so that a client that floods cannot keep the
/// loop from the others. A read is smaller when the room's queues have less room (see
/// [`Server::room_free`]), and "a full read" is this much.
const READ_CHUNK: usize = 16 * 1024;

/// Most connections accepted in one turn: the same batch as v2's, for the same reason (see
/// `ACCEPT_BATCH` in v2-select): one turn can empty a full accept queue.
const ACCEPT_BATCH: usize = LISTEN_BACKLOG as usize;

/// Most chunks handed to the kernel in one `writev`. A client that keeps up has a few (one per
/// sender this turn); one that is far behind may have hundreds, and gets them 64 at a time. Far
/// below the kernel's limit (`IOV_MAX`, 1024) and small enough to build on the stack.
const WRITE_SLICES: usize = 64;

/// How long the listener rests after an accept error such as `EMFILE` (out of descriptors).
/// The connection that failed stays in the backlog, so polling the listener again at once would
/// report it ready and spin; meanwhile the clients already here are served as usual.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a connection being closed (it half-closed, was dropped as too slow, or was turned
/// away) is given to take what it is still owed and close its end: "a moment" of SPEC 4. A
/// client that reads takes a notice in milliseconds, and a person at telnet sees it at once;
/// one that does not is closed anyway, so a descriptor is never held for long by someone the
/// server is done with.
const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// Most connections turned away (server full, too many from one address) that may be handing
/// over their notice at once, each for up to [`CLOSING_GRACE`]: as many as a server full at
/// the default `--max-clients`. A storm of refused connections must not hold descriptors
/// without bound; beyond this many, one is told once, without waiting, and closed.
const TURNING_AWAY_MAX: usize = MAX_CLIENTS_DEFAULT;

/// Most ready sockets one `epoll_wait` reports. More than that stay ready (level-triggered)
/// and are reported on the next turn: the bound costs a turn, never an event. 1024 is far more
/// clients than are busy at once in a chat, and a 12 KiB buffer.
const EPOLL_EVENTS_MAX: usize = 1024;

/// The epoll token of the listener; a client's token is its id, which stays far below it.
const LISTENER_TOKEN: u64 = u64::MAX;

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
    stall: StallLimit,

    #[command(flatten)]
    announce: AnnounceLimit,

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
    log_listening("v3-broadcast", &listener)?;
    Server::new(listener, cli)?.run()
}

/// Everything the loop's thread owns. No other thread touches it, so nothing is locked. (The
/// process has one more thread, the logger's, which only receives finished log lines.)
#[derive(Debug)]
struct Server {
    listener: TcpListener,
    /// Connections; a client's id is the index of its slot, reused after it is closed. The table is
    /// as long as the most connections ever open at once, and finding a client is an index, not
    /// a hash lookup.
    clients: Vec<Option<Client>>,
    /// Ids of the empty slots in `clients`.
    free: Vec<usize>,
    /// Admitted clients that still hold a descriptor, in the room or being closed: what
    /// `--max-clients` limits.
    connected: usize,
    /// Connections turned away that are still handing over their notice (see
    /// [`TURNING_AWAY_MAX`]). They were never admitted, so they count against no limit.
    turning_away: usize,
    /// Clients in the room: the number in join and leave notices.
    online: usize,
    /// Admitted connections per address, for `--max-per-ip`.
    per_ip: PerIp,
    max_clients: usize,
    max_line: usize,
    max_queue: usize,
    /// `--stall-ms`: how long the room waits for a receiver that holds it back.
    stall: Duration,
    announce_limit: usize,
    /// Set after an accept error: the listener is not polled until then (see [`ACCEPT_BACKOFF`]).
    accept_paused_until: Option<Instant>,
    /// What a full read from the room's most demanding sender can become for one receiver
    /// (longest name, most bytes already held by its framer): a queue with less room than this
    /// is too full for the next read. Set before each `poll`.
    read_need: usize,
    /// Room left in the fullest queue of the room: `--max-queue` minus what it holds, or
    /// `usize::MAX` while every queue is empty (an empty queue takes any one read). Set before
    /// each `poll`, and lowered by every byte queued during the turn, so that every read of the
    /// turn fits in what is left.
    room_free: usize,
    /// The one read buffer. Each read is relayed before the next, so one buffer serves every
    /// client.
    read_buf: Box<[u8]>,
    /// The chat lines of one read, formatted here, then copied once into the chunk that every
    /// receiver's queue shares; reused.
    relay: String,
    /// The notices one read earns its sender (`line too long`); reused.
    to_sender: String,
    /// The clients that `poll` reported ready this turn, with their events; reused.
    ready: Vec<(usize, PollFlags)>,
    /// Clients to write to at the end of this turn: those given bytes this turn, and those
    /// whose socket became writable. Each is listed once (see [`Client::flush_due`]).
    to_flush: Vec<usize>,
    /// Turns so far. The ready clients are served starting from a different one each turn, so
    /// that when the room's space runs out in the middle of a turn, it is not always the same
    /// senders that wait for the next.
    turns: usize,
    /// Whether this turn reads input: every queue has room for what a read can become. Set
    /// before each wait.
    reading: bool,
    /// With `--poller epoll`: the kernel's interest list. `None`: the loop waits in `poll`.
    epoll: Option<EpollSet>,
}

/// What `--poller epoll` adds: an epoll instance, whose interest list in the kernel holds the
/// listener and every client, each with what the loop wants from it, and the buffer
/// `epoll_wait` reports the ready ones into.
#[derive(Debug)]
struct EpollSet {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    /// Whether the listener's entry asks for `EPOLLIN` (not while accepting is paused).
    listening: bool,
    /// Clients in the room whose `EPOLLIN` was taken away while the room was full: given back
    /// when it has room again (see "poll or epoll").
    muted: Vec<usize>,
}

/// One connection, and what the loop must remember about it between turns. Every connection
/// has one, idle or not, so it is kept small (see "What it costs").
#[derive(Debug)]
struct Client {
    stream: TcpStream,
    /// The socket address as Rust prints it (`127.0.0.1:52344`): its name in the room. Never
    /// changes, so a `Box<str>`, a pointer and a length, not a `String` with a capacity too.
    name: Box<str>,
    /// The start of a line whose `\n` has not arrived yet.
    framer: LineFramer,
    /// Bytes for this client that its socket has not taken yet.
    outbox: Outbox,
    state: State,
    /// When the loop gives up on this client unless something changes first. In the room: set
    /// when its queue becomes too full for the room's next read, to `--stall-ms` later, and
    /// cleared as soon as it has room again; `None` while it keeps up. Being closed: when
    /// [`CLOSING_GRACE`] runs out.
    deadline: Option<Instant>,
    /// True while the client is in `Server::to_flush`: it is written to at the end of the turn.
    flush_due: bool,
    /// With epoll: what the kernel's interest list holds for it, so that it is told only when
    /// [`Client::interest`] changes.
    registered: PollFlags,
}

/// Where a connection is in its life; each state asks `poll` for different things.
#[derive(Debug, Clone, Copy)]
enum State {
    /// In the room: read from while every queue has room for a read, and relayed to.
    InRoom,
    /// Out of the room, being closed: it half-closed, was dropped as too slow, or was turned
    /// away. It is not read as a client any more. It is sent what it is still owed (the rest
    /// of the room's lines after a half-close, or a last notice), then its write side is shut
    /// down and its input read and thrown away until it closes its end too, or its deadline.
    Closing {
        /// True once everything is sent and our side is shut down.
        write_shut: bool,
        /// True for a connection turned away before it was admitted.
        turned_away: bool,
    },
}

/// Why a connection's descriptor is closed now.
#[derive(Debug)]
enum Close {
    /// It was sent everything it was owed, and closed its end.
    Done,
    /// [`CLOSING_GRACE`] ran out before it took what it was owed or closed its end.
    GraceOver,
    /// It hung up entirely while it was still owed bytes: nobody is left to read them.
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
                Some(EpollSet {
                    epoll,
                    events: vec![EpollEvent::empty(); EPOLL_EVENTS_MAX],
                    listening: true,
                    muted: Vec::new(),
                })
            }
        };
        Ok(Server {
            listener,
            clients: Vec::new(),
            free: Vec::new(),
            connected: 0,
            turning_away: 0,
            online: 0,
            per_ip: PerIp::new(cli.limits.max_per_ip),
            max_clients: cli.limits.max_clients,
            max_line: cli.limits.max_line,
            max_queue: cli.queue.max_queue,
            stall: Duration::from_millis(cli.stall.stall_ms),
            announce_limit: cli.announce.announce_limit,
            accept_paused_until: None,
            read_need: 0,
            room_free: usize::MAX,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            relay: String::new(),
            to_sender: String::new(),
            ready: Vec::new(),
            to_flush: Vec::new(),
            turns: 0,
            reading: true,
            epoll,
        })
    }

    /// The loop: review the queues, wait, serve the ready clients, accept newcomers, write
    /// what the turn gave each client, forever.
    fn run(&mut self) -> anyhow::Result<()> {
        loop {
            let wake_at = self.review(Instant::now());
            let listener_ready = match self.wait(wake_at) {
                Ok(listener_ready) => listener_ready,
                // A signal arrived while we slept: nothing is ready, just wait again.
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(errno).context("poll failed"),
            };
            let ready = self.ready.len();
            for i in 0..ready {
                let (id, events) = self.ready[(self.turns + i) % ready];
                self.serve(id, events);
                // Serving changes what we want from the client next: with epoll, the kernel
                // must be told (with poll, the next array says it).
                self.update_interest(id);
            }
            self.turns = self.turns.wrapping_add(1);
            // Accepting after serving means a slot freed this turn is reused only once the
            // turn's `ready` list is done with it.
            if listener_ready {
                self.accept_batch();
            }
            self.flush_turn();
        }
    }

    /// Between turns: how much the room may read next, which receivers hold it back, and who
    /// has waited too long. Returns when the loop must wake up even if no socket is ready: the
    /// earliest deadline.
    fn review(&mut self, now: Instant) -> Option<Instant> {
        self.read_need = self
            .clients
            .iter()
            .flatten()
            .filter(|client| client.in_room())
            .map(|client| relayed_bound(client.name.len(), client.framer.buffered() + READ_CHUNK))
            .max()
            .unwrap_or(0);
        let (read_need, max_queue) = (self.read_need, self.max_queue);
        // First, whoever is past its deadline goes. The leave notices that causes are queued for
        // the others, and so counted below.
        for id in 0..self.clients.len() {
            let Some(client) = &self.clients[id] else {
                continue;
            };
            if client.deadline.is_none_or(|deadline| now < deadline) {
                continue;
            }
            match client.state {
                State::InRoom if client.outbox.too_full_for(read_need, max_queue) => {
                    self.drop_too_slow(id)
                }
                // It has room again: its deadline is cleared below.
                State::InRoom => {}
                State::Closing { .. } => self.close(id, Close::GraceOver),
            }
        }
        // Then the deadlines of those holding the room back, the room left in the fullest
        // queue, and the next wake-up.
        let mut wake_at: Option<Instant> = None;
        let mut room_free = usize::MAX;
        for client in self.clients.iter_mut().flatten() {
            if client.in_room() {
                if !client.outbox.is_empty() {
                    room_free = room_free.min(max_queue.saturating_sub(client.outbox.len()));
                }
                if !client.outbox.too_full_for(read_need, max_queue) {
                    client.deadline = None;
                } else if client.deadline.is_none() {
                    client.deadline = Some(now + self.stall);
                }
            }
            if let Some(deadline) = client.deadline {
                wake_at = Some(wake_at.map_or(deadline, |wake_at| wake_at.min(deadline)));
            }
        }
        self.room_free = room_free;
        wake_at
    }

    /// Sleeps until a socket is ready or `wake_at`, then fills `ready`. Returns whether the
    /// listener has connections waiting.
    fn wait(&mut self, wake_at: Option<Instant>) -> Result<bool, Errno> {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|until| until <= now) {
            self.accept_paused_until = None;
        }
        let accepting = self.accept_paused_until.is_none();
        let timeout = match [self.accept_paused_until, wake_at]
            .into_iter()
            .flatten()
            .min()
        {
            // Rounded up, so that we do not wake a hair early and go round for nothing.
            Some(at) => {
                let millis = at
                    .saturating_duration_since(now)
                    .as_nanos()
                    .div_ceil(1_000_000);
                PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        // Input is read only while every queue has room for what a read can become.
        self.reading = self.room_free >= self.read_need;
        if self.epoll.is_some() {
            self.wait_epoll(accepting, timeout)
        } else {
            self.wait_poll(accepting, timeout)
        }
    }

    /// `poll(2)`: builds the array of every socket and what the loop wants from it, and the
    /// kernel looks at all of them, however few are ready.
    fn wait_poll(&mut self, accepting: bool, timeout: PollTimeout) -> Result<bool, Errno> {
        let reading = self.reading;
        // The array borrows every socket, so it lives only for this call. Its entries follow
        // the table's order, so the table, walked again, says which client each stands for.
        // The listener's entry, if polled, comes last.
        let mut fds: Vec<PollFd<'_>> = self
            .clients
            .iter()
            .flatten()
            .map(|client| PollFd::new(client.stream.as_fd(), client.interest(reading)))
            .collect();
        if accepting {
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        }

        poll(&mut fds, timeout)?;

        let listener_ready = if accepting {
            fds.pop().is_some_and(|fd| !reported(&fd).is_empty())
        } else {
            false
        };
        let ids = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(id, slot)| slot.as_ref().map(|_| id));
        self.ready.clear();
        self.ready.extend(
            ids.zip(&fds)
                .map(|(id, fd)| (id, reported(fd)))
                .filter(|(_, events)| !events.is_empty()),
        );
        Ok(listener_ready)
    }

    /// `epoll_wait(2)`: the kernel already holds what the loop wants from every socket (kept
    /// up to date by [`Server::update_interest`]), so a turn hands it nothing and gets back
    /// only the ready ones.
    fn wait_epoll(&mut self, accepting: bool, mut timeout: PollTimeout) -> Result<bool, Errno> {
        if self.reading {
            // The room has space again: whoever lost `EPOLLIN` while it was full gets it back.
            let muted = self
                .epoll
                .as_mut()
                .map(|set| std::mem::take(&mut set.muted))
                .unwrap_or_default();
            for id in muted {
                self.update_interest(id);
            }
        }
        if !self.to_flush.is_empty() {
            // The review queued bytes (a leave notice) that this turn will write: do not sleep.
            // poll would not either, since those clients ask for POLLOUT in its array.
            timeout = PollTimeout::ZERO;
        }
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
        for event in &set.events[..reported] {
            match event.data() {
                LISTENER_TOKEN => listener_ready = accepting,
                id => self.ready.push((id as usize, poll_flags(event.events()))),
            }
        }
        Ok(listener_ready)
    }

    /// With epoll, tells the kernel what the loop now wants from client `id`, if that changed:
    /// one `epoll_ctl` per change, the price of not handing over every socket every turn.
    ///
    /// While the room is full, a client in it keeps its `EPOLLIN` until it actually sends
    /// something: taking input away from every client at once would cost one call per client
    /// each time the room fills, and again when it empties. Only the senders, the clients that
    /// were reported readable and not read, are muted, and listed to be given it back.
    fn update_interest(&mut self, id: usize) {
        let reading = self.reading;
        let (Some(set), Some(client)) = (self.epoll.as_mut(), self.clients[id].as_mut()) else {
            return;
        };
        let interest = client.interest(reading);
        if interest == client.registered {
            return;
        }
        let mut event = EpollEvent::new(epoll_flags(interest), id as u64);
        if let Err(errno) = set.epoll.modify(&client.stream, &mut event) {
            return self.close(id, Close::Broken(errno.into()));
        }
        let input_taken =
            client.registered.contains(PollFlags::POLLIN) && !interest.contains(PollFlags::POLLIN);
        if input_taken && client.in_room() {
            set.muted.push(id);
        }
        client.registered = interest;
    }

    /// Does what one client's readiness allows. A writable client is only marked: it is
    /// written to with everything else at the end of the turn.
    fn serve(&mut self, id: usize, events: PollFlags) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        if events.contains(PollFlags::POLLOUT) {
            flush_at_end_of_turn(&mut self.to_flush, id, client);
        }
        // A reset or hang-up shows up as POLLERR/POLLHUP, whatever was asked for.
        let gone = events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        let readable = gone || events.contains(PollFlags::POLLIN);
        match client.state {
            // Not while the room is full (with poll, it was not even asked for input then;
            // with epoll, it may still be, see `update_interest`), unless the socket is gone.
            State::InRoom if readable && (self.reading || gone) => self.read_and_relay(id, gone),
            State::Closing {
                write_shut: true, ..
            } if readable => self.drain(id),
            // Gone before it could be sent what it was owed.
            State::Closing { .. } if gone => self.close(id, Close::HungUp),
            _ => {}
        }
    }

    /// Reads from a client in the room what the room has space for, and relays its lines to
    /// everyone else. `gone`: `poll` reported a reset or hang-up.
    fn read_and_relay(&mut self, id: usize, gone: bool) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        let want = readable_within(
            client.name.len(),
            client.framer.buffered(),
            self.room_free,
            READ_CHUNK,
        );
        if want == 0 {
            // Earlier reads of this turn took the room's space: it is read next turn. But a
            // socket that failed would be reported again at once, every turn, while the room is
            // full: close that one now; the lines it sent before failing are lost with it.
            if gone {
                let error = client.stream.take_error().ok().flatten();
                let error = error.unwrap_or_else(|| ErrorKind::ConnectionReset.into());
                self.close(id, Close::Broken(error));
            }
            return;
        }
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
        let at_eof = match read_some(&client.stream, &mut self.read_buf[..want]) {
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
            Err(error) => return self.close(id, Close::Broken(error)),
        };

        if !self.to_sender.is_empty() {
            client.outbox.push(&Rc::from(self.to_sender.as_bytes()));
            flush_at_end_of_turn(&mut self.to_flush, id, client);
            self.spend(self.to_sender.len());
        }
        if !self.relay.is_empty() {
            // One copy of the chunk, shared by every receiver's queue.
            self.broadcast(Some(id), &Rc::from(self.relay.as_bytes()));
        }
        if at_eof {
            self.half_closed(id);
        }
    }

    /// A client half-closed: it leaves the room at once, and is closed once it has been sent
    /// what it is still owed (its end of the connection is already shut, so nothing is left
    /// unread).
    fn half_closed(&mut self, id: usize) {
        self.leave_room(id);
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        if client.outbox.is_empty() {
            self.close(id, Close::Done);
        } else {
            flush_at_end_of_turn(&mut self.to_flush, id, client);
        }
    }

    /// Queues `chunk` for every client in the room except `except`. Nothing is written here:
    /// each receiver gets everything the turn gave it in one write, in [`Server::flush_turn`].
    fn broadcast(&mut self, except: Option<usize>, chunk: &Rc<[u8]>) {
        for (id, slot) in self.clients.iter_mut().enumerate() {
            let Some(client) = slot else { continue };
            if !client.in_room() || except == Some(id) {
                continue;
            }
            client.outbox.push(chunk);
            flush_at_end_of_turn(&mut self.to_flush, id, client);
        }
        self.spend(chunk.len());
    }

    /// Counts `bytes` just queued for some clients of the room against the room's space, as if
    /// the fullest queue had received them: the next read of the turn must fit in what is left.
    fn spend(&mut self, bytes: usize) {
        self.room_free = self.room_free.min(self.max_queue).saturating_sub(bytes);
    }

    /// Writes, once per client, what this turn queued for it (and what a full socket refused
    /// before, for a client now writable). A client being closed whose queue is now empty has
    /// its write side shut down: our FIN follows the last byte it was owed.
    fn flush_turn(&mut self) {
        let mut next = 0;
        while let Some(&id) = self.to_flush.get(next) {
            next += 1;
            // Empty if the client was closed since it was listed.
            let Some(client) = self.clients[id].as_mut() else {
                continue;
            };
            if !client.flush_due {
                // Listed again after it was closed and its slot reused: already flushed.
                continue;
            }
            client.flush_due = false;
            if let Err(error) = client.outbox.flush(&client.stream) {
                self.close(id, Close::Broken(error));
                continue;
            }
            // Whether a client in the room holds the room back is decided in the review, for
            // all clients at once.
            if let State::Closing { write_shut, .. } = &mut client.state {
                if !*write_shut && client.outbox.is_empty() {
                    match client.stream.shutdown(Shutdown::Write) {
                        Ok(()) => *write_shut = true,
                        Err(error) => {
                            self.close(id, Close::Broken(error));
                            continue;
                        }
                    }
                }
            }
            // What is left in its queue (POLLOUT) and its state (draining: POLLIN) changed.
            self.update_interest(id);
        }
        self.to_flush.clear();
    }

    /// Drops a receiver that held the room back for `--stall-ms`: it leaves the room, and is
    /// sent `* error: too slow, disconnected` after what its socket already holds.
    fn drop_too_slow(&mut self, id: usize) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        warn!(
            "{} held the room back for {:?}: too slow, disconnecting it",
            client.name, self.stall
        );
        client.outbox.drop_all_but_line_begun();
        client.outbox.push(&Rc::from(wire(TOO_SLOW)));
        self.leave_room(id);
    }

    /// Reads and drops what a client being closed still sends, so that closing its socket
    /// finds no unread input (which would make the kernel send a reset, not a FIN).
    fn drain(&mut self, id: usize) {
        let Some(client) = self.clients[id].as_ref() else {
            return;
        };
        match read_some(&client.stream, &mut self.read_buf) {
            // It closed its end too: nothing more can come.
            Ok(0) => self.close(id, Close::Done),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(error) => self.close(id, Close::Broken(error)),
        }
    }

    /// Takes a client out of the room: from now on it is being closed (see [`State::Closing`]).
    /// The others hear of it while the room is small enough (the same rule as for joins: the
    /// number the notice carries is at most the limit). Every way out of the room comes
    /// through here: a half-close, a drop for being too slow, a reset or a failed socket.
    fn leave_room(&mut self, id: usize) {
        let Some(client) = self.clients[id].as_mut() else {
            return;
        };
        if !client.in_room() {
            return;
        }
        client.state = State::Closing {
            write_shut: false,
            turned_away: false,
        };
        client.deadline = Some(Instant::now() + CLOSING_GRACE);
        self.online -= 1;
        if self.online <= self.announce_limit {
            let notice = wire(&left(&client.name, self.online, None));
            self.broadcast(None, &notice.into());
        }
    }

    /// Closes a connection's socket and frees its slot; a client still in the room leaves it
    /// first. Closing never harms another client: a leave notice is only queued, and written
    /// with the rest of the turn's output.
    fn close(&mut self, id: usize, why: Close) {
        self.leave_room(id);
        let Some(client) = self.clients[id].take() else {
            return;
        };
        if let Some(set) = &self.epoll {
            // Deregister before the descriptor closes: the kernel drops a closed socket from
            // the interest list by itself only if no other descriptor shares it (a `dup`, a
            // child after `fork`); otherwise epoll goes on reporting a socket the loop has
            // forgotten. It can only fail if the socket was never registered.
            let _ = set.epoll.delete(&client.stream);
        }
        self.free.push(id);
        if let State::Closing {
            turned_away: true, ..
        } = client.state
        {
            self.turning_away -= 1;
            debug!("{}: closed after its notice ({why:?})", client.name);
            return;
        }
        self.connected -= 1;
        if let Some(ip) = client.peer_ip() {
            self.per_ip.remove(ip);
        }
        match why {
            Close::Done => {}
            Close::GraceOver => debug!(
                "{}: took {CLOSING_GRACE:?} without taking what it was owed; closing",
                client.name
            ),
            Close::HungUp => debug!("{}: hung up with bytes still owed", client.name),
            Close::Broken(error) => debug!("{}: {error}", client.name),
        }
        info!("{} disconnected", client.name);
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
    /// is full or its address holds `--max-per-ip` connections already.
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
            return self.turn_away(stream, addr, &server_full(self.max_clients));
        }
        if !self.per_ip.try_add(addr.ip()) {
            info!("{addr} turned away: too many connections from its address");
            let notice = too_many_from_address(self.per_ip.max());
            return self.turn_away(stream, addr, &notice);
        }
        let client = Client::new(stream, addr, self.max_line, State::InRoom);
        info!("{} connected", client.name);
        // Each join is news for everyone: a room filling up would cost O(n^2) notices.
        let online = self.online + 1;
        let notice = (online <= self.announce_limit).then(|| wire(&joined(&client.name, online)));
        let Some(id) = self.insert(client) else {
            self.per_ip.remove(addr.ip());
            return;
        };
        self.connected += 1;
        self.online = online;
        if let Some(notice) = notice {
            self.broadcast(Some(id), &notice.into());
        }
    }

    /// Refuses a connection with `notice`, and closes it so that the notice arrives (see
    /// [`State::Closing`]).
    fn turn_away(&mut self, stream: TcpStream, addr: SocketAddr, notice: &str) {
        let notice = wire(notice);
        if self.turning_away >= TURNING_AWAY_MAX {
            // Too many at once: one try, and what it sent first is read so that the close is
            // less likely to be a reset; what comes later may still destroy the notice.
            let _ = write_some(&stream, &[IoSlice::new(&notice)]);
            let _ = read_some(&stream, &mut self.read_buf);
            return;
        }
        let closing = State::Closing {
            write_shut: false,
            turned_away: true,
        };
        let mut client = Client::new(stream, addr, self.max_line, closing);
        client.outbox.push(&Rc::from(notice));
        client.deadline = Some(Instant::now() + CLOSING_GRACE);
        let Some(id) = self.insert(client) else {
            return;
        };
        self.turning_away += 1;
        if let Some(client) = self.clients[id].as_mut() {
            flush_at_end_of_turn(&mut self.to_flush, id, client);
        }
    }

    /// Puts `client` in a free slot and returns its id; with epoll, adds it to the kernel's
    /// interest list, or returns `None` (and drops it) if that fails.
    fn insert(&mut self, mut client: Client) -> Option<usize> {
        let id = self.free.last().copied().unwrap_or(self.clients.len());
        if let Some(set) = self.epoll.as_mut() {
            let interest = client.interest(self.reading);
            let event = EpollEvent::new(epoll_flags(interest), id as u64);
            if let Err(errno) = set.epoll.add(&client.stream, event) {
                warn!(
                    "{}: cannot add the socket to epoll: {errno}; closing it",
                    client.name
                );
                return None;
            }
            if client.in_room() && !self.reading {
                set.muted.push(id);
            }
            client.registered = interest;
        }
        match self.free.pop() {
            Some(id) => self.clients[id] = Some(client),
            None => self.clients.push(Some(client)),
        }
        Some(id)
    }
}

impl Client {
    fn new(stream: TcpStream, addr: SocketAddr, max_line: usize, state: State) -> Client {
        Client {
            stream,
            name: addr.to_string().into_boxed_str(),
            framer: LineFramer::new(max_line),
            outbox: Outbox::default(),
            state,
            deadline: None,
            flush_due: false,
            registered: PollFlags::empty(),
        }
    }

    fn in_room(&self) -> bool {
        matches!(self.state, State::InRoom)
    }

    /// The peer's address, read back from the name, which is that address as Rust prints it
    /// (and parses): kept once, not twice, in every client's slot.
    fn peer_ip(&self) -> Option<IpAddr> {
        self.name.parse::<SocketAddr>().ok().map(|addr| addr.ip())
    }

    /// What to ask `poll` about this client. `reading`: the room has space for a read.
    /// `POLLOUT` only while something waits to be written: an idle socket is always writable
    /// and would wake the loop on every turn.
    fn interest(&self, reading: bool) -> PollFlags {
        let mut events = PollFlags::empty();
        let wants_input = match self.state {
            State::InRoom => reading,
            // Drained only once everything is sent: until then it is not read at all.
            State::Closing { write_shut, .. } => write_shut,
        };
        if wants_input {
            events |= PollFlags::POLLIN;
        }
        if !self.outbox.is_empty() {
            events |= PollFlags::POLLOUT;
        }
        events
    }
}

/// The events `poll` reported for `fd`. Flags nix does not know: try the I/O, which will tell
/// what happened.
fn reported(fd: &PollFd<'_>) -> PollFlags {
    fd.revents()
        .unwrap_or(PollFlags::POLLIN | PollFlags::POLLOUT)
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

/// Lists `client` (at `id`) for a write at the end of the turn, once however often it is
/// given bytes during the turn.
fn flush_at_end_of_turn(to_flush: &mut Vec<usize>, id: usize, client: &mut Client) {
    if !client.flush_due {
        client.flush_due = true;
        to_flush.push(id);
    }
}

/// Bytes for one client that its socket has not taken yet.
///
/// A relayed chunk is formatted once and shared (`Rc`) by every receiver's queue, so a burst
/// is never copied once per receiver, not even for receivers that fall behind. The queue
/// holds only pointers between the writes at the end of each turn, and releases even those
/// when it drains, so an idle client holds no buffer.
#[derive(Debug, Default)]
struct Outbox {
    /// The oldest chunk not fully written yet. Kept apart from `later` because a client that
    /// keeps up usually has one chunk at a time, and then needs no allocation at all. That is
    /// worth the extra field: with every chunk in the queue, each broadcast allocated and freed
    /// a small buffer per receiver, and the allocator kept the freed ones.
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

    /// True if this queue is too full to take `read` more bytes under `max_queue`. An empty
    /// queue takes any one read, however large: otherwise a read bigger than `--max-queue` (a
    /// small queue, a long line held by the framer) could never be made, and the room would stop.
    fn too_full_for(&self, read: usize, max_queue: usize) -> bool {
        !self.is_empty() && max_queue.saturating_sub(self.len) < read
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

    /// Forgets everything queued except the rest of a line whose start the socket has already
    /// taken, so that whatever is queued next starts on a line of its own.
    fn drop_all_but_line_begun(&mut self) {
        let begun = match &self.front {
            Some(front) if self.written > 0 && front[self.written - 1] != b'\n' => {
                let unsent = &front[self.written..];
                let end = unsent
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .map_or(unsent.len(), |newline| newline + 1);
                Some(Rc::<[u8]>::from(&unsent[..end]))
            }
            _ => None,
        };
        *self = Outbox::default();
        if let Some(rest) = begun {
            self.push(&rest);
        }
    }

    /// Writes queued chunks, as many per system call as [`WRITE_SLICES`] allows, until the
    /// socket is full or the queue is empty. Never blocks.
    fn flush(&mut self, stream: &TcpStream) -> io::Result<()> {
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
fn write_some(mut stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match stream.write_vectored(slices) {
            Ok(n) => return Ok(n),
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
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

    fn chunk(bytes: &[u8]) -> Rc<[u8]> {
        Rc::from(bytes)
    }

    #[test]
    fn an_empty_queue_takes_any_read_and_a_full_one_only_what_fits() {
        let mut outbox = Outbox::default();
        assert!(!outbox.too_full_for(usize::MAX, 10), "empty: any one read");
        outbox.push(&chunk(b"1234"));
        assert!(!outbox.too_full_for(6, 10));
        assert!(outbox.too_full_for(7, 10));
        outbox.push(&chunk(b"1234567890"));
        assert!(outbox.too_full_for(1, 10), "past the limit: nothing fits");
    }

    #[test]
    fn a_dropped_queue_keeps_only_the_rest_of_a_line_begun() {
        let mut outbox = Outbox::default();
        outbox.push(&chunk(b"a says: one\r\na says: two\r\n"));
        outbox.push(&chunk(b"a says: three\r\n"));
        // The socket took "a says: one\r\na sa": the rest of that line must follow.
        outbox.consume(17);
        outbox.drop_all_but_line_begun();
        assert_eq!(outbox.len(), b"ys: two\r\n".len());
        assert_eq!(outbox.front.as_deref(), Some(&b"ys: two\r\n"[..]));

        // Taken up to a line's end: nothing is kept.
        let mut outbox = Outbox::default();
        outbox.push(&chunk(b"a says: one\r\na says: two\r\n"));
        outbox.consume(13);
        outbox.drop_all_but_line_begun();
        assert!(outbox.is_empty());
    }
}

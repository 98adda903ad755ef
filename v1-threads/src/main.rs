//! # v1-threads: one thread per client, blocking I/O
//!
//! Run it with `cargo run -p v1-threads`, then type into `telnet 127.0.0.1 8081` (or
//! `nc 127.0.0.1 8081`) from a few terminals. The server logs every line and echoes it to its
//! sender as `127.0.0.1:52344 says: hi`; nobody else sees it (the chat room starts with v3).
//!
//! ## The model
//!
//! Every client gets its own operating-system thread, which blocks in `read` until that client
//! sends something and in `write` until the client takes the reply. No code here decides whom to
//! serve next: the kernel's scheduler does the multiplexing, by waking whichever thread's socket
//! has data.
//!
//! ```text
//!  main thread                      one thread per client, named "client-127.0.0.1:52344"
//!  -----------                      ------------------------------------------------------
//!  accept() --> seat free? --yes--> spawn --> loop: read() -> framer -> log + echo -> write()
//!     ^             |                         until EOF or error; then free the seat, close
//!     |             no: notice, shut down writing, spawn a short drain thread (see below)
//!     +-------------+
//! ```
//!
//! The only state the threads share is [`Clients`], who is connected and how many from each
//! address, behind a `Mutex`: the accept loop takes the lock to check `--max-clients` and
//! `--max-per-ip` and claim a seat, a client thread takes it once more to give the seat back.
//! The echo itself touches nothing shared.
//!
//! ## What it costs
//!
//! - **One thread per client.** Each thread reserves [`CLIENT_STACK_SIZE`] of address space, of
//!   which the kernel backs only the pages it touches. `docs/benchmarks/results.md` measures,
//!   per idle client: 13.8 KB of resident memory in the server (its stack pages, std's signal
//!   stack, thread-locals), 31.8 KB of kernel memory (both ends of the loopback connection,
//!   and this thread's kernel stack and task: compare v2's 8.1 KB, which has the same two
//!   sockets and no thread), and 4.0 memory mappings. The mappings set the ceiling: Linux
//!   gives a process at most `vm.max_map_count` of them (65 530 by default), so about 16 000
//!   client threads, which comes long before memory runs out or `ulimit -u` applies. A refused
//!   spawn does not end the server: that one client is turned away.
//! - **Context switches.** Every wake-up of a client thread is a switch by the kernel's
//!   scheduler, which a single-threaded loop avoids. They are fewer than one might fear: in a
//!   burst a woken thread finds many lines waiting and echoes them in one `write`, so
//!   `results.md` counts 0.006 switches per delivery; in paced chat, where each line wakes its
//!   thread alone, v1 switches no more often per line than v2's loop does. v1 does spend more
//!   server CPU per delivery than v2 in the burst (`results.md`: 193 against 119 ns), but at
//!   that rate of switching the switches themselves cannot explain the difference, and these
//!   numbers do not say where it goes; what they do show plainly is the memory and the
//!   ceiling above.
//! - **The lock.** Taking a free `Mutex` is an atomic instruction, some tens of nanoseconds.
//!   When another thread holds it, the loser sleeps in the kernel (`futex`) and is woken later:
//!   a system call and a context switch, microseconds. Here the lock is held for one seat count
//!   and one count per address, twice per connection and never per line, so it never shows up
//!   in a measurement. A room could be built on threads too (every client would need an
//!   outbound queue and a writer of its own, so that no thread blocks on another's socket: v4
//!   does exactly that with tasks); v2 and v3 take the other road, one thread for everyone.
//! - **The blocking write is the backpressure.** A client that sends faster than it reads its
//!   echoes fills its socket buffers until the echo `write` blocks. While its thread waits
//!   there it does not read, so the client's next lines stay in the kernel; once that buffer
//!   is full TCP stops the client's own `send`. The client goes at the speed it reads,
//!   nothing is dropped, and one that never reads just waits, holding its seat and its
//!   thread, while every other client goes on being served. v1 needs no output queue and no
//!   `--max-queue` for this; v2, with one thread for everyone, cannot afford to block and
//!   builds the same backpressure from an outbox and `poll`.
//!
//! ## Turning a connection away
//!
//! A connection beyond `--max-clients`, or from an address that already holds `--max-per-ip`
//! (127.0.0.1 and ::1 are exempt), gets one notice and is closed, before any client thread
//! exists. Closing at once would often destroy the notice: a client that spoke first (telnet
//! users do) has input the server never read, and closing a socket with unread input makes the
//! kernel send a reset, which throws away what the client had not read yet. So the write side
//! is shut down after the notice, and a short-lived thread reads and drops what the client
//! still sends until it closes or [`CLOSE_DRAIN`] passes; the accept loop never waits for it.
//! At most [`MAX_DRAINING`] such threads run at once, so refused connections cannot cost the
//! threads that `--max-clients` bounds.
//!
//! ## What changed since the Python original
//!
//! The same model. A client that closed its connection left the original spinning forever on
//! `recv` returning nothing: here end of file ends the thread, after the last line (even one
//! without `\n`) has been delivered. Beyond that fix, v1 gains what every version now shares:
//! lines framed on `\n` whatever the `recv` boundaries, overlong lines refused without being
//! buffered, control characters stripped before anything is logged or echoed, `--max-clients`
//! to bound the number of threads, and `--max-per-ip` so that one host cannot take them all.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use chat_protocol::cli::{addr_arg, ConnectionLimits, V1_ADDR_DEFAULT};
use chat_protocol::framing::{Frame, LineFramer};
use chat_protocol::limits::PerIp;
use chat_protocol::message::{
    line_too_long, push_chat_line, server_full, too_many_from_address, wire, CRLF,
};
use chat_protocol::startup::{
    bind_listener, exit_with, init_logging, log_listening, raise_fd_limit,
};
use clap::Parser;
use tracing::{debug, info, warn};

/// The name this server logs itself under (`v1-threads listening on ...`).
const SERVER_NAME: &str = "v1-threads";

/// Address space reserved for each client thread's stack. std's default is 2 MiB, sized for
/// arbitrary code; a client thread here needs its read buffer and a few shallow calls. 64 KiB
/// keeps 10,000 idle clients within 640 MiB of address space instead of 20 GiB, which matters
/// under strict overcommit or a `ulimit -v`, and still leaves ample headroom.
const CLIENT_STACK_SIZE: usize = 64 * 1024;

/// Bytes asked of the kernel per `read`. A few lines' worth of typing, small enough to live on
/// the small stack. Each read's echoes go out in one `write`, so a burst costs one system call
/// per read, not one per line.
const READ_BUFFER_SIZE: usize = 4 * 1024;

/// How long the accept loop pauses after an accept error. Out of descriptors (`EMFILE`) is the
/// usual one; retrying at once would spin a core without freeing any, while a short pause lets
/// clients disconnect and give descriptors back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a turned-away connection is drained after its last notice before it is closed.
/// Closing a socket while input from the client is still unread makes the kernel answer with
/// a reset instead of an orderly close, and a reset destroys whatever the client has not read
/// yet: the notice. A client that reads sees the notice and the end of the stream within a
/// round trip and closes (telnet and nc do), which ends the drain long before this; one that
/// goes on sending is closed anyway once its notice has had a second to arrive, as v4 does.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Most turned-away connections drained at once, each by a short-lived thread of its own so
/// that the accept loop never waits. Bounded because `--max-clients` exists to bound the
/// threads: without this, a storm of refused connections would cost a thread each. Beyond
/// it, a connection is closed at once after its notice, as if no drain existed (the notice
/// usually still arrives; a reset may destroy it).
const MAX_DRAINING: usize = 64;

/// Bytes read per `read` while draining a turned-away connection: they are thrown away, so a
/// small buffer on the drain thread's small stack will do.
const DRAIN_BUFFER_SIZE: usize = 1024;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "sock-chat v1: one thread per client, blocking I/O. Logs each line and echoes it to its sender."
)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT (port 0 picks a free one).
    #[arg(long, value_name = "ADDR", default_value = V1_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    #[command(flatten)]
    limits: ConnectionLimits,
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
    log_listening(SERVER_NAME, &listener)?;
    let limits = &cli.limits;
    let clients = Arc::new(Clients::new(limits.max_clients, limits.max_per_ip));
    accept_loop(&listener, &clients, limits.max_line)
}

/// Accepts connections forever, handing each one to a thread of its own.
fn accept_loop(listener: &TcpListener, clients: &Arc<Clients>, max_line: usize) -> ! {
    let draining = Arc::new(Draining::default());
    loop {
        let (stream, addr) = match listener.accept() {
            Ok(accepted) => accepted,
            // A client that gave up while waiting in the backlog, or a signal: nothing is
            // wrong with the server, so take the next one at once.
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::Interrupted
                ) =>
            {
                debug!("accept: {error}");
                continue;
            }
            Err(error) => {
                warn!("accept failed: {error}; retrying in {ACCEPT_BACKOFF:?}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        // Chat lines are small and a person is waiting for each: send them at once instead of
        // letting Nagle's algorithm hold them back to batch with bytes that are not coming.
        if let Err(error) = stream.set_nodelay(true) {
            debug!("{addr}: cannot set TCP_NODELAY: {error}");
        }
        // Refused here, before a client thread exists: a flood beyond --max-clients or
        // --max-per-ip costs no client threads.
        let seat = match clients.join(addr) {
            Ok(seat) => seat,
            Err(notice) => {
                warn!("{addr} turned away: {notice}");
                turn_away(stream, addr, &notice, &draining);
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .name(format!("client-{addr}"))
            .stack_size(CLIENT_STACK_SIZE)
            .spawn(move || serve_client(stream, addr, seat, max_line));
        // When the kernel will not give us another thread (`ulimit -u`, `pids.max`, memory),
        // the closure is dropped with the stream and seat in it: that one client is closed and
        // its seat freed, and the server goes on serving everyone else.
        if let Err(error) = spawned {
            warn!("{addr} refused: cannot start a thread for it: {error}");
        }
        // The JoinHandle is dropped: the thread detaches, and ends on its own when its client
        // goes away. Nothing ever needs to wait for it.
    }
}

/// Tells a refused connection why, and closes it so that the notice arrives (SPEC 4): the
/// write side is shut down after the notice, and a thread of its own reads and drops what the
/// client still sends until it closes or [`CLOSE_DRAIN`] passes, so that the close never
/// leaves input unread.
fn turn_away(stream: TcpStream, addr: SocketAddr, notice: &str, draining: &Arc<Draining>) {
    // A fresh socket's send buffer is empty, so this short write cannot block the loop.
    let _ = (&stream).write_all(&wire(notice));
    // The client reads the notice, then end of file.
    let _ = stream.shutdown(Shutdown::Write);
    let Some(slot) = draining.claim() else {
        // No drain to spare: at least read, without waiting, what already came (telnet, for
        // one, speaks first), which is what most often turns the close into a reset.
        if stream.set_nonblocking(true).is_ok() {
            let _ = (&stream).read(&mut [0u8; DRAIN_BUFFER_SIZE]);
        }
        return;
    };
    let spawned = thread::Builder::new()
        .name(format!("drain-{addr}"))
        .stack_size(CLIENT_STACK_SIZE)
        .spawn(move || {
            drain(&stream);
            drop(slot);
        });
    // Without a thread, the closure is dropped: the socket closes at once, the slot is freed.
    if let Err(error) = spawned {
        debug!("{addr}: cannot start a thread to drain it: {error}");
    }
}

/// Reads and drops what a turned-away client sends until it closes, fails, or
/// [`CLOSE_DRAIN`] has passed.
fn drain(mut stream: &TcpStream) {
    let until = Instant::now() + CLOSE_DRAIN;
    let mut buffer = [0u8; DRAIN_BUFFER_SIZE];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        // A zero timeout would mean "wait forever" to the kernel; std refuses it.
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // Timed out, or the connection failed: either way, nothing more to wait for.
            Err(_) => return,
        }
    }
}

/// The body of one client's thread: read, frame, log and echo until the client goes away.
fn serve_client(stream: TcpStream, addr: SocketAddr, seat: Seat, max_line: usize) {
    info!("{addr} connected");
    match echo_until_closed(&stream, addr, max_line) {
        Ok(()) => {}
        Err(error) => debug!("{addr}: {error}"),
    }
    drop(seat);
    drop(stream);
    info!("{addr} disconnected");
}

/// Serves one connection until end of file (`Ok`) or a read or write error (`Err`).
fn echo_until_closed(
    mut stream: &TcpStream,
    addr: SocketAddr,
    max_line: usize,
) -> std::io::Result<()> {
    let name = addr.to_string();
    let mut framer = LineFramer::new(max_line);
    let mut buffer = [0u8; READ_BUFFER_SIZE];
    // Everything one read produced, sent back in one write. Reused across reads.
    let mut out = String::new();
    loop {
        let read = match stream.read(&mut buffer) {
            Ok(read) => read,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if read == 0 {
            // End of file: the client closed or half-closed. The Python original kept calling
            // `recv` here, getting nothing back forever; this thread delivers the last line
            // and ends.
            framer.finish(|frame| echo_frame(frame, &name, max_line, &mut out));
            return stream.write_all(out.as_bytes());
        }
        framer.push(&buffer[..read], |frame| {
            echo_frame(frame, &name, max_line, &mut out)
        });
        if !out.is_empty() {
            // Blocks while the client is not reading: this thread waits, no other does.
            stream.write_all(out.as_bytes())?;
            out.clear();
        }
    }
}

/// Appends the answer to one frame to `out`: the echo of a line (after logging it), or the
/// too-long error. A line that sanitising leaves empty gets nothing.
fn echo_frame(frame: Frame<'_>, name: &str, max_line: usize, out: &mut String) {
    match frame {
        Frame::Line(raw) => {
            let start = out.len();
            // Sanitises and appends `NAME says: TEXT\r\n`.
            if push_chat_line(out, name, raw) {
                info!("{}", &out[start..out.len() - CRLF.len()]);
            }
        }
        Frame::TooLong => {
            out.push_str(&line_too_long(max_line));
            out.push_str(CRLF);
        }
    }
}

/// How many are connected, and from where: the one piece of state all threads share, and so
/// the one lock. Counts are all an echo server needs; a room (v3) keeps an entry per client.
#[derive(Debug)]
struct Clients {
    /// `--max-clients`.
    max: usize,
    online: Mutex<Online>,
}

/// What [`Clients`] guards.
#[derive(Debug)]
struct Online {
    /// Seats taken: what `--max-clients` limits.
    seated: usize,
    /// Connections per address, for `--max-per-ip`.
    per_ip: PerIp,
}

impl Clients {
    fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            online: Mutex::new(Online {
                seated: 0,
                per_ip: PerIp::new(max_per_ip),
            }),
        }
    }

    /// Claims a seat for `addr`, or returns the notice that refuses it: all `max` seats are
    /// taken, or its address holds `--max-per-ip` already. Checking and claiming under one lock
    /// is what makes the limits exact: two threads cannot both take the last seat.
    fn join(self: &Arc<Self>, addr: SocketAddr) -> Result<Seat, String> {
        let mut online = self.lock();
        if online.seated >= self.max {
            return Err(server_full(self.max));
        }
        if !online.per_ip.try_add(addr.ip()) {
            return Err(too_many_from_address(online.per_ip.max()));
        }
        online.seated += 1;
        Ok(Seat {
            clients: Arc::clone(self),
            addr,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Online> {
        // Nothing that runs under the lock can panic but an allocation failure, which aborts;
        // were a thread to panic there anyway, a seat miscounted by one is better than every
        // later connection panicking on the poison.
        self.online.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A claimed place in [`Clients`]; dropping it gives the place back, whichever way the client's
/// thread ends (end of file, error, or a spawn that never happened).
#[derive(Debug)]
struct Seat {
    clients: Arc<Clients>,
    addr: SocketAddr,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut online = self.clients.lock();
        online.seated -= 1;
        online.per_ip.remove(self.addr.ip());
    }
}

/// How many turned-away connections are being drained now; see [`MAX_DRAINING`]. Only the
/// accept loop claims, and each drain thread gives its claim back, so a counter will do.
#[derive(Debug, Default)]
struct Draining(AtomicUsize);

impl Draining {
    /// Claims one of the [`MAX_DRAINING`] drains, or `None` when all are running.
    fn claim(self: &Arc<Self>) -> Option<DrainSlot> {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |running| {
                (running < MAX_DRAINING).then_some(running + 1)
            })
            .ok()
            .map(|_| DrainSlot(Arc::clone(self)))
    }
}

/// A claimed drain; dropping it gives the claim back, whether the drain ran or its thread
/// never started.
#[derive(Debug)]
struct DrainSlot(Arc<Draining>);

impl Drop for DrainSlot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

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
//!     |             no: "* server full", close
//!     +-------------+
//! ```
//!
//! The only state the threads share is [`Clients`], the set of who is connected, behind a
//! `Mutex`: the accept loop takes the lock to check `--max-clients` and claim a seat, a client
//! thread takes it once more to give the seat back. The echo itself touches nothing shared.
//!
//! ## What it costs
//!
//! - **One stack per client.** Each thread reserves [`CLIENT_STACK_SIZE`] of address space, of
//!   which the kernel backs only the pages it touches: about 20-25 KiB of resident memory per
//!   connected client (its stack, std's signal stack, thread-locals), plus a kernel task with
//!   its own kernel stack. Thousands of idle clients fit; a hundred thousand do not, and the
//!   kernel's thread limits (`ulimit -u`, a container's `pids.max`) usually bite before the
//!   memory does. A refused spawn does not end the server: that one client is turned away.
//! - **One context switch per wake-up.** Each line costs the kernel a switch into the client's
//!   thread and back, a few microseconds that a single-threaded loop (v2) does not pay. With
//!   thousands of busy clients the CPU spends a real share of its time switching, and every
//!   thread's stack and state compete for the same caches.
//! - **The lock.** Taking a free `Mutex` is an atomic instruction, some tens of nanoseconds.
//!   When another thread holds it, the loser sleeps in the kernel (`futex`) and is woken later:
//!   a system call and a context switch, microseconds. Here the lock is held for one hash-set
//!   insert or remove, twice per connection and never per line, so it never shows up in a
//!   measurement. It stops scaling where the state grows: a room (v3) would have every thread
//!   take the lock for every line to reach the other clients' sockets, so the threads queue
//!   behind one another, and one blocking `write` to a slow reader made under the lock would
//!   stall the whole room. That is why v2 and v3 leave threads for a single `poll` loop.
//! - **Blocking writes stall only their own client.** A client that sends but never reads fills
//!   its socket buffers until the echo `write` blocks; that client's thread waits (holding its
//!   seat), and every other client goes on being served. v1 needs no output queue and no
//!   `--max-queue`; v2, with one thread for everyone, cannot afford to block and needs both.
//!
//! ## What changed since the Python original
//!
//! The same model. A client that closed its connection left the original spinning forever on
//! `recv` returning nothing: here end of file ends the thread, after the last line (even one
//! without `\n`) has been delivered. Beyond that fix, v1 gains what every version now shares:
//! lines framed on `\n` whatever the `recv` boundaries, overlong lines refused without being
//! buffered, control characters stripped before anything is logged or echoed, and
//! `--max-clients` to bound the number of threads.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use chat_protocol::cli::{addr_arg, ConnectionLimits, V1_ADDR_DEFAULT};
use chat_protocol::framing::{Frame, LineFramer};
use chat_protocol::message::{line_too_long, push_chat_line, server_full, wire, CRLF};
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
    let clients = Arc::new(Clients::new(cli.limits.max_clients));
    accept_loop(&listener, &clients, cli.limits.max_line)
}

/// Accepts connections forever, handing each one to a thread of its own.
fn accept_loop(listener: &TcpListener, clients: &Arc<Clients>, max_line: usize) -> ! {
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
        // Refused here, before a thread exists: a flood beyond --max-clients costs no threads.
        let Some(seat) = clients.join(addr) else {
            warn!("{addr} refused: server full ({} clients)", clients.max);
            // A fresh socket's send buffer is empty, so this short write cannot block the loop.
            let _ = (&stream).write_all(&wire(&server_full(clients.max)));
            // Closing a socket with unread input makes the kernel send a reset, which can
            // destroy the notice before the client reads it (telnet speaks first): read, without
            // waiting, whatever already came.
            if stream.set_nonblocking(true).is_ok() {
                let _ = (&stream).read(&mut [0u8; 1024]);
            }
            continue;
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

/// The body of one client's thread: read, frame, log and echo until the client goes away.
fn serve_client(stream: TcpStream, addr: SocketAddr, seat: Seat, max_line: usize) {
    info!("{addr} connected");
    match chat(&stream, addr, max_line) {
        Ok(()) => {}
        Err(error) => debug!("{addr}: {error}"),
    }
    // Give the seat back while the socket is still open. Until it closes, no new connection can
    // arrive from this same address, so the set never holds one address for two clients.
    drop(seat);
    drop(stream);
    info!("{addr} disconnected");
}

/// Serves one connection until end of file (`Ok`) or a read or write error (`Err`).
fn chat(mut stream: &TcpStream, addr: SocketAddr, max_line: usize) -> std::io::Result<()> {
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
            framer.finish(|frame| reply(frame, &name, max_line, &mut out));
            return stream.write_all(out.as_bytes());
        }
        framer.push(&buffer[..read], |frame| {
            reply(frame, &name, max_line, &mut out)
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
fn reply(frame: Frame<'_>, name: &str, max_line: usize, out: &mut String) {
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

/// Who is connected: the one piece of state all threads share, and so the one lock.
///
/// A set of addresses rather than a bare count, because it says who holds each seat, and it is
/// what a chat room would grow from (v3 keeps one entry per client).
#[derive(Debug)]
struct Clients {
    /// `--max-clients`.
    max: usize,
    online: Mutex<HashSet<SocketAddr>>,
}

impl Clients {
    fn new(max: usize) -> Self {
        Self {
            max,
            online: Mutex::new(HashSet::new()),
        }
    }

    /// Claims a seat for `addr`, or `None` when all `max` are taken. Checking and claiming under
    /// one lock is what makes the limit exact: two threads cannot both take the last seat.
    fn join(self: &Arc<Self>, addr: SocketAddr) -> Option<Seat> {
        let mut online = self.lock();
        if online.len() >= self.max {
            return None;
        }
        online.insert(addr);
        Some(Seat {
            clients: Arc::clone(self),
            addr,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<SocketAddr>> {
        // A thread that panicked while holding the lock cannot have left the set half-changed
        // (every change is a single insert or remove), so its poison is safe to ignore.
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
        self.clients.lock().remove(&self.addr);
    }
}

//! What every server does before its first `accept`, and how it fails if it cannot.
//!
//! Not part of any lesson, and the same for all four versions: logging, the descriptor limit,
//! the listening socket and the one line that tells people (and tests) where it listens.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};

use anyhow::Context;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use socket2::{Domain, Protocol, Socket, Type};
use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter};

/// How many connections may wait to be accepted. std's `TcpListener::bind` uses 128; a burst of
/// thousands of connects then overflows the queue and clients wait seconds on SYN retries.
/// On loopback a connect completes before the server accepts it, so a storm fills the queue as
/// fast as the clients can connect, and a full queue drops SYNs that are retried only a second
/// later. 4096 is Linux's default `somaxconn`, which caps it; `docs/benchmarks/results.md`
/// times a 10 000-client storm against it ("10000 clients accepted in").
pub const LISTEN_BACKLOG: i32 = 4096;

/// Lines the log writer may hold while the console (or a pipe nobody reads) is slow; beyond
/// this, log lines are dropped rather than stalling the server.
const LOG_LINES_BUFFERED: usize = 64 * 1024;

/// Keeps the log writer alive; logs still buffered are flushed when it is dropped at exit.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Sets up `tracing`: `RUST_LOG` wins, the default is `info`.
///
/// Log lines are handed to a writer thread instead of being written in place, so a slow
/// terminal, or a pipe that its reader stopped reading, can never block the thread that serves
/// the clients. The `listening on` line is always logged, even under `RUST_LOG=warn`, because
/// tools (the tests, `chat-bench`) find the port in it.
pub fn init_logging() -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .lossy(true)
        .finish(std::io::stdout());
    let always_listening: Directive = format!("{}=info", module_path!())
        .parse()
        .expect("a valid directive");
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy()
        .add_directive(always_listening);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    guard
}

/// Raises the soft limit on open descriptors to the hard limit: one client is one descriptor,
/// and the usual soft limit of 1024 would cap a server below its `--max-clients`. Returns the
/// limit now in force, or `None` if it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!("raised the open-file limit from {soft} to {hard}");
                Some(hard)
            }
            Err(error) => {
                tracing::warn!("cannot raise the open-file limit from {soft}: {error}");
                Some(soft)
            }
        },
        Ok((soft, _)) => Some(soft),
        Err(error) => {
            tracing::warn!("cannot read the open-file limit: {error}");
            None
        }
    }
}

/// Binds a listening socket with a [`LISTEN_BACKLOG`]-deep accept queue. `SO_REUSEADDR` lets a
/// restarted server bind its port while old connections linger in `TIME_WAIT`.
pub fn bind_listener(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    bind().with_context(|| format!("cannot listen on {addr}"))
}

/// Logs the one `<server> listening on <ADDR>` line, with the port the kernel chose for port 0.
pub fn log_listening(server: &str, listener: &TcpListener) -> anyhow::Result<SocketAddr> {
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    tracing::info!("{server} listening on {addr}");
    Ok(addr)
}

/// Ends the process after a start-up error: one sentence on stderr, exit status 1, no backtrace.
pub fn exit_with(error: &anyhow::Error) -> ! {
    eprintln!("error: {error:#}");
    std::process::exit(1)
}

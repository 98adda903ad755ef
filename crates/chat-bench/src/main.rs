//! # chat-bench: the four servers side by side, measured
//!
//! ```text
//! cargo build --release --workspace
//! target/release/chat-bench compare            # about 15 minutes; --quick: about 2
//! target/release/chat-bench compare --only crowd   # poll against epoll as silent clients grow
//! target/release/chat-bench run --addr 127.0.0.1:8080 --mode broadcast \
//!     --clients 100 --senders 10 --messages 20000     # any running line-based chat server
//! target/release/chat-bench soak --server v4-async --minutes 10   # PASS or FAIL
//! target/release/chat-bench run --addr 127.0.0.1:8443 --tls --fingerprint sha256:...  # over TLS
//! target/release/chat-bench run --addr 127.0.0.1:8090 --ws   # v4's --web-addr, over WebSocket
//! ```
//!
//! `compare` starts each server itself (port 0, `RUST_LOG=warn`), drives real TCP clients at
//! it, and writes `bench-results/<time>/`: `results.md` (the README's table with numbers),
//! `results.json` (every run) and SVG charts. `run` measures one workload against a server
//! that is already running, ours or anyone's (`--hello` for one that asks for a name first;
//! `--tls` for a TLS listener, for measuring only: see [`tls`]; `--ws` for v4's WebSocket, see
//! [`ws`]).
//! `soak` runs one server for minutes under well-behaved, flooding, non-reading and churning
//! clients at once, and judges it: nothing lost, no well-behaved client evicted, memory and
//! descriptors flat (see [`soak`]).
//!
//! ## What it measures
//!
//! - **Deliveries per second**: a line received by one client is one delivery; a line sent
//!   into a room of N clients makes N-1 deliveries, an echo makes one, back to its sender (v1
//!   and v2; in `compare`'s bursts every client of an echo server sends, so that every
//!   connection is busy, as every receiver in a room is). The clock runs from the first line
//!   sent to the last expected line received.
//! - **Latency**: every line carries a token with its send time (see [`token`]); receivers
//!   record now minus that time in HDR histograms, one per client, merged at the end.
//! - **The server's cost**, read from `/proc/PID` (see [`process`]): CPU seconds while the clock
//!   ran (and so CPU per delivery), peak RSS, threads, resident memory per connected client.
//! - **Connection storm**: the time from the first `connect` until every client is proven in.
//! - **The crowd** (poll against epoll, SPEC 12): N clients of whom 10 talk at a steady pace,
//!   N growing to what the descriptor limit allows; latency and server CPU per delivery show
//!   what each turn of a loop pays for the silent ones.
//!
//! ## Why the numbers can be trusted
//!
//! - **Nothing is assumed delivered.** Every (sender, receiver) pair has a ledger: lost,
//!   duplicated, out-of-order and unexpected lines are counted, and any of them, a
//!   disconnection or a stall prints a loud warning; throughput counts distinct lines only.
//! - **Everyone is in before the clock starts.** A probe line must reach every client (a room
//!   relays client 0's probe to all others; an echo server returns each client's own), so
//!   slow accepts and join notices are over before the first measured line.
//! - **No coordinated omission.** The paced workload is open-loop: each line has a send time
//!   fixed in advance and its latency is measured from that time, so a stall shows as latency
//!   for every line it delayed. The pacer's own lateness is reported beside it.
//! - **Burst latency measures the server, not the kernel.** Burst senders keep at most
//!   `--window` lines ahead of a receiver, so lines wait in the server's queues, not in
//!   megabytes of socket buffer (without a window, latency is the whole run's length). Under a
//!   burst, latency is what is in flight divided by the rate (Little's law); the default
//!   window keeps at most 500 000 deliveries in flight, and p99 against p50 shows how evenly
//!   the server serves its clients.
//! - **The generator is as cheap as it can be made**, and says what it costs. A multi-thread
//!   tokio runtime, one 64 KiB buffer per client, `memchr` from token to token, word-at-a-time
//!   hex parsing, equal latencies recorded as one histogram entry, no allocation and one clock
//!   read per `read` call, counters touched only by their own task; senders write 64 lines per
//!   system call. It spends about 40 ns of CPU per delivery, kernel included, so on a 2-core
//!   machine that it shares with the server it tops out around 25-30 M deliveries/s: a server
//!   measured near that is held back by the machine, and its CPU per delivery shows how much
//!   headroom it has.
//! - **Each run gets a fresh server**, so its peak RSS is that run's, and repeats interleave the
//!   versions, so a noisy moment on a shared machine does not hit one version only.
//! - `RLIMIT_NOFILE` is raised to the hard limit, and a run that needs more descriptors than
//!   that says so before it starts.
//!
//! ## What it cannot tell apart
//!
//! Server and generator share one machine. On loopback the kernel does a packet's receiving
//! work in the sender's system call, so a server's CPU per delivery includes part of its
//! clients' TCP work (and the generator's includes the server's ACKs). And a paced line's
//! latency includes how late the pacer's thread woke up, which on a small virtual machine can
//! reach a millisecond: the pacer's lateness is reported next to every paced result.

// The modules, from the bottom up: each one uses only modules above it in this list, so it can
// be read knowing only those.
//
//   units, token, tls, ws, process,        numbers in words, the token, TLS, WebSocket, /proc,
//   progress                               the display
//   tally                                  one receiver's ledger and latencies
//   load                                   a workload against a server: connect, send, count
//   report                                 one run in words (`run`'s summary, its warning)
//   servers                                the four servers: start, find, stop
//   plans                                  compare's workloads and their sizes
//   results                                a comparison's records, medians, machine, folder
//   charts                                 SVG charts of results (and of a soak)
//   markdown                               results.md and the tables
//   compare, soak                          the two commands that start servers themselves
mod charts;
mod cluster;
mod compare;
mod load;
mod markdown;
mod plans;
mod process;
mod progress;
mod report;
mod results;
mod servers;
mod soak;
mod tally;
mod tls;
mod token;
mod units;
mod ws;

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use chat_protocol::cli::addr_arg;
use clap::{Parser, Subcommand};

use crate::load::{Mode, Target, Workload};
use crate::process::Process;
use crate::progress::Progress;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Measures sock-chat's four servers side by side, or any line-based chat server."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Threads of chat-bench's own runtime (default: one per CPU).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start each server (release builds beside this binary), run every workload, and write
    /// bench-results/<time>/ with results.md, results.json and SVG charts.
    Compare(compare::Args),
    /// Start a redis-server, v5-cluster nodes on it and one v4-async, and measure the same
    /// clients spread over the nodes and on the one process (release builds, redis-server on
    /// the PATH).
    Cluster(cluster::Args),
    /// Run one workload against a server that is already running.
    Run(RunArgs),
    /// Run a server for minutes under chatters, flooders, non-readers and churners, and judge
    /// it: nothing lost, no well-behaved client evicted, memory and descriptors flat.
    Soak(soak::Args),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The server: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(long, value_parser = addr_arg)]
    addr: SocketAddr,

    /// broadcast: a room, every other client receives each line; echo: only the sender does.
    #[arg(long, value_enum, default_value = "broadcast")]
    mode: Mode,

    /// A line each client sends right after connecting, for servers that ask a name first;
    /// "{i}" in it becomes the client's index (--hello "/nick bench{i}").
    #[arg(long, value_name = "LINE")]
    hello: Option<String>,

    /// The server's process id, to report its CPU, memory and threads.
    #[arg(long, value_name = "PID")]
    server_pid: Option<i32>,

    /// Clients connected at once.
    #[arg(long, value_name = "N", default_value_t = 100)]
    clients: usize,

    /// How many of the clients send.
    #[arg(long, value_name = "S", default_value_t = 10)]
    senders: usize,

    /// Lines each sender sends (0: only connect, to measure accepting and idle memory).
    #[arg(long, value_name = "M", default_value_t = 1000)]
    messages: u32,

    /// Lines per second per sender, sent on a fixed schedule; 0: as fast as possible.
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    rate: f64,

    /// As fast as possible means at most this many lines ahead of what a receiver has seen
    /// (default: 500 lines, fewer in big rooms so that all senders together have at most
    /// 500 000 deliveries in flight; 0: no limit but TCP's).
    #[arg(long, value_name = "LINES")]
    window: Option<u32>,

    /// Speak TLS to the server (burst and connect workloads; --rate needs plaintext), trusting
    /// it by --fingerprint or, with --tls-insecure, not checking whom you talk to at all.
    #[arg(long)]
    tls: bool,

    /// With --tls: the server's certificate fingerprint, as its `tls on` line prints it.
    #[arg(long, value_name = "sha256:HEX", requires = "tls", conflicts_with = "tls_insecure",
          value_parser = chat_protocol::fingerprint::parse)]
    fingerprint: Option<chat_protocol::fingerprint::Sha256Digest>,

    /// With --tls: accept any certificate. For measuring only, never for talking to anyone.
    #[arg(long, requires = "tls")]
    tls_insecure: bool,

    /// Join through the server's WebSocket (v4's --web-addr: give it as --addr): one text
    /// message per line (burst and connect workloads).
    #[arg(long, conflicts_with = "tls")]
    ws: bool,

    /// Print the measurements as JSON on stdout instead of a summary.
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    }
}

fn run_cli(cli: Cli) -> anyhow::Result<i32> {
    let descriptors = chat_protocol::startup::raise_fd_limit().unwrap_or(FD_LIMIT_UNKNOWN);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    match cli.command {
        Command::Compare(args) => {
            runtime.block_on(compare::compare(args, descriptors))?;
            Ok(0)
        }
        Command::Cluster(args) => runtime.block_on(cluster::cluster(args, descriptors)),
        Command::Run(args) => runtime.block_on(run(args, descriptors)),
        Command::Soak(args) => runtime.block_on(soak::soak(args, descriptors)),
    }
}

/// `chat-bench run`: exit status 0 if every line arrived once and in order, 2 if not.
async fn run(args: RunArgs, descriptors: u64) -> anyhow::Result<i32> {
    load::check_descriptors(args.clients, descriptors)?;
    let workload = Workload {
        mode: args.mode,
        clients: args.clients,
        senders: args.senders,
        messages: args.messages,
        rate: (args.rate > 0.0).then_some(args.rate),
        window: args
            .window
            .unwrap_or_else(|| load::default_window(args.mode, args.clients, args.senders)),
        hello: args.hello,
        settle: std::time::Duration::ZERO,
    };
    let tls = match (args.tls, args.fingerprint, args.tls_insecure) {
        (false, ..) => None,
        (true, None, false) => {
            bail!("--tls needs the server's --fingerprint sha256:HEX, or --tls-insecure")
        }
        (true, pin, _) => Some(tls::Tls::new(pin)),
    };
    if (tls.is_some() || args.ws) && workload.rate.is_some() {
        bail!("paced runs (--rate) speak plaintext TCP only; drop --tls or --ws, or --rate");
    }
    let target = Target {
        addr: args.addr,
        also: Vec::new(),
        process: args.server_pid.map(|pid| Process { pid }),
        tls,
        ws: args.ws,
    };
    let progress = Progress::new(None);
    progress.start_run(format!("chat-bench run against {}", args.addr));
    let (report, connections) = load::run(workload, target, &progress).await?;
    progress.finish();
    drop(connections);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::run_summary(&report));
    }
    if report.has_errors() {
        eprintln!("{}", report::error_banner(&report));
        return Ok(2);
    }
    Ok(0)
}

/// The descriptor limit assumed when it cannot be read: Linux's usual soft limit.
const FD_LIMIT_UNKNOWN: u64 = 1024;

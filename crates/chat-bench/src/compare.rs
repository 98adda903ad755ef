//! `chat-bench compare`: every workload against every version, each run on a fresh server.
//!
//! ```text
//!  for each repeat:                      (interleaved, so a noisy minute hits every version)
//!    for each workload:                  burst 100, burst 1000, paced, idle 10 000
//!      for each version (rotated):       v1 v2 v3 v4
//!        start it on port 0, RUST_LOG=warn --> load::run --> SIGTERM (SIGKILL after 3 s)
//!    then v4 over TLS:                   burst 100, 1000 clients connecting (handshakes)
//!  --> bench-results/<time>/results.{md,json} + charts
//! ```
//!
//! The TLS row measures what TLS costs v4 (SPEC 8), not whom to trust: chat-bench starts the
//! server with a self-signed certificate and its clients accept it unchecked
//! ([`crate::tls`]), while the handshakes' cryptography is done in full.
//!
//! ```text
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::load::{self, Mode, Target, Workload};
use crate::procfs::Process;
use crate::progress::Progress;
use crate::report::{self, Results, RunRecord};
use crate::tls::Tls;

/// How long a server may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to exit after SIGTERM before it is killed (v4 says goodbye to
/// every client first; the spec gives it 2 seconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Server log lines kept per run, to explain a failure.
const LOG_LINES_KEPT: usize = 20;

/// Pause between "everyone is in" and reading the server's memory in the idle workload, so the
/// server has finished with the probes.
const IDLE_SETTLE: Duration = Duration::from_millis(300);

/// Quiet time around each connection storm. The kernel tears down the previous run's closed
/// connections (up to 10 000) for a while after the server exits; a storm started during that
/// lost its first SYNs and waited for their 1 s retransmission, so storms measured 1.1-3.4 s
/// inside `compare` against 0.5-0.75 s standalone.
const STORM_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Smaller workloads and one repeat: under 30 seconds.
    #[arg(long)]
    quick: bool,

    /// Folder that receives one results folder per comparison.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,
}

/// One of the four servers.
#[derive(Debug, Clone, Copy)]
pub struct Version {
    pub name: &'static str,
    pub model: &'static str,
    pub mode: Mode,
    /// Arguments that turn off a limit that is a feature, not a cost to measure: v4's rate
    /// limit would drop a benchmark's lines (or a soak's) on purpose.
    pub unthrottle: &'static [&'static str],
}

impl Version {
    /// The one named `name`.
    pub fn named(name: &str) -> Option<Version> {
        VERSIONS.into_iter().find(|v| v.name == name)
    }

    /// What `compare` starts it with, beyond `--addr` and `--max-clients`: rooms with
    /// `--announce-limit 0` (a join notice to every client for each of 10 000 joins is not what
    /// is measured), and unthrottled.
    fn compare_args(&self) -> Vec<&'static str> {
        let mut args = Vec::new();
        if self.mode == Mode::Broadcast {
            args.extend(["--announce-limit", "0"]);
        }
        args.extend(self.unthrottle);
        args
    }
}

/// The versions, in teaching order.
pub const VERSIONS: [Version; 4] = [
    Version {
        name: "v1-threads",
        model: "one thread per client, blocking I/O",
        mode: Mode::Echo,
        unthrottle: &[],
    },
    Version {
        name: "v2-select",
        model: "one thread, poll(2) loop",
        mode: Mode::Echo,
        unthrottle: &[],
    },
    Version {
        name: "v3-broadcast",
        model: "one thread, poll(2) loop, chat room",
        mode: Mode::Broadcast,
        unthrottle: &[],
    },
    Version {
        name: "v4-async",
        model: "tokio: task per client + writer task",
        mode: Mode::Broadcast,
        unthrottle: &["--rate", "0"],
    },
];

/// The workloads of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// 100 clients, 10 senders as fast as possible.
    Burst,
    /// The same at 1000 clients.
    Scale,
    /// 100 clients, 10 senders at 100 lines/s: what a chatting person feels.
    Paced,
    /// 10 000 clients that only connect: accept time (the storm), memory and threads.
    Idle,
}

/// One workload's size and how often it is repeated.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    pub kind: Kind,
    pub title: &'static str,
    pub clients: usize,
    pub senders: usize,
    pub messages: u32,
    pub rate: Option<f64>,
    pub repeats: u32,
}

impl Plan {
    /// How many clients send. In a burst against an echo server every client sends: with
    /// only 10 of them the run would be 50 times shorter than a room's (milliseconds, not
    /// seconds) and would leave 90% of the connections idle, so v1's threads and v2's loop
    /// would never face the load a room's receivers do.
    pub fn senders(&self, mode: Mode) -> usize {
        match (mode, self.kind) {
            (Mode::Echo, Kind::Burst | Kind::Scale) => self.clients,
            _ => self.senders,
        }
    }

    fn workload(&self, mode: Mode) -> Workload {
        let senders = self.senders(mode);
        Workload {
            mode,
            clients: self.clients,
            senders,
            messages: self.messages,
            rate: self.rate,
            window: load::default_window(mode, self.clients, senders),
            hello: None,
            settle: if self.kind == Kind::Idle {
                IDLE_SETTLE
            } else {
                Duration::ZERO
            },
        }
    }
}

/// What `compare` calls v4 over TLS in its records and tables.
pub const V4_TLS: &str = "v4-async over TLS";

/// How many clients connect at once, each with a TLS handshake, in the TLS row.
const TLS_STORM_CLIENTS: usize = 1000;

/// The TLS row's workloads: the burst of [`plans`], and a storm of [`TLS_STORM_CLIENTS`]
/// connections whose time until all are in includes every handshake.
pub fn tls_plans(quick: bool) -> Vec<Plan> {
    let burst = plans(quick)
        .into_iter()
        .find(|p| p.kind == Kind::Burst)
        .expect("plans has a burst");
    vec![
        burst,
        Plan {
            kind: Kind::Idle,
            title: "TLS connection storm",
            clients: TLS_STORM_CLIENTS,
            senders: 0,
            messages: 0,
            rate: None,
            repeats: burst.repeats,
        },
    ]
}

/// How a run's clients talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    /// On a `--tls-addr` beside the plaintext listener, with a self-signed certificate.
    Tls,
}

/// The lines per second each paced sender sends: a busy chat, far below any server's limit.
const PACED_RATE: f64 = 100.0;

/// The workloads: the issue's sizes by default, scaled down with `--quick`.
pub fn plans(quick: bool) -> Vec<Plan> {
    let (burst, scale, paced_seconds, idle, repeats) = if quick {
        (5_000, 500, 2, 2_000, 1)
    } else {
        (20_000, 2_000, 5, 10_000, 3)
    };
    vec![
        Plan {
            kind: Kind::Burst,
            title: "burst fan-out",
            clients: 100,
            senders: 10,
            messages: burst,
            rate: None,
            repeats,
        },
        Plan {
            kind: Kind::Scale,
            title: "fan-out at scale",
            clients: 1000,
            senders: 10,
            messages: scale,
            rate: None,
            repeats,
        },
        Plan {
            kind: Kind::Paced,
            title: "paced chat",
            clients: 100,
            senders: 10,
            messages: (PACED_RATE as u32) * paced_seconds,
            rate: Some(PACED_RATE),
            repeats: 1,
        },
        Plan {
            kind: Kind::Idle,
            title: "idle clients",
            clients: idle,
            senders: 0,
            messages: 0,
            rate: None,
            repeats: 1,
        },
    ]
}

/// A server started for one run (or one soak); killed if dropped without [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts `binary` on port 0 with `RUST_LOG=warn`, `--max-clients` and `args`, and waits
    /// for its `listening on` line.
    pub fn start(
        binary: &Path,
        version: &Version,
        max_clients: usize,
        args: &[&str],
    ) -> anyhow::Result<Server> {
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0", "--max-clients"])
            .arg(max_clients.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (found, listening) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            drain(stream, Arc::clone(&log), found.clone());
        }
        let addr = match listening.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let said = log_text(&log);
                bail!(
                    "{} did not say \"listening on\" within {} s; it said: {said}",
                    version.name,
                    START_TIMEOUT.as_secs()
                );
            }
        };
        Ok(Server { child, addr, log })
    }

    pub fn process(&self) -> Process {
        Process {
            pid: self.child.id() as i32,
        }
    }

    /// False once the process has exited (crashed, or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not exited in [`STOP_TIMEOUT`]; returns its last words.
    pub fn stop(mut self) -> Vec<String> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a server's output for as long as it runs (a pipe nobody reads would eventually block
/// it), reports the `listening on` address, and keeps the last lines.
fn drain(
    stream: Box<dyn Read + Send>,
    log: Arc<Mutex<VecDeque<String>>>,
    found: mpsc::Sender<SocketAddr>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listening_addr(&line) {
                let _ = found.send(addr);
                continue;
            }
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_LINES_KEPT {
                    log.pop_front();
                }
                log.push_back(line);
            }
        }
    });
}

fn log_text(log: &Mutex<VecDeque<String>>) -> String {
    let lines: Vec<String> = log
        .lock()
        .map(|log| log.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        "nothing".to_owned()
    } else {
        lines.join(" / ")
    }
}

/// The address in a `... listening on 127.0.0.1:40123` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, after) = line.split_once("listening on ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// How to build what [`find_servers`] looks for.
const RELEASE_BUILD: &str = "cargo build --release --workspace";

/// Where the server binaries are: beside this executable, built in release mode. `command`
/// (`compare`, `soak`) is named in the advice given to a debug build.
fn release_dir(command: &str) -> anyhow::Result<PathBuf> {
    if cfg!(debug_assertions) {
        bail!(
            "this chat-bench is a debug build, and debug servers measure the compiler's \
             checks, not the models: run `{RELEASE_BUILD}`, then `target/release/chat-bench \
             {command}` (or `cargo run --release -p chat-bench -- {command}`)"
        );
    }
    let exe = std::env::current_exe().context("cannot find chat-bench's own path")?;
    let dir = exe.parent().context("chat-bench's path has no folder")?;
    Ok(dir.to_owned())
}

/// Every version's release binary, or an error naming the missing ones.
fn find_servers() -> anyhow::Result<Vec<(Version, PathBuf)>> {
    let dir = release_dir("compare")?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for version in VERSIONS {
        let path = dir.join(version.name);
        if path.is_file() {
            found.push((version, path));
        } else {
            missing.push(version.name);
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: run `{RELEASE_BUILD}` first",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(found)
}

/// One version's release binary, for `command`.
pub fn find_server(version: &Version, command: &str) -> anyhow::Result<PathBuf> {
    let path = release_dir(command)?.join(version.name);
    if !path.is_file() {
        bail!("{} not found: run `{RELEASE_BUILD}` first", path.display());
    }
    Ok(path)
}

/// `chat-bench compare`.
pub async fn compare(args: Args, descriptors: u64) -> anyhow::Result<()> {
    let servers = find_servers()?;
    let plans = plans(args.quick);
    let most_clients = plans.iter().map(|p| p.clients).max().unwrap_or(1);
    crate::check_descriptors(most_clients, descriptors)?;
    // Room for every client of the largest workload, and then some: --max-clients is not
    // what is measured.
    let max_clients = most_clients + most_clients / 10 + 16;

    let started_utc = std::time::SystemTime::now();
    let out = report::results_dir(&args.out, started_utc)?;
    let tls_plans = tls_plans(args.quick);
    let v4 = servers
        .iter()
        .find(|(version, _)| version.name == "v4-async")
        .cloned()
        .context("v4-async is one of the versions")?;
    let total_runs: u32 = plans.iter().map(|p| p.repeats).sum::<u32>() * servers.len() as u32
        + tls_plans.iter().map(|p| p.repeats).sum::<u32>();
    let progress = Progress::new(Some(u64::from(total_runs)));
    let clock = Instant::now();
    let mut runs = Vec::new();
    let rounds = plans.iter().map(|p| p.repeats).max().unwrap_or(1);
    for repeat in 0..rounds {
        for plan in plans.iter().filter(|p| repeat < p.repeats) {
            for offset in 0..servers.len() {
                let (version, binary) = &servers[(offset + repeat as usize) % servers.len()];
                let name = format!(
                    "{} {} ({} clients){}",
                    version.name,
                    plan.title,
                    plan.clients,
                    if plan.repeats > 1 {
                        format!(" #{}", repeat + 1)
                    } else {
                        String::new()
                    }
                );
                progress.start_run(name.clone());
                let record = run_one(
                    version,
                    binary,
                    plan,
                    repeat,
                    max_clients,
                    Transport::Plain,
                    &progress,
                )
                .await;
                note_run(&progress, &name, record, &mut runs);
            }
        }
        for plan in tls_plans.iter().filter(|p| repeat < p.repeats) {
            let name = format!("{V4_TLS} {} ({} clients)", plan.title, plan.clients);
            progress.start_run(name.clone());
            let (version, binary) = &v4;
            let record = run_one(
                version,
                binary,
                plan,
                repeat,
                max_clients,
                Transport::Tls,
                &progress,
            )
            .await;
            note_run(&progress, &name, record, &mut runs);
        }
    }
    progress.finish();

    let results = Results::new(
        started_utc,
        clock.elapsed().as_secs_f64(),
        args.quick,
        &plans,
        &tls_plans,
        runs,
    );
    report::write_all(&out, &results)?;
    println!("{}", report::summary_table(&results));
    println!("{}", report::tls_table(&results));
    println!(
        "Full results, every run and the charts: {}/ (compare took {:.0} s)",
        out.display(),
        results.duration_s
    );
    let troubled = results
        .runs
        .iter()
        .filter(|r| report::record_problem(r).is_some())
        .count();
    if troubled > 0 {
        eprintln!(
            "WARNING: {troubled} of {} runs lost, duplicated or reordered lines, or failed: \
             see the warnings above and results.md before trusting these numbers",
            results.runs.len()
        );
    }
    Ok(())
}

/// Says how a run went, and keeps its record.
fn note_run(progress: &Progress, name: &str, record: RunRecord, runs: &mut Vec<RunRecord>) {
    progress.note(format!("{name}: {}", report::run_line(&record)));
    if let Some(problem) = report::record_problem(&record) {
        progress.warn(format!("{name}: {problem}"));
    }
    progress.finish_run();
    runs.push(record);
}

/// A free TCP port on 127.0.0.1 for the server's TLS listener. The server logs its `tls on`
/// line at `info`, which `RUST_LOG=warn` hides, so chat-bench chooses the port itself; another
/// program taking it in the moment between is possible and would fail the run, loudly.
fn free_port() -> anyhow::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(probe.local_addr()?.port())
}

/// Starts `version`, runs `plan` against it over `transport`, stops it; failures become part
/// of the record.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    version: &Version,
    binary: &Path,
    plan: &Plan,
    repeat: u32,
    max_clients: usize,
    transport: Transport,
    progress: &Progress,
) -> RunRecord {
    let mut record = RunRecord {
        version: match transport {
            Transport::Plain => version.name.to_owned(),
            Transport::Tls => V4_TLS.to_owned(),
        },
        workload: plan.kind,
        repeat: repeat + 1,
        report: None,
        error: None,
        server_log: Vec::new(),
    };
    if plan.kind == Kind::Idle {
        tokio::time::sleep(STORM_QUIET).await;
    }
    let mut args: Vec<String> = version
        .compare_args()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let tls_addr = match transport {
        Transport::Plain => None,
        Transport::Tls => match free_port() {
            Ok(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                args.extend(["--tls-addr".into(), addr.to_string()]);
                args.push("--tls-self-signed".into());
                Some(addr)
            }
            Err(error) => {
                record.error = Some(format!("{error:#}"));
                return record;
            }
        },
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = match Server::start(binary, version, max_clients, &args) {
        Ok(server) => server,
        Err(error) => {
            record.error = Some(format!("{error:#}"));
            return record;
        }
    };
    let target = Target {
        addr: tls_addr.unwrap_or(server.addr),
        process: Some(server.process()),
        // Measuring only: chat-bench started this server with a certificate of its own.
        tls: tls_addr.map(|_| Tls::new(None)),
    };
    let outcome = load::run(plan.workload(version.mode), target, progress).await;
    // The server goes first, so that it, not chat-bench, holds the TIME_WAIT sockets and
    // 10 000 closing clients are not part of anything measured.
    record.server_log = server.stop();
    match outcome {
        Ok((report, connections)) => {
            drop(connections);
            record.report = Some(report);
        }
        Err(error) => record.error = Some(format!("{error:#}")),
    }
    if plan.kind == Kind::Idle {
        tokio::time::sleep(STORM_QUIET).await;
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address() {
        assert_eq!(
            listening_addr("2026-05-01T12:00:00Z  INFO v4-async listening on 127.0.0.1:40123"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            listening_addr("v1-threads listening on [::1]:8081"),
            Some("[::1]:8081".parse().unwrap())
        );
        assert_eq!(listening_addr("WARN accept failed"), None);
    }

    #[test]
    fn quick_plans_are_smaller_and_run_once() {
        let full = plans(false);
        let quick = plans(true);
        assert_eq!(full.len(), quick.len());
        for (full, quick) in full.iter().zip(&quick) {
            assert_eq!(full.kind, quick.kind);
            assert!(quick.messages <= full.messages && quick.clients <= full.clients);
            assert_eq!(quick.repeats, 1);
        }
    }

    #[test]
    fn every_echo_client_sends_in_a_burst_but_not_in_paced_chat() {
        let plans = plans(false);
        assert_eq!(plans[0].senders(Mode::Broadcast), 10);
        assert_eq!(plans[0].senders(Mode::Echo), 100);
        assert_eq!(plans[1].senders(Mode::Echo), 1000);
        assert_eq!(plans[2].senders(Mode::Echo), 10);
    }

    #[test]
    fn the_issue_sizes_are_the_default() {
        let full = plans(false);
        let sizes: Vec<_> = full
            .iter()
            .map(|p| (p.clients, p.senders, p.messages))
            .collect();
        assert_eq!(
            sizes,
            [
                (100, 10, 20_000),
                (1000, 10, 2_000),
                (100, 10, 500),
                (10_000, 0, 0)
            ]
        );
    }
}

//! `chat-bench soak`: minutes of mixed, partly hostile traffic against one server, then a
//! verdict on what a well-behaved client must be able to count on, and on whether the
//! server's memory and descriptors stayed flat.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/chat-bench soak --server v4-async --minutes 10
//! target/release/chat-bench soak --addr 127.0.0.1:8080 --server-pid 4242 --minutes 0.5
//! ```
//!
//! ```text
//!  start the server (release build, port 0, RUST_LOG=warn), or use --addr
//!   --> connect the well-behaved clients --> probe until every one is in the room
//!   --> for --minutes, all at once, every loop ending by itself at the deadline:
//!         chatters     a line every 100 ms each, read everything       \  well-behaved:
//!         flooders     bursts of --max-line lines and of bare tokens,    > every line they
//!                      as fast as TCP takes them, read everything       /  send is checked
//!         non-readers  connect, send, never read for 5 s, come back      may be evicted
//!         churners     connect, junk, reset / half-close / close, again  must leave no trace
//!         sampler      the server's RSS and open descriptors, every second
//!   --> senders stop --> wait until every receiver has caught up (at most 30 s, or 5 s
//!       in which nothing arrives)
//!   --> churners gone --> wait until the descriptors settle (at most 10 s)
//!   --> verdict (exit status 2 on FAIL), then soak-<server>.md and .svg in --out
//! ```
//!
//! ## Why each kind of client
//!
//! - **Chatters** are the people a chat server is for: a line every [`CHATTER_INTERVAL`],
//!   reading everything. Their lines must all arrive, once, in order, and soon (their latency
//!   is reported: a long pause of the room shows in its maximum).
//! - **Flooders** send the heaviest traffic a client may legitimately send, as fast as the
//!   socket takes it: lines of exactly `--max-line` bytes (the longest the protocol allows, and
//!   the most bytes to format for every receiver) and bare tokens (the most lines per byte).
//!   Now and then a line longer than `--max-line` sits between them: it must be refused with
//!   `* error: line too long`, never relayed, and the lines after it must arrive. Flooders read
//!   everything they receive, as fast as they can, so SPEC 4 promises they are never evicted:
//!   a room may slow them down (backpressure), never drop their lines or them.
//! - **Non-readers** connect, send some lines and never read: the slow consumer. The server
//!   may evict them (`* error: too slow`), which is counted, not a failure; what must not
//!   happen is that they cost anyone else a line, or grow the server's memory.
//! - **Churners** connect and disconnect over and over, in every way a connection can end:
//!   a reset (`SO_LINGER` 0, then close), a reset in the middle of a line several times
//!   `--max-line` long, a half-close (shut down writing, then read to the end), a plain close.
//!   On the way they send what SPEC 3 says no one else may receive: invalid UTF-8, telnet
//!   commands, ANSI escapes, C1 and bidirectional controls. Every ending must free its
//!   descriptor, and none of the junk may reach a client unsanitised.
//!
//! ## The checks
//!
//! Every well-behaved client (chatters and flooders) is both sender and receiver: in a room
//! (v3, v4) each of its lines must reach every other well-behaved client, on an echo server
//! (v1, v2) come back to itself. Lines carry [`crate::token`]s and every (sender, receiver)
//! pair has a [`StreamLedger`]. They stay connected from before the first line to after the
//! last, so "lost" is never a line said while a receiver was away; and the soak waits, after
//! the senders stop, until every receiver has seen every line (at most [`CATCH_UP_TIMEOUT`]).
//! The verdict is FAIL if any of these is not zero: lines lost, duplicated, reordered, or
//! delivered where they should not be; well-behaved clients disconnected or told they are too
//! slow; error notices to them other than the refusals of their overlong lines; overlong lines
//! not refused exactly once each, or relayed; lines that reach anyone with bytes SPEC 3
//! forbids; half-closed churners never closed; connects refused. And it fails if the server
//! exits, or if its memory or descriptors grow: the rules are stated in [`verdict`], where
//! they are applied.
//!
//! ## Where things are
//!
//! This file runs a soak: its arguments, then [`run`], which starts every kind of client,
//! samples the server and waits for the end. [`clients`] is what each kind of client does
//! and counts; [`verdict`] adds up the counts, judges them and writes the summary.

mod clients;
mod verdict;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use chat_protocol::cli::addr_arg;
use chat_protocol::framing::MAX_LINE_DEFAULT;
use tokio::sync::watch;

use crate::load::Mode;
use crate::process::Process;
use crate::progress::Progress;
use crate::servers::{self, Server, Version, VERSIONS};
use crate::units::{count, kilobytes};

use self::clients::Shared;
use self::verdict::{Outcome, Watched};

/// How long a soak lasts unless told: long enough for a slow leak to show in the samples.
const MINUTES_DEFAULT: f64 = 10.0;

/// The longest soak: a sequence number (8 hex digits in a token) must not run out, and a
/// week is longer than any soak is useful.
const MINUTES_MAX: f64 = 7.0 * 24.0 * 60.0;

/// Default number of chatters: a lively room.
const CHATTERS_DEFAULT: usize = 20;

/// Default number of flooders: enough to keep any of our servers busy on a 2-core machine.
const FLOODERS_DEFAULT: usize = 4;

/// Default number of non-readers: a few slow consumers at any moment.
const NON_READERS_DEFAULT: usize = 4;

/// Default number of churners: each makes tens of connections a second.
const CHURNERS_DEFAULT: usize = 8;

/// How often the room is probed until every well-behaved client has seen a probe.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// Giving up on well-behaved clients that never show up in the room.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// After the senders stop, how long receivers get to see every line that was sent. A server
/// that applies backpressure holds at most `--max-queue` per client: seconds at most.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The catch-up ends sooner if no line (or refusal) arrived anywhere for this long.
const CATCH_UP_STALL: Duration = Duration::from_secs(5);

/// How often the server's RSS and descriptors are read.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// How often the coordinator looks at the counters while waiting.
const TICK: Duration = Duration::from_millis(100);

/// The fewest seconds between two progress lines; longer soaks print about twelve.
const PROGRESS_EVERY_MIN: Duration = Duration::from_secs(10);

/// Progress lines a long soak prints.
const PROGRESS_LINES: u32 = 12;

/// How long, once the churners are gone, the server gets to close what they left (a server
/// drains an evicted client's input for a moment before closing it, SPEC 4).
const FD_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often descriptors are counted while they settle.
const FD_SETTLE_POLL: Duration = Duration::from_millis(100);

/// `--max-clients` for a started server: every client the soak may hold at once, twice (a
/// closed connection may linger on the server's side for a moment), and then some.
const MAX_CLIENTS_SPARE: usize = 64;

/// `chat-bench soak`'s arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["server", "addr"])))]
pub struct Args {
    /// One of the four servers, started from the release build beside chat-bench (port 0,
    /// RUST_LOG=warn, v4 with --rate 0).
    #[arg(long, value_name = "NAME", value_parser = VERSIONS.map(|v| v.name))]
    server: Option<String>,

    /// Or a server that is already running: HOST:PORT, [IPv6]:PORT, :PORT or PORT (a v4
    /// with --rate 0, or its rate limit drops the flood on purpose).
    #[arg(long, value_parser = addr_arg)]
    addr: Option<SocketAddr>,

    /// With --addr: broadcast for a room, echo for a server that returns each line to its
    /// sender (default: broadcast).
    #[arg(long, value_enum, requires = "addr")]
    mode: Option<Mode>,

    /// With --addr: the server's process id, to watch its memory and descriptors.
    #[arg(long, value_name = "PID", requires = "addr")]
    server_pid: Option<i32>,

    /// How long to soak, in minutes; fractions are fine (0.1 is 6 seconds).
    #[arg(long, value_name = "N", default_value_t = MINUTES_DEFAULT, value_parser = minutes)]
    minutes: f64,

    /// Well-behaved clients that say a line every 100 ms.
    #[arg(long, value_name = "N", default_value_t = CHATTERS_DEFAULT)]
    chatters: usize,

    /// Well-behaved clients that send bursts as fast as the server takes them.
    #[arg(long, value_name = "N", default_value_t = FLOODERS_DEFAULT)]
    flooders: usize,

    /// Milliseconds each flooder rests between bursts (0: none). For a gentler soak.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    flood_pause_ms: u64,

    /// Clients that send and never read, over and over.
    #[arg(long, value_name = "N", default_value_t = NON_READERS_DEFAULT)]
    non_readers: usize,

    /// Clients that connect and disconnect over and over.
    #[arg(long, value_name = "N", default_value_t = CHURNERS_DEFAULT)]
    churners: usize,

    /// The server's --max-line: flood lines are exactly this long, overlong ones longer.
    #[arg(long, value_name = "BYTES", default_value_t = MAX_LINE_DEFAULT)]
    max_line: usize,

    /// Folder that receives soak-<server>.md and soak-<server>.svg.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    out: PathBuf,

    /// More arguments for the server that --server starts, after `--`.
    #[arg(last = true, value_name = "SERVER ARGS", requires = "server")]
    server_args: Vec<String>,
}

/// `--minutes`: a positive number, at most a week.
fn minutes(input: &str) -> Result<f64, String> {
    match input.parse::<f64>() {
        Ok(m) if m.is_finite() && m > 0.0 && m <= MINUTES_MAX => Ok(m),
        _ => Err(format!(
            "\"{input}\" is not a duration: give minutes, more than 0 and at most {MINUTES_MAX}"
        )),
    }
}

/// What one soak runs: who, how many, how long.
#[derive(Debug, Clone)]
struct Plan {
    /// The server's name, or its address.
    name: String,
    mode: Mode,
    duration: Duration,
    chatters: usize,
    flooders: usize,
    flood_pause: Duration,
    non_readers: usize,
    churners: usize,
    max_line: usize,
}

impl Plan {
    /// The plan `args` ask for, against `version` if one is to be started.
    fn new(args: &Args, version: Option<&Version>) -> anyhow::Result<Plan> {
        let plan = Plan {
            name: match (version, args.addr) {
                (Some(version), _) => version.name.to_owned(),
                (None, Some(addr)) => addr.to_string(),
                (None, None) => bail!("give --server NAME or --addr HOST:PORT"),
            },
            mode: match version {
                Some(version) => version.mode,
                None => args.mode.unwrap_or(Mode::Broadcast),
            },
            duration: Duration::from_secs_f64(args.minutes * 60.0),
            chatters: args.chatters,
            flooders: args.flooders,
            flood_pause: Duration::from_millis(args.flood_pause_ms),
            non_readers: args.non_readers,
            churners: args.churners,
            max_line: args.max_line,
        };
        plan.check()?;
        Ok(plan)
    }

    fn well_behaved(&self) -> usize {
        self.chatters + self.flooders
    }

    fn clients(&self) -> usize {
        self.well_behaved() + self.non_readers + self.churners
    }

    /// Whether receiver `receiver` should get sender `sender`'s lines.
    fn expects(&self, receiver: usize, sender: usize) -> bool {
        match self.mode {
            Mode::Broadcast => receiver != sender,
            Mode::Echo => receiver == sender,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.well_behaved() == 0 {
            bail!("a soak needs at least one chatter or flooder: they are what is checked");
        }
        if self.mode == Mode::Broadcast && self.well_behaved() < 2 {
            bail!("in a room a line goes to the others: give at least two chatters or flooders");
        }
        if self.well_behaved() > usize::from(u16::MAX) {
            bail!("at most {} chatters and flooders together", u16::MAX);
        }
        let (min, max) = (clients::MAX_LINE_MIN, clients::MAX_LINE_MAX);
        if !(min..=max).contains(&self.max_line) {
            bail!("--max-line must be between {min} and {max}");
        }
        Ok(())
    }

    /// One sentence on the clients, for the summary.
    fn describe(&self) -> String {
        let pause = if self.flood_pause.is_zero() {
            String::new()
        } else {
            format!(
                ", resting {} ms between bursts",
                self.flood_pause.as_millis()
            )
        };
        format!(
            "{} (a line every {} ms), {} ({} lines of {} bytes and {} bare tokens per burst, an \
             overlong line every {} bursts{pause}), {}, {}",
            plural(self.chatters as u64, "chatter"),
            clients::CHATTER_INTERVAL.as_millis(),
            plural(self.flooders as u64, "flooder"),
            clients::FLOOD_LONG_LINES,
            self.max_line,
            clients::FLOOD_SHORT_LINES,
            clients::FLOOD_OVERLONG_EVERY,
            plural(self.non_readers as u64, "non-reader"),
            plural(self.churners as u64, "churner"),
        )
    }
}

/// `chat-bench soak`: exit status 0 on PASS, 2 on FAIL.
pub async fn soak(args: Args, descriptors: u64) -> anyhow::Result<i32> {
    let version = args.server.as_deref().and_then(Version::named);
    let plan = Plan::new(&args, version.as_ref())?;
    crate::load::check_descriptors(plan.clients(), descriptors)?;
    let mut started = match &version {
        Some(version) => Some(start(version, &plan, &args.server_args)?),
        None => None,
    };
    let (addr, process) = match (&started, args.addr) {
        (Some((server, _)), _) => (server.addr, Some(server.process())),
        (None, Some(addr)) => (addr, args.server_pid.map(|pid| Process { pid })),
        (None, None) => bail!("give --server NAME or --addr HOST:PORT"),
    };

    let progress = Progress::new(None);
    progress.start_run(format!(
        "soak {} for {}",
        plan.name,
        duration_text(plan.duration)
    ));
    let outcome = run(&plan, addr, process, &progress).await;
    progress.finish();
    let mut server_log = Vec::new();
    let mut command_line = None;
    let mut still_running = None;
    if let Some((mut server, line)) = started.take() {
        still_running = Some(server.is_running());
        server_log = server.stop();
        command_line = Some(line);
    }
    let mut outcome = outcome?;
    // For a server it started, the soak knows for sure: its child has exited or not.
    outcome.watched.server_alive = still_running.or(outcome.watched.server_alive);

    let checks = verdict::checks(&plan, &outcome);
    let passed = verdict::passed(&checks);
    print!("{}", verdict::verdict_text(&plan, &checks, passed));
    if !passed && !server_log.is_empty() {
        eprintln!("The server's last log lines:");
        for line in server_log.iter().rev().take(verdict::LOG_LINES_SHOWN).rev() {
            eprintln!("  {line}");
        }
    }
    let written = verdict::write_files(
        &args.out,
        &plan,
        &outcome,
        &checks,
        command_line.as_deref(),
        &server_log,
    )?;
    println!("Summary and chart: {}", written.display());
    Ok(if passed { 0 } else { 2 })
}

/// Starts `version`'s release build for `plan`, with `--max-line`, room for every client,
/// unthrottled, and `extra` arguments; returns it with its command line, for the summary.
fn start(version: &Version, plan: &Plan, extra: &[String]) -> anyhow::Result<(Server, String)> {
    let binary = servers::find_server(version, "soak")?;
    let max_clients = plan.clients() * 2 + MAX_CLIENTS_SPARE;
    let max_line = plan.max_line.to_string();
    let mut args = vec!["--max-line", max_line.as_str()];
    args.extend(version.unthrottle);
    args.extend(extra.iter().map(String::as_str));
    let server = Server::start(&binary, version, max_clients, &args)?;
    let line = format!(
        "{} --max-clients {max_clients} {}",
        version.name,
        args.join(" ")
    );
    Ok((server, line))
}

/// `1 chatter`, `20 chatters`.
fn plural(n: u64, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        n => format!("{n} {word}s"),
    }
}

/// `1 min`, `6 s`, `1.5 min`.
fn duration_text(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.0} s")
    } else {
        format!("{} min", (secs / 60.0 * 10.0).round() / 10.0)
    }
}

/// One reading of the server's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the soak's traffic started (negative before).
    at_s: f64,
    rss_kb: u64,
    fds: usize,
}

/// The soak proper, against a server at `addr` (whose process, if known, is watched).
async fn run(
    plan: &Plan,
    addr: SocketAddr,
    process: Option<Process>,
    progress: &Progress,
) -> anyhow::Result<Outcome> {
    let shared = Arc::new(Shared::new(plan, addr));
    let idle = match process {
        Some(process) => Some(process.status()?.rss_kb),
        None => None,
    };

    // The well-behaved clients connect and prove they are in before anything is counted.
    progress.stage(format!(
        "connecting {} well-behaved clients",
        plan.well_behaved()
    ));
    let connecting = Instant::now();
    let joined = clients::join(&shared, PROBE_INTERVAL, ACCEPT_TIMEOUT).await?;
    progress.note_verbose(format!(
        "{} well-behaved clients in after {:.0} ms",
        plan.well_behaved(),
        connecting.elapsed().as_secs_f64() * 1e3
    ));
    let fds_start = match process {
        Some(process) => Some(process.open_fds()?),
        None => None,
    };

    // Everything at once, until the deadline.
    let started = Instant::now();
    let deadline = started + plan.duration;
    let sampler = process.map(|process| {
        let first = idle.zip(fds_start).map(|(rss_kb, fds)| Sample {
            at_s: -connecting.elapsed().as_secs_f64(),
            rss_kb,
            fds,
        });
        Sampler::start(process, started, first)
    });
    let traffic = clients::start(&shared, joined, started, deadline);
    report_progress(&shared, started, deadline, sampler.as_ref(), progress).await;

    // The senders stop by themselves; every receiver must then see everything sent.
    progress.stage("senders stopped; waiting for every receiver to catch up".to_owned());
    let caught_up = traffic
        .catch_up(&shared, CATCH_UP_TIMEOUT, CATCH_UP_STALL, TICK)
        .await;
    let catch_up_s = deadline.elapsed().as_secs_f64();
    progress.stage("waiting for the churners and non-readers to finish".to_owned());
    let ended = traffic.end().await?;

    // Only the well-behaved clients are left: the server should hold what it held at start.
    progress.stage("waiting for the server's descriptors to settle".to_owned());
    let fds_end = match (process, fds_start) {
        (Some(process), Some(start)) => settle(process, start + verdict::FD_TOLERANCE).await,
        _ => None,
    };
    let end = process.map(Process::status);
    let mut samples = match sampler {
        Some(sampler) => sampler.stop().await,
        None => Vec::new(),
    };
    if let (Some(Ok(status)), Some(fds)) = (&end, fds_end) {
        samples.push(Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_kb: status.rss_kb,
            fds,
        });
    }

    let watched = Watched {
        caught_up,
        catch_up_s,
        samples,
        rss_idle_kb: idle,
        rss_peak_kb: end
            .as_ref()
            .and_then(|s| Some(s.as_ref().ok()?.peak_rss_kb)),
        rss_end_kb: end.as_ref().and_then(|s| Some(s.as_ref().ok()?.rss_kb)),
        fds_start,
        fds_end,
        server_alive: end.as_ref().map(Result::is_ok),
    };
    let outcome = verdict::tally(plan, &shared, &ended, watched);
    // The well-behaved clients' connections close here, after everything was measured.
    drop(ended);
    Ok(outcome)
}

/// Updates the progress display every [`SAMPLE_INTERVAL`] until `deadline`, and prints a
/// line now and then: about [`PROGRESS_LINES`] a soak, at least [`PROGRESS_EVERY_MIN`] apart.
async fn report_progress(
    shared: &Shared,
    started: Instant,
    deadline: Instant,
    sampler: Option<&Sampler>,
    progress: &Progress,
) {
    let every = (shared.plan.duration / PROGRESS_LINES).max(PROGRESS_EVERY_MIN);
    let mut next_note = started + every;
    while Instant::now() < deadline {
        tokio::time::sleep_until(deadline.min(Instant::now() + SAMPLE_INTERVAL).into()).await;
        let c = &shared.counters;
        let server = sampler.and_then(Sampler::last).map_or(String::new(), |s| {
            format!("; server RSS {}, {} fds", kilobytes(s.rss_kb), s.fds)
        });
        let line = format!(
            "{:.0} s of {:.0}: {} lines sent, {} deliveries, {} behind{server}; {} churn \
             cycles, {} non-readers evicted",
            started.elapsed().as_secs_f64(),
            shared.plan.duration.as_secs_f64(),
            count(shared.sent_total()),
            count(shared.delivered.load(Ordering::Relaxed)),
            count(shared.behind()),
            count(c.churn_cycles.load(Ordering::Relaxed)),
            c.evicted.load(Ordering::Relaxed),
        );
        progress.stage(line.clone());
        if Instant::now() >= next_note && Instant::now() < deadline {
            progress.note(line);
            next_note += every;
        }
    }
}

/// Waits until `process` holds at most `limit` descriptors, or [`FD_SETTLE_TIMEOUT`] passes
/// (a server drains an evicted client's input for a moment before closing it, SPEC 4);
/// returns how many it holds then, or `None` if it is gone.
async fn settle(process: Process, limit: usize) -> Option<usize> {
    let give_up = Instant::now() + FD_SETTLE_TIMEOUT;
    loop {
        let fds = process.open_fds().ok()?;
        if fds <= limit || Instant::now() > give_up {
            return Some(fds);
        }
        tokio::time::sleep(FD_SETTLE_POLL).await;
    }
}

/// Reads the server's RSS and descriptors every [`SAMPLE_INTERVAL`] until stopped.
#[derive(Debug)]
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `process`, timed from `started`, with `first` (the idle reading).
    fn start(process: Process, started: Instant, first: Option<Sample>) -> Sampler {
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::new(Mutex::new(first.into_iter().collect()));
        let (stop, mut stopped) = watch::channel(false);
        let shared = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let first_tick = (started + SAMPLE_INTERVAL).into();
            let mut ticks = tokio::time::interval_at(first_tick, SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = ticks.tick() => {}
                }
                let (Ok(status), Ok(fds)) = (process.status(), process.open_fds()) else {
                    // The server is gone: the end of the soak reports it.
                    break;
                };
                if let Ok(mut samples) = shared.lock() {
                    samples.push(Sample {
                        at_s: started.elapsed().as_secs_f64(),
                        rss_kb: status.rss_kb,
                        fds,
                    });
                }
            }
        });
        Sampler {
            samples,
            stop,
            task,
        }
    }

    fn last(&self) -> Option<Sample> {
        self.samples.lock().ok()?.last().copied()
    }

    async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(duration_text(Duration::from_secs(6)), "6 s");
        assert_eq!(duration_text(Duration::from_secs(60)), "1 min");
        assert_eq!(duration_text(Duration::from_secs(90)), "1.5 min");
        assert_eq!(plural(1, "flooder"), "1 flooder");
        assert_eq!(plural(0, "flooder"), "0 flooders");
        assert!(minutes("0.1").is_ok());
        assert!(minutes("0").is_err());
        assert!(minutes("-1").is_err());
        assert!(minutes("NaN").is_err());
    }
}

//! `chat-bench compare`: every workload against every version, each run on a fresh server.
//!
//! ```text
//!  for each repeat:                      (interleaved, so a noisy minute hits every version)
//!    for each workload:                  burst 100, burst 1000, paced, idle 10 000
//!      for each version (rotated):       v1 v2 v3 v4
//!        start it on port 0, RUST_LOG=warn --> load::run --> SIGTERM (SIGKILL after 3 s)
//!    then v4 over TLS:                   burst 100, 1000 clients connecting (handshakes)
//!    then the crowd, N = 100 .. 20 000:  v2 poll, v2 epoll, v3 poll, v3 epoll, v4
//!  --> bench-results/<time>/results.{md,json} + charts (crowd.md and crowd.svg apart too)
//! ```
//!
//! The TLS row measures what TLS costs v4 (SPEC 8), not whom to trust: chat-bench starts the
//! server with a self-signed certificate and its clients accept it unchecked
//! ([`crate::tls`]), while the handshakes' cryptography is done in full.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::load::{self, Target};
use crate::markdown;
use crate::plans::{
    crowd_plans, plans, tls_plans, versions_for, ws_plans, Kind, Plan, V4_TLS, V4_WS,
};
use crate::progress::Progress;
use crate::results::{self, record_problem, run_line, CrowdCap, Results, RunRecord};
use crate::servers::{find_servers, Server, Version};
use crate::tls::Tls;

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

    /// Only these workloads (comma-separated), without the TLS row: `--only crowd` measures
    /// poll against epoll alone.
    #[arg(long, value_name = "KINDS", value_enum, value_delimiter = ',')]
    only: Vec<Kind>,
}

/// How a run's clients talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    /// On a `--tls-addr` beside the plaintext listener, with a self-signed certificate.
    Tls,
    /// On the `--web-addr` WebSocket beside the plaintext listener, a message per line.
    Ws,
}

/// `chat-bench compare`.
pub async fn compare(args: Args, descriptors: u64) -> anyhow::Result<()> {
    let servers = find_servers()?;
    let chosen = |kind| args.only.is_empty() || args.only.contains(&kind);
    let mut plans: Vec<Plan> = plans(args.quick)
        .into_iter()
        .filter(|plan| chosen(plan.kind))
        .collect();
    let crowd_cap = if chosen(Kind::Crowd) {
        // The crowd grows to what the descriptors allow: chat-bench holds one per client.
        let most = load::most_clients(descriptors);
        let (crowd, capped) = crowd_plans(args.quick, most);
        plans.extend(crowd);
        capped.map(|wanted| CrowdCap {
            wanted,
            reached: most,
            descriptors,
        })
    } else {
        None
    };
    let most_clients = plans.iter().map(|p| p.clients).max().unwrap_or(1);
    load::check_descriptors(most_clients, descriptors)?;
    // Room for every client of the largest workload, and then some: --max-clients is not
    // what is measured.
    let max_clients = most_clients + most_clients / 10 + 16;

    let started_utc = std::time::SystemTime::now();
    let out = results::results_dir(&args.out, started_utc)?;
    let tls_plans = if args.only.is_empty() {
        tls_plans(args.quick)
    } else {
        Vec::new()
    };
    let ws_plans = if args.only.is_empty() {
        ws_plans(args.quick)
    } else {
        Vec::new()
    };
    let v4 = Version::named("v4-async").context("v4-async is one of the versions")?;
    let total_runs: u32 = plans
        .iter()
        .map(|p| p.repeats * versions_for(p.kind).len() as u32)
        .sum::<u32>()
        + tls_plans.iter().map(|p| p.repeats).sum::<u32>()
        + ws_plans.iter().map(|p| p.repeats).sum::<u32>();
    let progress = Progress::new(Some(u64::from(total_runs)));
    let clock = Instant::now();
    let mut runs = Vec::new();
    let rounds = plans.iter().map(|p| p.repeats).max().unwrap_or(1);
    for repeat in 0..rounds {
        for plan in plans.iter().filter(|p| repeat < p.repeats) {
            let lineup = versions_for(plan.kind);
            for offset in 0..lineup.len() {
                let version = &lineup[(offset + repeat as usize) % lineup.len()];
                let binary = servers.join(version.binary);
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
                    &binary,
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
        // v4 again, its clients on the TLS listener, then on the WebSocket.
        for (label, transport, plans) in [
            (V4_TLS, Transport::Tls, &tls_plans),
            (V4_WS, Transport::Ws, &ws_plans),
        ] {
            for plan in plans.iter().filter(|p| repeat < p.repeats) {
                let name = format!("{label} {} ({} clients)", plan.title, plan.clients);
                progress.start_run(name.clone());
                let record = run_one(
                    &v4,
                    &servers.join(v4.binary),
                    plan,
                    repeat,
                    max_clients,
                    transport,
                    &progress,
                )
                .await;
                note_run(&progress, &name, record, &mut runs);
            }
        }
    }
    progress.finish();

    let results = Results::new(
        started_utc,
        clock.elapsed().as_secs_f64(),
        args.quick,
        &plans,
        &tls_plans,
        &ws_plans,
        crowd_cap,
        runs,
    );
    markdown::write_all(&out, &results)?;
    if plans.iter().any(|p| p.kind != Kind::Crowd) {
        println!("{}", markdown::summary_table(&results));
    }
    if !results.tls_summary.is_empty() || !results.ws_summary.is_empty() {
        println!("{}", markdown::tls_table(&results));
    }
    if !results.crowd_plans().is_empty() {
        println!("{}", markdown::crowd_tables(&results));
    }
    println!(
        "Full results, every run and the charts: {}/ (compare took {:.0} s)",
        out.display(),
        results.duration_s
    );
    let troubled = results
        .runs
        .iter()
        .filter(|r| record_problem(r).is_some())
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
    progress.note(format!("{name}: {}", run_line(&record)));
    if let Some(problem) = record_problem(&record) {
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
            Transport::Ws => V4_WS.to_owned(),
        },
        workload: plan.kind,
        clients: plan.clients,
        repeat: repeat + 1,
        report: None,
        error: None,
        server_log: Vec::new(),
    };
    let storm = plan.kind == Kind::Idle || plan.kind == Kind::Crowd;
    if storm {
        tokio::time::sleep(STORM_QUIET).await;
    }
    let mut args: Vec<String> = version
        .compare_args()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let web_addr = match transport {
        Transport::Ws => match free_port() {
            Ok(port) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                args.extend(["--web-addr".into(), addr.to_string()]);
                Some(addr)
            }
            Err(error) => {
                record.error = Some(format!("{error:#}"));
                return record;
            }
        },
        _ => None,
    };
    let tls_addr = match transport {
        Transport::Plain | Transport::Ws => None,
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
        addr: tls_addr.or(web_addr).unwrap_or(server.addr),
        also: Vec::new(),
        process: Some(server.process()),
        // Measuring only: chat-bench started this server with a certificate of its own.
        tls: tls_addr.map(|_| Tls::new(None)),
        ws: web_addr.is_some(),
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
    if storm {
        tokio::time::sleep(STORM_QUIET).await;
    }
    record
}

//! `chat-bench cluster`: v5-cluster's nodes against one v4, with the same clients.
//!
//! ```text
//! cargo build --release --workspace
//! target/release/chat-bench cluster            # needs redis-server on the PATH
//! ```
//!
//! It starts a `redis-server` of its own (a free loopback port, a temporary directory, no
//! persistence), `--nodes` v5-cluster nodes on it, and spreads `--clients` over them (client
//! `i` on node `i mod nodes`); then one v4 with the same clients. Each gets the same
//! workloads: a burst of `--clients` (as fast as the window allows), `compare`'s paced chat
//! (`--paced-clients`, 100, at 100 lines/s per sender) and paced chat again with all
//! `--clients`. Every line goes to every other client, on every node, so the tally (lost,
//! duplicated, out of order) checks SPEC 11's "exactly once, in order per sender" as well as
//! the speed.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::load::{self, Mode, RunReport, Target, Workload};
use crate::plans::{PACED_CLIENTS, PACED_RATE};
use crate::progress::Progress;
use crate::servers::{self, Server, Version};

/// How long redis-server may take to accept connections.
const REDIS_START: Duration = Duration::from_secs(10);

/// v5-cluster, for [`Server::start`]: a room, unthrottled, without join notices.
const V5: Version = Version {
    name: "v5-cluster",
    binary: "v5-cluster",
    model: "v4 on each node + a bridge through Redis",
    mode: Mode::Broadcast,
    variant: &[],
    unthrottle: &["--rate", "0"],
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Clients, spread over the nodes.
    #[arg(long, value_name = "N", default_value_t = 300)]
    clients: usize,

    /// Clients of the first paced run (`compare`'s paced chat); the second has all --clients.
    #[arg(long, value_name = "N", default_value_t = PACED_CLIENTS)]
    paced_clients: usize,

    /// v5-cluster nodes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    nodes: usize,

    /// How many of the clients send.
    #[arg(long, value_name = "S", default_value_t = 10)]
    senders: usize,

    /// Lines each sender sends in the burst.
    #[arg(long, value_name = "M", default_value_t = 5_000)]
    messages: u32,

    /// Seconds of paced chat.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    paced_seconds: u32,

    /// The redis-server program.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    redis_server: PathBuf,
}

/// A redis-server of chat-bench's own; killed, and its directory removed, when dropped.
struct Redis {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Redis {
    fn start(program: &PathBuf) -> anyhow::Result<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("chat-bench-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut child = Command::new(program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install redis-server)",
                    program.display()
                )
            })?;
        let stdout = child.stdout.take().context("redis-server's output")?;
        let (ready, is_ready) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                }
            }
        });
        let redis = Redis { child, dir, port };
        if is_ready.recv_timeout(REDIS_START).is_err() {
            bail!("redis-server did not start within {REDIS_START:?}");
        }
        Ok(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `chat-bench cluster`: prints both setups' numbers; exit status 2 if a line was lost,
/// duplicated or out of order.
pub async fn cluster(args: Args, descriptors: u64) -> anyhow::Result<i32> {
    load::check_descriptors(args.clients.max(args.paced_clients), descriptors)?;
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let v5 = servers::find_server(&V5, "cluster")?;
    let v4_version = Version::named("v4-async").context("v4-async is a version")?;
    let v4 = servers::find_server(&v4_version, "cluster")?;
    let max_clients = args.clients.max(args.paced_clients) + 1;
    let burst = Workload {
        mode: Mode::Broadcast,
        clients: args.clients,
        senders: args.senders,
        messages: args.messages,
        rate: None,
        window: load::default_window(Mode::Broadcast, args.clients, args.senders),
        hello: None,
        settle: Duration::ZERO,
    };
    let paced = |clients| Workload {
        clients,
        messages: (PACED_RATE as u32) * args.paced_seconds,
        rate: Some(PACED_RATE),
        window: 0,
        ..burst.clone()
    };
    let mut workloads = vec![burst.clone(), paced(args.paced_clients)];
    if args.clients != args.paced_clients {
        workloads.push(paced(args.clients));
    }
    let progress = Progress::new(None);
    let mut rows: Vec<(String, RunReport)> = Vec::new();
    for workload in workloads {
        let kind = format!(
            "{}, {} clients",
            if workload.rate.is_some() {
                "paced"
            } else {
                "burst"
            },
            workload.clients
        );
        let redis = Redis::start(&args.redis_server)?;
        let url = format!("redis://127.0.0.1:{}", redis.port);
        let mut nodes = Vec::new();
        for i in 0..args.nodes {
            let name = format!("bench{i}");
            let mut node_args = V5.compare_args();
            node_args.extend(["--redis", url.as_str(), "--node", name.as_str()]);
            nodes.push(Server::start(&v5, &V5, max_clients, &node_args)?);
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
        let target = Target {
            addr: addrs[0],
            also: addrs[1..].to_vec(),
            process: None,
            tls: None,
            ws: false,
        };
        progress.start_run(format!("{kind} over {} v5-cluster nodes", args.nodes));
        let (report, connections) = load::run(workload.clone(), target, &progress).await?;
        drop(connections);
        for node in nodes {
            node.stop();
        }
        drop(redis);
        rows.push((format!("v5-cluster, {} nodes, {kind}", args.nodes), report));

        let single = Server::start(&v4, &v4_version, max_clients, &v4_version.compare_args())?;
        let target = Target {
            addr: single.addr,
            also: Vec::new(),
            process: Some(single.process()),
            tls: None,
            ws: false,
        };
        progress.start_run(format!("{kind} on one v4-async"));
        let (report, connections) = load::run(workload, target, &progress).await?;
        drop(connections);
        single.stop();
        rows.push((format!("v4-async, one process, {kind}"), report));
    }
    progress.finish();
    println!("| setup | deliveries/s | p50 / p99 | lost / duplicated / out of order |");
    println!("|---|---|---|---|");
    let mut clean = true;
    for (setup, report) in &rows {
        let latency = report.latency.as_ref().map_or("-".to_owned(), |latency| {
            format!(
                "{:.2} / {:.2} ms",
                latency.p50_us as f64 / 1000.0,
                latency.p99_us as f64 / 1000.0
            )
        });
        println!(
            "| {setup} | {:.2} M/s | {latency} | {} / {} / {} |",
            report.deliveries_per_s / 1e6,
            report.lost,
            report.duplicated,
            report.out_of_order
        );
        clean &= !report.has_errors();
    }
    Ok(if clean { 0 } else { 2 })
}

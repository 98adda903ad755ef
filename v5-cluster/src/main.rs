//! # v5-cluster: one chat room across machines, on Redis
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no             # or any Redis 6.2+
//! cargo run -p v5-cluster -- --addr 127.0.0.1:8085 --node a      # terminal 1
//! cargo run -p v5-cluster -- --addr 127.0.0.1:8086 --node b      # terminal 2
//! telnet 127.0.0.1 8085; telnet 127.0.0.1 8086                   # one room
//! ```
//!
//! **The model.** Each node is a v4 for its own clients (the same room, sessions and
//! listeners, from the `v4_async` library, not a copy), plus a *bridge* to the other nodes
//! through Redis: it publishes what its own members say and do, and relays into its room what
//! the other nodes published. Redis is an engine the cluster borrows, not one we write: a
//! channel (pub/sub) carries the live traffic, a capped stream keeps the history, keys that
//! expire hold the nicknames and who is online.
//!
//! ```text
//!   clients --> node A (v4 room) --bridge--> outgoing queue --> one script per read:      +--> node B: subscription --> incoming queue --> B's room
//!                 ^   (bounded)                               XADD each line to the stream |        (bounded; overflow: read the stream)
//!                 |                                           + PUBLISH the batch, with ID -+--> node C ...
//!                 +------ incoming queue <-- subscription <------------------------------- (A skips what it published itself)
//! ```
//!
//! ## Reading order
//!
//! 1. `v4_async::bridge`: the seam in v4 (empty in v4's own binary) through which a room
//!    tells the cluster what its members do and asks it what only the cluster knows.
//! 2. [`cluster`]: this node's side of it: link state, members, claims, `/list`, `/pm`.
//! 3. [`link`]: connecting and reconnecting, publishing, the subscription, heartbeats, and
//!    the back-fill from the stream.
//! 4. [`keys`]: where the state lives in Redis, and the Lua scripts that change it in one step.
//! 5. [`wire`]: what nodes say to each other on the channel; [`queue`]: the bounded queues
//!    between the room and Redis.
//!
//! ## What changed since v4
//!
//! - **The room has a bridge.** Every join, leave, rename and batch of chat lines goes, under
//!   the room lock and so in the room's order, into a bounded queue toward Redis. A publisher
//!   sends a read's lines in **one** script call, however many lines it held: the script
//!   appends each line to the history stream and publishes the batch once, with the stream ID
//!   of its last entry, as one atomic step. Lines from the other nodes come back into the room
//!   through the same backpressure as a local reader's: they wait for room in every queue.
//! - **Names are claimed, not just checked.** `/nick` asks Redis first (`SET`-if-absent with an
//!   expiry, in a script that also knows "it is ours already"), then renames in the room.
//!   A heartbeat every few seconds keeps a node's claims and presence alive; a node that dies
//!   stops beating, and its names are free and its members leave `/list` within a claim's
//!   lifetime. A name is released by compare-and-delete, so a node never frees a name another
//!   node has claimed since. A member without a nickname is `ADDRESS@NODE`.
//! - **`/list`, `/pm`, `N online` and the history are the cluster's.** `/list` reads every
//!   node's presence; `/pm` finds the node that holds a name; `N online` counts what the other
//!   nodes last said they have; a newcomer's history is loaded from the stream when the node
//!   first reaches Redis, and kept up to date from the lines that pass.
//! - **The link can fail, and the room does not.** Redis unreachable at start: the node
//!   serves its own clients and tries again with back-off. The link drops: members hear
//!   `* server cluster link down: only users on this node hear you`, and `* server cluster
//!   link up` when it is back.
//!
//! ## What it costs
//!
//! Every line takes one more hop: client to node, node to Redis, Redis to every other node,
//! and their clients; a round trip to Redis, which across machines is the network's. Redis does the fan-out between nodes, once per node, not once per
//! client: a node turns one message into a write for each of its members, as in v4. `/nick`,
//! `/list` and `/pm` to someone elsewhere wait for a Redis answer. Each node keeps two
//! connections to Redis and two bounded queues; Redis keeps about ten thousand lines of
//! history.
//!
//! ## What the cluster does not promise
//!
//! - **Order across senders.** Each sender's lines arrive in the order sent, on every node.
//!   Two members on different nodes who speak at once may be seen in different orders on
//!   different nodes: each node hears its own members first.
//! - **Exactly once, as far as the stream reaches.** Pub/sub is at-most-once: what is
//!   published while a node is not subscribed is not kept for it. So chat lines carry their
//!   stream ID, and a node that reconnects (or whose incoming queue overflowed because its
//!   clients were slow) reads what it missed from the stream by ID and skips what it already
//!   has, the way Centrifugo recovers a channel. That reaches back about ten thousand lines.
//!   What is still lost: what a node's own members said while its link was down reached only
//!   them (their lines were not in the stream), and joins, leaves, renames and private lines
//!   sent while a node was cut off (those are not in the stream).
//! - **Names after a long split.** A node cut off for longer than a claim lives loses its
//!   claims; if another node's member takes one of those names meanwhile, both keep it until
//!   one renames (the log says so).
//! - **Why history is a stream and presence expires.** A stream is an append-only log with
//!   IDs that order it: the history survives every node restarting, and doubles as the
//!   record a node catches up from. Presence and claims are facts about live processes: a
//!   node that dies cannot take them back, so they expire unless a heartbeat renews them.

#![allow(rustdoc::private_intra_doc_links)]

mod cluster;
mod keys;
mod link;
mod queue;
mod wire;

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use chat_protocol::cli::{
    addr_arg, in_range, AnnounceLimit, ConnectionLimits, QueueLimit, StallLimit, V5_ADDR_DEFAULT,
};
use chat_protocol::startup;
use clap::Parser;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use v4_async::shutdown::ShutdownSignals;
use v4_async::tls::{CertSource, Identity};
use v4_async::{Config, Listeners, TlsListener, WebListener};

use crate::cluster::Cluster;

/// Default `--redis`: a Redis on this machine, its default port.
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// Default `--history`, as v4: enough recent lines for a newcomer to pick up the thread.
const HISTORY_DEFAULT: usize = 20;

/// `--history`: at most what the cluster's stream keeps.
const HISTORY_RANGE: RangeInclusive<usize> = 0..=keys::HISTORY_ENTRIES;

/// Default `--rate`, as v4.
const RATE_DEFAULT: f64 = 10.0;

/// Highest `--rate`, as v4.
const RATE_MAX: f64 = 1_000_000.0;

/// `--idle-timeout`: up to a week, as v4.
const IDLE_TIMEOUT_RANGE: RangeInclusive<u64> = 0..=7 * 24 * 60 * 60;

/// Default `--tls-handshake-timeout-ms` (SPEC 8), as v4.
const TLS_HANDSHAKE_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// `--tls-handshake-timeout-ms`, as v4.
const TLS_HANDSHAKE_TIMEOUT_RANGE_MS: RangeInclusive<u64> = 1..=600_000;

/// Longest `--node`: it is in every default name and every message between nodes.
const NODE_MAX: usize = 64;

/// `v5-cluster`: v4's room, shared across nodes through Redis.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "sock-chat v5: v4's chat room on several nodes, shared through Redis"
)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT (port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT", default_value = V5_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    /// The Redis every node of the cluster uses: redis://HOST:PORT, redis://:PASSWORD@HOST:PORT,
    /// or rediss://... for TLS.
    #[arg(long, value_name = "URL", default_value = REDIS_DEFAULT)]
    redis: String,

    /// This node's name, unique in the cluster (default: host name and port).
    #[arg(long, value_name = "NAME", value_parser = node_name)]
    node: Option<String>,

    #[command(flatten)]
    connections: ConnectionLimits,

    #[command(flatten)]
    queue: QueueLimit,

    #[command(flatten)]
    stall: StallLimit,

    #[command(flatten)]
    announce: AnnounceLimit,

    /// Chat lines replayed to each newcomer, oldest first (within half a --max-queue of bytes).
    #[arg(long, value_name = "LINES", default_value_t = HISTORY_DEFAULT,
          value_parser = in_range(HISTORY_RANGE))]
    history: usize,

    /// Lines per second each client may send (bursts of twice that); 0 turns the limit off.
    #[arg(long, value_name = "LINES_PER_SEC", default_value_t = RATE_DEFAULT, value_parser = lines_per_second)]
    rate: f64,

    /// Disconnect a client that sends no line for this many seconds; 0 never does.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = in_range(IDLE_TIMEOUT_RANGE))]
    idle_timeout: u64,

    /// Also listen for TLS here (needs --tls-cert and --tls-key, or --tls-self-signed).
    #[arg(long, value_name = "HOST:PORT", value_parser = addr_arg)]
    tls_addr: Option<SocketAddr>,

    /// The TLS certificate chain, PEM, leaf first (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// The TLS private key, PEM: PKCS#8, PKCS#1 or SEC1 (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Make a certificate for localhost, 127.0.0.1 and ::1 at start-up, valid for a year.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,

    /// Close a TLS connection whose handshake has not finished in this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = TLS_HANDSHAKE_TIMEOUT_DEFAULT_MS,
          value_parser = in_range(TLS_HANDSHAKE_TIMEOUT_RANGE_MS))]
    tls_handshake_timeout_ms: u64,

    /// Also serve the chat page and its WebSocket here (HTTPS and WSS with the TLS certificate).
    #[arg(long, value_name = "HOST:PORT", value_parser = addr_arg)]
    web_addr: Option<SocketAddr>,

    /// Another origin whose pages may open the WebSocket, e.g. https://chat.example.org
    /// (repeatable; the page's own origin always may).
    #[arg(long, value_name = "ORIGIN", value_parser = web_origin)]
    web_origin: Vec<String>,
}

impl Cli {
    /// The room's limits, and its bridge to the cluster.
    fn config(&self, cluster: Arc<Cluster>) -> Config {
        Config {
            max_clients: self.connections.max_clients,
            max_line: self.connections.max_line,
            max_per_ip: self.connections.max_per_ip,
            max_queue: self.queue.max_queue,
            stall: Duration::from_millis(self.stall.stall_ms),
            announce_limit: self.announce.announce_limit,
            history: self.history,
            rate: (self.rate > 0.0).then_some(self.rate),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
            bridge: Some(cluster),
        }
    }

    /// As v4: where the TLS listener goes and its certificate comes from, if anywhere.
    fn tls(&self) -> anyhow::Result<Option<(SocketAddr, CertSource)>> {
        let source = match (&self.tls_cert, &self.tls_key, self.tls_self_signed) {
            (Some(cert), Some(key), false) => Some(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, true) => Some(CertSource::SelfSigned),
            _ => None,
        };
        match (self.tls_addr, source) {
            (Some(addr), Some(source)) => Ok(Some((addr, source))),
            (None, None) => Ok(None),
            (Some(addr), None) => Err(anyhow!(
                "--tls-addr {addr} needs a certificate: --tls-cert FILE --tls-key FILE, or --tls-self-signed"
            )),
            (None, Some(_)) => Err(anyhow!(
                "a TLS certificate was given without --tls-addr to serve it on"
            )),
        }
    }
}

/// `--rate`, as v4.
fn lines_per_second(input: &str) -> Result<f64, String> {
    match input.trim().parse::<f64>() {
        Ok(rate) if (0.0..=RATE_MAX).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "\"{input}\" is out of range: give lines per second from 0 to {RATE_MAX} (0: no limit)"
        )),
    }
}

/// `--web-origin`, as v4: `scheme://host[:port]` as a browser sends it in `Origin`.
fn web_origin(input: &str) -> Result<String, String> {
    let origin = input.trim().trim_end_matches('/');
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains('/') => Ok(origin.to_owned()),
        _ => Err(format!(
            "\"{input}\" is not an origin: give http://HOST[:PORT] or https://HOST[:PORT]"
        )),
    }
}

/// `--node`: 1 to [`NODE_MAX`] printable characters without spaces (it ends every default
/// name, `ADDRESS@NODE`, which must stay one word for `/pm`).
fn node_name(input: &str) -> Result<String, String> {
    let printable = input.chars().all(|c| !c.is_whitespace() && !c.is_control());
    if input.is_empty() || input.len() > NODE_MAX || !printable {
        return Err(format!(
            "\"{input}\" is not a node name: give 1 to {NODE_MAX} characters without spaces"
        ));
    }
    Ok(input.to_owned())
}

/// The default `--node`: this machine's name and the port, unique per machine.
fn default_node(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| node_name(name).is_ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", addr.port())
}

/// The Redis URL with any password hidden, for the log.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn main() {
    let cli = Cli::parse();
    let _log = startup::init_logging();
    startup::raise_fd_limit();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(cli)));
    if let Err(error) = result {
        startup::exit_with(&error);
    }
}

/// Binds, joins the cluster, then serves the room until Ctrl-C, SIGTERM or SIGHUP.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    // A URL Redis cannot take is a start-up error; a Redis that does not answer is not (the
    // node starts anyway and keeps trying).
    let client = redis::Client::open(cli.redis.as_str()).with_context(|| {
        format!(
            "--redis {} is not a Redis URL",
            without_password(&cli.redis)
        )
    })?;
    let tls = cli.tls()?;
    let identity = tls
        .as_ref()
        .map(|(_, source)| Identity::new(source))
        .transpose()?;
    let signals = ShutdownSignals::listen();
    let plain = startup::bind_listener(cli.addr)?;
    let tls = match (tls, identity) {
        (Some((addr, _)), Some(identity)) => {
            let listener = tokio_listener(startup::bind_listener(addr)?)?;
            let bound = listener
                .local_addr()
                .context("cannot read the TLS listening address")?;
            tracing::info!("tls on {bound} (certificate {})", identity.fingerprint);
            Some(TlsListener {
                listener,
                acceptor: TlsAcceptor::from(identity.config),
                handshake_timeout: Duration::from_millis(cli.tls_handshake_timeout_ms),
            })
        }
        _ => None,
    };
    let web = match cli.web_addr {
        Some(addr) => {
            let listener = tokio_listener(startup::bind_listener(addr)?)?;
            let bound = listener
                .local_addr()
                .context("cannot read the web listening address")?;
            let tls = tls.as_ref().map(|tls| {
                let handshake_timeout = Duration::from_millis(cli.tls_handshake_timeout_ms);
                (tls.acceptor.clone(), handshake_timeout)
            });
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!("web on {scheme}://{bound}/");
            Some(WebListener {
                listener,
                tls,
                origins: cli.web_origin.clone(),
            })
        }
        None => None,
    };
    let bound = plain
        .local_addr()
        .context("cannot read the listening address")?;
    let node = cli.node.clone().unwrap_or_else(|| default_node(bound));
    tracing::info!(
        "cluster node {node}, Redis at {}",
        without_password(&cli.redis)
    );
    let cluster = Arc::new(Cluster::new(node, cli.history));
    // Before `listening on`: the first newcomer after a restart of every node gets the history.
    let last_seen = match link::preload(&client, cli.history).await {
        Some((lines, newest)) => {
            cluster.preload(lines);
            Some(newest)
        }
        None => None,
    };
    tokio::spawn(link::keep_linked(Arc::clone(&cluster), client));
    tokio::spawn(link::deliver(Arc::clone(&cluster), last_seen));
    startup::log_listening("v5-cluster", &plain)?;
    let listeners = Listeners {
        plain: tokio_listener(plain)?,
        tls,
        web,
    };
    let shutdown = async {
        let signal = signals.first().await;
        tracing::info!("{signal}: shutting down");
    };
    v4_async::run(listeners, &cli.config(Arc::clone(&cluster)), shutdown).await;
    link::leave(&cluster).await;
    Ok(())
}

/// A bound std listener, handed to tokio's reactor.
fn tokio_listener(listener: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

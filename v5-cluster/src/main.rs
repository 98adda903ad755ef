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
//!   node has claimed since. A claim Redis does not answer in time is refused to the member,
//!   and given back at the next heartbeat: a slow Redis may still run it when it catches up.
//!   A member without a nickname is `ADDRESS@NODE`.
//! - **`/list`, `/pm`, `N online` and the history are the cluster's.** `/list` reads every
//!   node's presence; `/pm` finds the node that holds a name; `N online` counts what the other
//!   nodes last said they have; a newcomer's history is loaded from the stream when the node
//!   first reaches Redis, and kept up to date from the lines that pass.
//! - **The link can fail, and the room does not.** Redis unreachable at start: the node
//!   serves its own clients and tries again with back-off. The link drops: members hear
//!   `* server cluster link down: only users on this node hear you`, and `* server cluster
//!   link up` when it is back. A Redis that turns the node away (a wrong password, a TLS
//!   certificate the node does not trust) is unreachable too, not a crash: the log says why,
//!   once while the reason stays the same, and never shows the password. A Redis that is
//!   slow, not gone, is the same fault: no command waits for it longer than a bound (a
//!   `/nick` is refused, `/list` shows this node's members), a link whose heartbeat goes
//!   unanswered counts as down, and a node told to stop meanwhile still stops within the two
//!   seconds, its goodbye to the cluster cut short.
//! - **The link can cross a network you do not trust.** A password in the URL
//!   (`redis://:PASSWORD@HOST:PORT`) keeps out whoever does not have it, and `rediss://`
//!   speaks TLS to Redis (rustls, like v4's TLS listener): the node checks Redis's certificate
//!   against the system's CAs, or against `--redis-ca FILE` for a certificate from a private
//!   CA (`rediss://...#insecure` checks nothing: encrypted, but to whoever answers; the log
//!   warns).
//!
//! ## What it costs
//!
//! Every line takes one more hop: client to node, node to Redis, Redis to every other node,
//! and their clients; a round trip to Redis, which across machines is the network's. Redis
//! does the fan-out between nodes, once per node, not once per client: a node turns one
//! message into a write for each of its members, as in v4. `/nick`, `/list` and `/pm` to
//! someone elsewhere wait for a Redis answer. Each node keeps two connections to Redis and two
//! bounded queues; Redis keeps about ten thousand lines of history.
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
//!   sent while a node was cut off (those are not in the stream). So is what overflows the
//!   bounded queue toward a Redis too slow for this node's members: it is dropped, heard on
//!   this node only, and the log says so, rather than held in memory without bound.
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
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use chat_protocol::cli::{addr_arg, V5_ADDR_DEFAULT};
use chat_protocol::startup;
use clap::Parser;
use redis::{ConnectionAddr, TlsCertificates};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::CertificateDer;
use v4_async::flags::{RoomFlags, HISTORY_RANGE};
use v4_async::shutdown::ShutdownSignals;

use crate::cluster::Cluster;

/// Default `--redis`: a Redis on this machine, its default port.
const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";

/// Longest `--node`: it is in every default name and every message between nodes.
const NODE_MAX: usize = 64;

// `--history` can ask for no more than the cluster's stream keeps.
const _: () = assert!(*HISTORY_RANGE.end() <= keys::HISTORY_ENTRIES);

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
    /// or rediss://... for TLS, Redis's certificate checked against the system's CAs (those in
    /// SSL_CERT_FILE if it is set) or --redis-ca's, or not at all with rediss://...#insecure.
    #[arg(long, value_name = "URL", default_value = REDIS_DEFAULT)]
    redis: String,

    /// For rediss://: a PEM file with the CA that signed Redis's certificate (a private CA),
    /// trusted instead of the system's CAs.
    #[arg(long, value_name = "FILE")]
    redis_ca: Option<PathBuf>,

    /// This node's name, unique in the cluster (default: host name and port).
    #[arg(long, value_name = "NAME", value_parser = node_name)]
    node: Option<String>,

    /// Every flag of v4's room, the same here.
    #[command(flatten)]
    room: RoomFlags,
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

/// The client every connection to Redis is made from, as `--redis` and `--redis-ca` ask. A URL
/// Redis cannot take or a CA file that is not one is a start-up error; a Redis that does not
/// answer, or whose certificate is not trusted, is not (the node starts anyway, keeps trying,
/// and the log says why it cannot get through).
fn redis_client(url: &str, ca: Option<&Path>) -> anyhow::Result<redis::Client> {
    let shown = without_password(url);
    let client =
        redis::Client::open(url).with_context(|| format!("--redis {shown} is not a Redis URL"))?;
    let (tls, insecure) = match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { insecure, .. } => (true, *insecure),
        _ => (false, false),
    };
    if insecure {
        // redis-rs's own way to say "do not check": for a Redis on a network you trust, or a
        // first try. Said at start, loudly, since nothing else will show it.
        anyhow::ensure!(
            ca.is_none(),
            "--redis {shown}: #insecure checks no certificate, so --redis-ca would do nothing"
        );
        tracing::warn!(
            "--redis {shown}: #insecure: Redis's certificate is not checked, so anyone between \
             this node and Redis can read and change what they say; give its CA with --redis-ca"
        );
    }
    let Some(ca) = ca else {
        return Ok(client);
    };
    // A CA for a plain link would protect nothing: the password and the chat would still
    // cross the network in the clear, while the person who gave it believes otherwise.
    anyhow::ensure!(
        tls,
        "--redis-ca is for a rediss:// URL, and --redis {shown} is not one"
    );
    let pem =
        std::fs::read(ca).with_context(|| format!("cannot read --redis-ca {}", ca.display()))?;
    // redis-rs skips what is not a certificate: a key file given by mistake would trust nothing.
    anyhow::ensure!(
        CertificateDer::pem_slice_iter(&pem).next().is_some(),
        "--redis-ca {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ca.display()
    );
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(url, certificates)
        .map_err(|error| anyhow::anyhow!("--redis-ca {} is not a usable CA: {error}", ca.display()))
}

/// The Redis URL with any password hidden, for the log.
fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn main() {
    v4_async::start(serve(Cli::parse()));
}

/// Binds, joins the cluster, then serves the room until Ctrl-C, SIGTERM or SIGHUP.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let client = redis_client(&cli.redis, cli.redis_ca.as_deref())?;
    let signals = ShutdownSignals::listen();
    let bound = cli.room.bind(cli.addr)?;
    let address = bound
        .plain
        .local_addr()
        .context("cannot read the listening address")?;
    let node = cli.node.clone().unwrap_or_else(|| default_node(address));
    tracing::info!(
        "cluster node {node}, Redis at {}",
        without_password(&cli.redis)
    );
    let cluster = Arc::new(Cluster::new(node, cli.room.history));
    // Before `listening on`: the first newcomer after a restart of every node gets the history.
    let last_seen = match link::preload(&client, cli.room.history).await {
        Some((lines, newest)) => {
            cluster.preload(lines);
            Some(newest)
        }
        None => None,
    };
    tokio::spawn(link::keep_linked(Arc::clone(&cluster), client));
    tokio::spawn(link::deliver(Arc::clone(&cluster), last_seen));
    startup::log_listening("v5-cluster", &bound.plain)?;
    // When the signal came: leaving the cluster fits in what is left of the shutdown's time.
    let asked_to_stop = std::sync::OnceLock::new();
    let shutdown = async {
        let signal = signals.first().await;
        let _ = asked_to_stop.set(tokio::time::Instant::now());
        tracing::info!("{signal}: shutting down");
    };
    let config = cli.room.config(Some(Arc::clone(&cluster) as _));
    v4_async::run(bound.into_listeners()?, &config, shutdown).await;
    let asked = asked_to_stop.get().copied();
    link::leave(&cluster, asked.unwrap_or_else(tokio::time::Instant::now)).await;
    Ok(())
}

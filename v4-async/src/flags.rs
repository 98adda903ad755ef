//! The room's command-line flags, shared by v4's binary and v5-cluster's, which flattens them
//! into its own (each binary keeps its `--addr`, since their default ports differ), and the
//! binding of the listeners they ask for.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use chat_protocol::cli::{
    addr_arg, in_range, AnnounceLimit, ConnectionLimits, QueueLimit, StallLimit,
};
use chat_protocol::startup;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::tls::{CertSource, Identity};
use crate::{Bridge, Config, Listeners, TlsListener, WebListener};

/// Default `--history`: enough recent lines for a newcomer to pick up the thread.
const HISTORY_DEFAULT: usize = 20;

/// `--history`: ten thousand lines is pages of scrollback, more than anyone reads on joining
/// (and what v5-cluster's history stream keeps). The history is bounded in bytes too, whatever
/// this says.
pub const HISTORY_RANGE: RangeInclusive<usize> = 0..=10_000;

/// Default `--rate`, lines per second per client: faster than anyone types, slower than a
/// script that would drown the room.
const RATE_DEFAULT: f64 = 10.0;

/// Highest `--rate`: a million lines a second is more than one client's reader gets through,
/// so a higher limit would be no limit at all, which is what `--rate 0` says.
const RATE_MAX: f64 = 1_000_000.0;

/// `--idle-timeout`: up to a week. Idle clients are cut off to free their slots, which a
/// longer wait would not; and an instant plus a week never overflows (an instant plus
/// `u64::MAX` seconds did, and panicked every client's task).
const IDLE_TIMEOUT_RANGE: RangeInclusive<u64> = 0..=7 * 24 * 60 * 60;

/// Default `--tls-handshake-timeout-ms` (SPEC 8): ten seconds is ample for a handshake across
/// the world, and bounds how long a connection that never starts one holds its slot.
const TLS_HANDSHAKE_TIMEOUT_DEFAULT_MS: u64 = 10_000;

/// `--tls-handshake-timeout-ms`: from a millisecond (tests shorten it) to ten minutes, past
/// which a slot held by a silent connection is a slot lost.
const TLS_HANDSHAKE_TIMEOUT_RANGE_MS: RangeInclusive<u64> = 1..=600_000;

/// Every flag of the room but `--addr`: limits, history, rate, idle timeout, TLS and the web.
#[derive(Debug, clap::Args)]
pub struct RoomFlags {
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
    pub history: usize,

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
    // The example is for `--help`, which shows it as written: no link markup.
    #[allow(rustdoc::bare_urls)]
    #[arg(long, value_name = "ORIGIN", value_parser = web_origin)]
    web_origin: Vec<String>,
}

/// The listeners the flags asked for, bound; the plaintext one not yet announced, so that a
/// binary can do what it must before its `listening on` line (v5 loads the history).
#[derive(Debug)]
pub struct Bound {
    /// `--addr`, bound: [`startup::log_listening`] announces it.
    pub plain: std::net::TcpListener,
    tls: Option<TlsListener>,
    web: Option<WebListener>,
}

impl RoomFlags {
    /// The room's limits, and its bridge to other processes if it has one (v5).
    pub fn config(&self, bridge: Option<Arc<dyn Bridge>>) -> Config {
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
            bridge,
        }
    }

    /// Binds `addr` and the TLS and web listeners asked for, logging `tls on ...` and
    /// `web on ...`. A half given TLS setup is an error found before anything is bound or
    /// logged: one sentence, never a server that silently speaks plaintext only, and no
    /// `listening on` line that a script might take for a server that started.
    pub fn bind(&self, addr: SocketAddr) -> anyhow::Result<Bound> {
        let tls = self.tls()?;
        let identity = tls
            .as_ref()
            .map(|(_, source)| Identity::new(source))
            .transpose()?;
        let plain = startup::bind_listener(addr)?;
        let handshake_timeout = Duration::from_millis(self.tls_handshake_timeout_ms);
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
                    handshake_timeout,
                })
            }
            _ => None,
        };
        let web = match self.web_addr {
            Some(addr) => {
                let listener = tokio_listener(startup::bind_listener(addr)?)?;
                let bound = listener
                    .local_addr()
                    .context("cannot read the web listening address")?;
                let tls = tls
                    .as_ref()
                    .map(|tls| (tls.acceptor.clone(), handshake_timeout));
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!("web on {scheme}://{bound}/");
                Some(WebListener {
                    listener,
                    tls,
                    origins: self.web_origin.clone(),
                    max_per_ip: self.connections.max_per_ip,
                })
            }
            None => None,
        };
        Ok(Bound { plain, tls, web })
    }

    /// Where the TLS listener goes and its certificate comes from, if there is one.
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

impl Bound {
    /// The listeners, handed to tokio, for [`crate::run`].
    pub fn into_listeners(self) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            plain: tokio_listener(self.plain)?,
            tls: self.tls,
            web: self.web,
        })
    }
}

/// A bound std listener, handed to tokio's reactor.
fn tokio_listener(listener: std::net::TcpListener) -> anyhow::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// `--rate`: lines per second from 0 to [`RATE_MAX`], fractions allowed (`0.5` is a line
/// every 2 s).
fn lines_per_second(input: &str) -> Result<f64, String> {
    match input.trim().parse::<f64>() {
        Ok(rate) if (0.0..=RATE_MAX).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "\"{input}\" is out of range: give lines per second from 0 to {RATE_MAX} (0: no limit)"
        )),
    }
}

/// `--web-origin`: `scheme://host[:port]` as a browser sends it in `Origin` (a trailing `/` is
/// dropped), so that it can be compared with one.
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

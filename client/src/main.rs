//! The client: one program that talks to every server, a chat UI in a terminal and plain
//! lines in a pipe.
//!
//! Start a server, then the client in as many terminals as you like, and type:
//!
//! ```text
//! cargo run -p v4-async                      # terminal 1: the server
//! cargo run -p client -- --nick alice        # terminal 2
//! cargo run -p client -- --nick bob          # terminal 3: bob sees what alice types
//! cargo run -p client -- 8081                # v1-threads (or 8082, v2-select): your own echo
//! printf 'hi\n' | cargo run -p client        # send one line, print what comes back, exit
//! ```
//!
//! The address is `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or a bare `PORT` (default
//! `127.0.0.1:8080`, v4); `--nick NAME` sends `/nick NAME` before anything you type.
//!
//! # Two modes
//!
//! When standard input and output are both terminals, the client opens a terminal UI
//! ([`ui`], SPEC 10): the conversation scrolls above, the line you type sits at the bottom,
//! and a line that arrives while you type never lands in the middle of it. Otherwise (a pipe,
//! a test, a script), or with `--plain`, it is in line mode ([`line`](mod@line), SPEC 6): each server
//! line is printed as it arrives, each stdin line is sent. Connecting, TLS and `--nick` are the
//! same code for both, here.
//!
//! # Many sources, one owner each
//!
//! A chat client waits on several sources at once: the keyboard, the server, and (in the UI)
//! signals and the clock that paces redraws. Each source gets its own thread or task that only
//! reads and hands what it read over a channel; exactly one place acts on it:
//!
//! - line mode: a thread reads stdin lines; the connection task prints server lines;
//! - UI: a thread reads terminal events (keys, paste, mouse, resize), a task reads and frames
//!   server lines, a task writes typed lines, and one loop owns the state and the screen.
//!
//! Blocking reads (stdin, the terminal) get threads, because a thread blocked on one source
//! cannot notice the other; the socket is async so that TCP and TLS are one code path, both a
//! byte stream to read and write.
//!
//! # TLS
//!
//! `--tls` speaks TLS 1.2 or 1.3 (rustls), trusting the system's roots, `--ca FILE`, or one
//! pinned certificate (`--fingerprint sha256:...`, what a v4 server with `--tls-self-signed`
//! logs at start). A certificate that does not verify ends the client with one sentence that
//! says why; there is never a fallback to plaintext. See [`tls`].
//!
//! # Trusting the server
//!
//! sock-chat servers already strip control characters, but this client may be pointed at
//! someone else's server: every received line is sanitised again before it is printed or
//! drawn, and a line is capped in memory ([`MAX_SERVER_LINE`]). Nothing a server sends can
//! move the cursor or change the terminal.

mod line;
mod tls;
mod ui;

use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use chat_protocol::cli::V4_ADDR_DEFAULT;
use chat_protocol::startup::exit_with;
use chat_protocol::{fingerprint, parse_addr};
use clap::Parser;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::Trust;

/// Bytes asked of the socket per `read`: many chat lines.
const READ_CHUNK: usize = 8 * 1024;

/// Longest server line the client holds, in bytes. Far above any line a sock-chat server sends
/// (a 1024-byte text plus a name); it only stops a hostile server from filling our memory with
/// one endless line. Longer lines are skipped with a warning.
const MAX_SERVER_LINE: usize = 1024 * 1024;

/// Typed lines waiting for the connection to send them. The input thread waits when this many
/// are queued, so a huge paste is read from stdin no faster than the server takes it.
const TYPED_LINES_QUEUED: usize = 64;

/// Talk to a sock-chat server: a chat UI in a terminal, lines in a pipe.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Server address: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(value_name = "ADDR", default_value = V4_ADDR_DEFAULT)]
    addr: String,

    /// Send "/nick NAME" first, before any typed line (v4 nicknames).
    #[arg(long, value_name = "NAME", value_parser = one_line)]
    nick: Option<String>,

    /// Line mode even in a terminal: print each server line, send each line typed.
    #[arg(long)]
    plain: bool,

    /// Speak TLS, trusting the system's root certificates (unless --ca or --fingerprint).
    #[arg(long)]
    tls: bool,

    /// With --tls: trust the CA certificate(s) in this PEM file instead of the system's roots.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls",
        conflicts_with = "fingerprint"
    )]
    ca: Option<PathBuf>,

    /// With --tls: trust exactly the certificate with this SHA-256 (sha256:HEX, as the server
    /// logs it; colons and case ignored).
    #[arg(long, value_name = "sha256:HEX", requires = "tls", value_parser = fingerprint::parse)]
    fingerprint: Option<fingerprint::Sha256Digest>,
}

impl Cli {
    /// `None` for plaintext.
    fn trust(&self) -> Option<Trust> {
        if !self.tls {
            return None;
        }
        Some(match (&self.ca, self.fingerprint) {
            (_, Some(pin)) => Trust::Fingerprint(pin),
            (Some(ca), None) => Trust::Ca(ca.clone()),
            (None, None) => Trust::SystemRoots,
        })
    }

    /// The UI needs a keyboard to read and a screen to draw on; anything else is line mode.
    fn wants_ui(&self) -> bool {
        !self.plain && io::stdin().is_terminal() && io::stdout().is_terminal()
    }
}

/// A `--nick` holding a newline would send a second line; the server checks the rest.
fn one_line(input: &str) -> Result<String, String> {
    if input.chars().any(char::is_control) {
        Err("a name cannot contain control characters such as newlines".to_owned())
    } else {
        Ok(input.to_owned())
    }
}

fn main() {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|runtime| runtime.block_on(run(&cli)));
    if let Err(error) = result {
        exit_with(&error)
    }
}

/// A connection to the server: plain TCP or TLS, read and written the same way.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let addr = parse_addr(&cli.addr)?;
    let mut server = connect(cli, addr).await?;
    if let Some(nick) = &cli.nick {
        // Sent before anything reads the keyboard, so it is the first line whatever is typed.
        server
            .write_all(format!("/nick {nick}\n").as_bytes())
            .await
            .with_context(|| format!("cannot send /nick to {addr}"))?;
    }
    if cli.wants_ui() {
        ui::run(server, addr, cli.tls).await
    } else {
        line::run(server, addr).await
    }
}

/// Connects over TCP, then, with `--tls`, makes the TLS handshake; every failure is one
/// sentence naming the address.
async fn connect(cli: &Cli, addr: SocketAddr) -> anyhow::Result<Box<dyn Connection>> {
    let tcp = TcpStream::connect(addr).await.map_err(|error| {
        if error.kind() == io::ErrorKind::ConnectionRefused {
            anyhow!(
                "cannot connect to {addr}: {error}; is a server running? Try cargo run -p v4-async"
            )
        } else {
            anyhow!("cannot connect to {addr}: {error}")
        }
    })?;
    // Typed lines are small and someone waits for each.
    let _ = tcp.set_nodelay(true);
    let Some(trust) = cli.trust() else {
        return Ok(Box::new(tcp));
    };
    let connector = tokio_rustls::TlsConnector::from(tls::client_config(&trust)?);
    let name = tls::server_name(&cli.addr, addr);
    match connector.connect(name, tcp).await {
        Ok(tls) => Ok(Box::new(tls)),
        Err(error) => Err(match tls::rejection(&error) {
            Some(why) => anyhow!("the certificate of {addr} was rejected: {why}"),
            None => anyhow!("TLS handshake with {addr} failed: {error}"),
        }),
    }
}

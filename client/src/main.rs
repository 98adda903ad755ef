//! The line-based client: one program that talks to all four servers.
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
//! # Two sources, one program
//!
//! A chat client waits on two sources at once: the keyboard (stdin) and the server (the socket).
//! Both reads block, and a single thread blocked on one cannot notice the other. So stdin has
//! its own thread, which hands each line to the connection over a channel, and the connection
//! runs in a small tokio runtime that waits on both the socket and that channel:
//!
//! ```text
//!   stdin --> input thread: read a line --channel--+
//!                                                  v
//!  stdout <-- connection: print each server line <-- socket (TCP, or TLS over TCP) <--> server
//!                         send each typed line    -->
//! ```
//!
//! (tokio's own stdin would also do, but it reads on a thread the runtime must wait for at
//! exit: a client whose server closed would hang until someone pressed Enter.) The socket side
//! is async so that TCP and TLS are one code path: both are a byte stream to read and write.
//!
//! # End of input, end of connection
//!
//! At end of stdin (Ctrl-D, or the end of a pipe) the client half-closes the connection (TLS
//! first sends its `close_notify`): the server reads end of file, delivers our last line,
//! sends what it still has for us and closes. The client prints all of it and exits 0 when the
//! server closes. If the server closes first (`* server full`, a stopped server) the client
//! exits at once, while the input thread is still blocked on stdin: nobody has to press Enter
//! to leave. A reset connection exits 1 with one sentence.
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
//! someone else's server: every received line is sanitised again before it reaches the
//! terminal, and a line is capped in memory ([`MAX_SERVER_LINE`]).

mod tls;

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use chat_protocol::cli::V4_ADDR_DEFAULT;
use chat_protocol::startup::exit_with;
use chat_protocol::{fingerprint, parse_addr, sanitize, Frame, LineFramer};
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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

/// Servers end lines with `\r\n` (for telnet); the terminal gets the platform's own newline.
const NEWLINE: &str = if cfg!(windows) { "\r\n" } else { "\n" };

/// Talk to a sock-chat server: print what it sends, send what you type.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Server address: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(value_name = "ADDR", default_value = V4_ADDR_DEFAULT)]
    addr: String,

    /// Send "/nick NAME" first, before any typed line (v4 nicknames).
    #[arg(long, value_name = "NAME", value_parser = one_line)]
    nick: Option<String>,

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
        // Sent before the input thread exists, so it is the first line whatever is typed.
        server
            .write_all(format!("/nick {nick}\n").as_bytes())
            .await
            .with_context(|| format!("cannot send /nick to {addr}"))?;
    }
    let (typed_tx, typed_rx) = mpsc::channel(TYPED_LINES_QUEUED);
    // Never joined: when the server closes, `main` returns and the process ends, even while this
    // thread is still blocked on stdin.
    std::thread::spawn(move || read_typed_lines(io::stdin().lock(), typed_tx));
    converse(server, typed_rx, addr).await
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

/// The input thread: every stdin line goes to the connection; end of input closes the channel.
fn read_typed_lines(input: impl BufRead, typed: mpsc::Sender<Vec<u8>>) {
    for line in input.split(b'\n') {
        let mut line = match line {
            Ok(line) => line,
            Err(error) => {
                eprintln!("warning: cannot read stdin ({error}); sending nothing more");
                break;
            }
        };
        line.push(b'\n');
        if typed.blocking_send(line).is_err() {
            // The connection is over; it says why.
            return;
        }
    }
}

/// Prints each server line as it arrives while a task sends each typed line, until the server
/// closes. Reading never waits for writing: a server that reads us only as fast as we read it
/// (v2 stops reading a client whose echoes wait) would otherwise wait for us forever.
async fn converse(
    server: Box<dyn Connection>,
    typed: mpsc::Receiver<Vec<u8>>,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    let (mut from_server, to_server) = tokio::io::split(server);
    tokio::spawn(send_typed_lines(typed, to_server));
    let mut terminal = Terminal {
        out: io::stdout().lock(),
        failed: None,
    };
    let mut framer = LineFramer::new(MAX_SERVER_LINE);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let received = match from_server.read(&mut chunk).await {
            Ok(0) => break,
            Ok(received) => received,
            // A TLS server that closes without its close_notify: the chat is over all the
            // same, and nothing it sent is lost.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(anyhow!("lost the connection to {addr}: {error}")),
        };
        framer.push(&chunk[..received], |frame| terminal.show(frame));
        terminal.check()?;
    }
    // A last line without its `\r\n` is still a line.
    framer.finish(|frame| terminal.show(frame));
    terminal.check()
}

/// Sends each typed line; at end of input, half-closes (TLS: `close_notify` first) so the
/// server reads end of file and closes when it is done with us.
async fn send_typed_lines(
    mut typed: mpsc::Receiver<Vec<u8>>,
    mut to_server: impl AsyncWrite + Unpin,
) {
    while let Some(line) = typed.recv().await {
        if to_server.write_all(&line).await.is_err() {
            // The server is gone: the reader says why.
            return;
        }
    }
    let _ = to_server.shutdown().await;
}

/// Standard output, remembering the first write error (the framer's callback cannot return it).
struct Terminal<W: Write> {
    out: W,
    failed: Option<io::Error>,
}

impl<W: Write> Terminal<W> {
    fn show(&mut self, frame: Frame<'_>) {
        if self.failed.is_some() {
            return;
        }
        match frame {
            Frame::Line(line) => {
                // A line with nothing printable left is not shown at all.
                let Some(text) = sanitize(line) else { return };
                // Flushed per line so that lines appear as they arrive, also in a pipe.
                let written = write!(self.out, "{text}{NEWLINE}").and_then(|()| self.out.flush());
                self.failed = written.err();
            }
            Frame::TooLong => {
                eprintln!("warning: skipped a server line longer than {MAX_SERVER_LINE} bytes")
            }
        }
    }

    fn check(&mut self) -> anyhow::Result<()> {
        match self.failed.take() {
            Some(error) => Err(anyhow!("cannot write to stdout: {error}")),
            None => Ok(()),
        }
    }
}

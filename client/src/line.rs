//! Line mode (SPEC 6): for pipes, tests and `--plain`. Every server line is printed as it
//! arrives; every stdin line is sent.
//!
//! ```text
//!   stdin --> input thread: read a line --channel--+
//!                                                  v
//!  stdout <-- connection: print each server line <-- socket (TCP, or TLS over TCP) <--> server
//!                         send each typed line    -->
//! ```
//!
//! (tokio's own stdin would also do, but it reads on a thread the runtime must wait for at
//! exit: a client whose server closed would hang until someone pressed Enter.)
//!
//! # End of input, end of connection
//!
//! At end of stdin (Ctrl-D, or the end of a pipe) the client half-closes the connection (TLS
//! first sends its `close_notify`): the server reads end of file, delivers our last line,
//! sends what it still has for us and closes. The client prints all of it and exits 0 when the
//! server closes. If the server closes first (`* server full`, a stopped server) the client
//! exits at once, while the input thread is still blocked on stdin: nobody has to press Enter
//! to leave. A reset connection exits 1 with one sentence.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;

use anyhow::anyhow;
use chat_protocol::{sanitize, Frame, LineFramer};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::{Connection, MAX_SERVER_LINE, READ_CHUNK, TYPED_LINES_QUEUED};

/// Servers end lines with `\r\n` (for telnet); the terminal gets the platform's own newline.
const NEWLINE: &str = if cfg!(windows) { "\r\n" } else { "\n" };

/// Runs line mode over an open connection until the server closes it.
pub async fn run(server: Box<dyn Connection>, addr: SocketAddr) -> anyhow::Result<()> {
    let (typed_tx, typed_rx) = mpsc::channel(TYPED_LINES_QUEUED);
    // Never joined: when the server closes, `main` returns and the process ends, even while this
    // thread is still blocked on stdin.
    std::thread::spawn(move || read_typed_lines(io::stdin().lock(), typed_tx));
    converse(server, typed_rx, addr).await
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
pub async fn send_typed_lines(
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

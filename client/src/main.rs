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
//! # Two threads, because two things block
//!
//! A chat client waits on two sources at once: the keyboard (stdin) and the server (the socket).
//! Both reads block, and a thread blocked on one cannot notice the other: a single-threaded
//! client would either print nothing while you type, or send nothing until someone speaks. So
//! the client has two threads, each blocking on one source, sharing the socket (a `TcpStream`
//! can be read in one thread while a clone of it is written in another):
//!
//! ```text
//!   stdin --> input thread:  read a line, write_all(line + "\n") --> socket --> server
//!  stdout <-- main thread:   read, frame, sanitise, print        <-- socket <-- server
//! ```
//!
//! (v2's `poll` loop could wait on both in one thread; threads keep this program short and work
//! the same on every platform, where stdin cannot always be polled.)
//!
//! # End of input, end of connection
//!
//! At end of stdin (Ctrl-D, or the end of a pipe) the input thread half-closes the socket
//! (`shutdown(Write)`): the server reads end of file, delivers our last line, sends what it
//! still has for us and closes. The main thread prints all of it and exits 0 when the server
//! closes. If the server closes first (`* server full`, a stopped server) the main thread
//! returns while the input thread is still blocked on stdin; returning from `main` ends the
//! process, so nobody has to press Enter to leave. A reset connection exits 1 with one sentence.
//!
//! # Trusting the server
//!
//! sock-chat servers already strip control characters, but this client may be pointed at
//! someone else's server: every received line is sanitised again before it reaches the
//! terminal, and a line is capped in memory ([`MAX_SERVER_LINE`]).

use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};

use anyhow::{anyhow, Context};
use chat_protocol::cli::{addr_arg, V4_ADDR_DEFAULT};
use chat_protocol::startup::exit_with;
use chat_protocol::{sanitize, Frame, LineFramer};
use clap::Parser;

/// Bytes asked of the socket per `read`: many chat lines, small enough to live on the stack.
const READ_CHUNK: usize = 8 * 1024;

/// Longest server line the client holds, in bytes. Far above any line a sock-chat server sends
/// (a 1024-byte text plus a name); it only stops a hostile server from filling our memory with
/// one endless line. Longer lines are skipped with a warning.
const MAX_SERVER_LINE: usize = 1024 * 1024;

/// Servers end lines with `\r\n` (for telnet); the terminal gets the platform's own newline.
const NEWLINE: &str = if cfg!(windows) { "\r\n" } else { "\n" };

/// Talk to a sock-chat server: print what it sends, send what you type.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Server address: HOST:PORT, [IPv6]:PORT, :PORT or PORT.
    #[arg(value_name = "ADDR", default_value = V4_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    /// Send "/nick NAME" first, before any typed line (v4 nicknames).
    #[arg(long, value_name = "NAME", value_parser = one_line)]
    nick: Option<String>,
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
    if let Err(error) = run(&cli) {
        exit_with(&error)
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let addr = cli.addr;
    let server = TcpStream::connect(addr).map_err(|error| {
        if error.kind() == ErrorKind::ConnectionRefused {
            anyhow!(
                "cannot connect to {addr}: {error}; is a server running? Try cargo run -p v4-async"
            )
        } else {
            anyhow!("cannot connect to {addr}: {error}")
        }
    })?;
    if let Some(nick) = &cli.nick {
        // Sent before the input thread exists, so it is the first line whatever is typed.
        (&server)
            .write_all(format!("/nick {nick}\n").as_bytes())
            .with_context(|| format!("cannot send /nick to {addr}"))?;
    }
    let to_server = server
        .try_clone()
        .context("cannot share the socket with the input thread")?;
    // Never joined: when the server closes, `main` returns and the process ends, even while this
    // thread is still blocked on stdin.
    std::thread::spawn(move || send_input(io::stdin().lock(), to_server));
    print_server_lines(server, addr)
}

/// The input thread: every stdin line goes out with `\n`; end of input half-closes the socket.
fn send_input(input: impl BufRead, mut server: TcpStream) {
    for line in input.split(b'\n') {
        let mut line = match line {
            Ok(line) => line,
            Err(error) => {
                eprintln!("warning: cannot read stdin ({error}); sending nothing more");
                break;
            }
        };
        line.push(b'\n');
        if server.write_all(&line).is_err() {
            // The server is gone; the main thread sees it on its read and says why.
            return;
        }
    }
    // Ignored for the same reason: if the socket is already closed, the main thread reports it.
    let _ = server.shutdown(Shutdown::Write);
}

/// The main thread: prints each server line as it arrives until the server closes.
fn print_server_lines(mut server: TcpStream, addr: SocketAddr) -> anyhow::Result<()> {
    let mut terminal = Terminal {
        out: io::stdout().lock(),
        failed: None,
    };
    let mut framer = LineFramer::new(MAX_SERVER_LINE);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let received = match server.read(&mut chunk) {
            Ok(0) => break,
            Ok(received) => received,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(anyhow!("lost the connection to {addr}: {error}")),
        };
        framer.push(&chunk[..received], |frame| terminal.show(frame));
        terminal.check()?;
    }
    // A last line without its `\r\n` is still a line.
    framer.finish(|frame| terminal.show(frame));
    terminal.check()
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

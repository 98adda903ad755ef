//! The `client` binary run as a real process, with piped stdin and stdout: what tests of the
//! client (tests/client.rs) and of TLS (tests/tls.rs) drive.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::{binary, DEADLINE};

/// The client binary, running, with a line-by-line view of what it prints.
#[derive(Debug)]
pub struct ClientProcess {
    child: Child,
    /// `None` once closed: the client sees end of input.
    stdin: Option<ChildStdin>,
    /// Printed lines as raw bytes, without their `\n`, so a stray `\r` or escape would show.
    stdout: Receiver<Vec<u8>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a client process ended.
#[derive(Debug)]
pub struct Exit {
    pub status: ExitStatus,
    /// Lines printed after the last one the test had already read.
    pub printed: Vec<String>,
    pub stderr: String,
}

impl ClientProcess {
    pub fn spawn(args: &[&str]) -> ClientProcess {
        let mut child = Command::new(binary("client"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdout = child.stdout.take().unwrap();
        let (lines, printed) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.ends_with(b"\n") {
                            line.pop();
                        }
                        if lines.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        ClientProcess {
            stdin: child.stdin.take(),
            child,
            stdout: printed,
            stderr: Some(stderr),
        }
    }

    /// Types a line, as a user at the keyboard would.
    pub fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .expect("write to client stdin");
        stdin.flush().expect("flush client stdin");
    }

    /// Ctrl-D: the client sees end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Skips printed lines until one satisfies `wanted` (welcome, join notices...).
    pub fn expect_printed(&self, wanted: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let line = printable(line);
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(error) => panic!("the client never printed the expected line: {error}"),
            }
        }
    }

    /// Waits (with the deadline) until the client closes its stdout, i.e. exits, and collects the
    /// rest of what it printed. Stdin is left as it is: a client must not need it closed.
    pub fn wait_exit(mut self) -> Exit {
        let start = Instant::now();
        let mut printed = Vec::new();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stdout.recv_timeout(left) {
                Ok(line) => printed.push(printable(line)),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the client did not exit within {DEADLINE:?}; printed {printed:?}")
                }
            }
        }
        let status = self.child.wait().expect("wait for the client");
        let stderr = self.stderr.take().unwrap().join().expect("stderr reader");
        Exit {
            status,
            printed,
            stderr,
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A printed line as text, after checking the terminal would obey nothing in it.
fn printable(line: Vec<u8>) -> String {
    let text = String::from_utf8(line).expect("the client prints UTF-8");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\t'),
        "the client printed a control character: {text:?}"
    );
    text
}

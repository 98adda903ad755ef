//! The four servers: what each one is, where its release binary is, and how chat-bench
//! starts one (port 0, `RUST_LOG=warn`), finds its address and stops it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::load::Mode;
use crate::process::Process;

/// How long a server may take to print `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server may take to exit after SIGTERM before it is killed (v4 says goodbye to
/// every client first; the spec gives it 2 seconds).
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Server log lines kept per run, to explain a failure.
const LOG_LINES_KEPT: usize = 20;

/// One of the four servers, or v2 or v3 waiting with epoll.
#[derive(Debug, Clone, Copy)]
pub struct Version {
    /// What tables and records call it.
    pub name: &'static str,
    /// Its release binary, beside chat-bench's.
    pub binary: &'static str,
    pub model: &'static str,
    pub mode: Mode,
    /// Arguments that make it this variant of its binary: `--poller epoll` (SPEC 12).
    pub variant: &'static [&'static str],
    /// Arguments that turn off a limit that is a feature, not a cost to measure: v4's rate
    /// limit would drop a benchmark's lines (or a soak's) on purpose.
    pub unthrottle: &'static [&'static str],
}

impl Version {
    /// The one named `name`.
    pub fn named(name: &str) -> Option<Version> {
        VERSIONS.into_iter().find(|v| v.name == name)
    }

    /// What `compare` starts it with, beyond `--addr` and `--max-clients`: rooms with
    /// `--announce-limit 0` (a join notice to every client for each of 10 000 joins is not what
    /// is measured), and unthrottled.
    pub fn compare_args(&self) -> Vec<&'static str> {
        let mut args = Vec::new();
        if self.mode == Mode::Broadcast {
            args.extend(["--announce-limit", "0"]);
        }
        args.extend(self.unthrottle);
        args.extend(self.variant);
        args
    }
}

/// The versions, in teaching order.
pub const VERSIONS: [Version; 4] = [
    Version {
        name: "v1-threads",
        binary: "v1-threads",
        model: "one thread per client, blocking I/O",
        mode: Mode::Echo,
        unthrottle: &[],
        variant: &[],
    },
    Version {
        name: "v2-select",
        binary: "v2-select",
        model: "one thread, poll(2) loop",
        mode: Mode::Echo,
        unthrottle: &[],
        variant: &[],
    },
    Version {
        name: "v3-broadcast",
        binary: "v3-broadcast",
        model: "one thread, poll(2) loop, chat room",
        mode: Mode::Broadcast,
        unthrottle: &[],
        variant: &[],
    },
    Version {
        name: "v4-async",
        binary: "v4-async",
        model: "tokio: task per client + writer task",
        mode: Mode::Broadcast,
        unthrottle: &["--rate", "0"],
        variant: &[],
    },
];

/// v2 and v3 waiting with `epoll(7)` instead of `poll(2)` (`--poller epoll`, SPEC 12): the
/// same binaries and loops, measured beside the versions above in the crowd workload.
pub const EPOLL_VERSIONS: [Version; 2] = [
    Version {
        name: "v2-select epoll",
        binary: "v2-select",
        model: "one thread, epoll(7) loop",
        mode: Mode::Echo,
        unthrottle: &[],
        variant: &["--poller", "epoll"],
    },
    Version {
        name: "v3-broadcast epoll",
        binary: "v3-broadcast",
        model: "one thread, epoll(7) loop, chat room",
        mode: Mode::Broadcast,
        unthrottle: &[],
        variant: &["--poller", "epoll"],
    },
];

/// A server started for one run (or one soak); killed if dropped without [`Server::stop`].
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl Server {
    /// Starts `binary` on port 0 with `RUST_LOG=warn`, `--max-clients` and `args`, and waits
    /// for its `listening on` line.
    pub fn start(
        binary: &Path,
        version: &Version,
        max_clients: usize,
        args: &[&str],
    ) -> anyhow::Result<Server> {
        let mut child = Command::new(binary)
            .args(["--addr", "127.0.0.1:0", "--max-clients"])
            .arg(max_clients.to_string())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (found, listening) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            drain(stream, Arc::clone(&log), found.clone());
        }
        let addr = match listening.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let said = log_text(&log);
                bail!(
                    "{} did not say \"listening on\" within {} s; it said: {said}",
                    version.name,
                    START_TIMEOUT.as_secs()
                );
            }
        };
        Ok(Server { child, addr, log })
    }

    pub fn process(&self) -> Process {
        Process {
            pid: self.child.id() as i32,
        }
    }

    /// False once the process has exited (crashed, or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL if it has not exited in [`STOP_TIMEOUT`]; returns its last words.
    pub fn stop(mut self) -> Vec<String> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log
            .lock()
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a server's output for as long as it runs (a pipe nobody reads would eventually block
/// it), reports the `listening on` address, and keeps the last lines.
fn drain(
    stream: Box<dyn Read + Send>,
    log: Arc<Mutex<VecDeque<String>>>,
    found: mpsc::Sender<SocketAddr>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listening_addr(&line) {
                let _ = found.send(addr);
                continue;
            }
            if let Ok(mut log) = log.lock() {
                if log.len() == LOG_LINES_KEPT {
                    log.pop_front();
                }
                log.push_back(line);
            }
        }
    });
}

fn log_text(log: &Mutex<VecDeque<String>>) -> String {
    let lines: Vec<String> = log
        .lock()
        .map(|log| log.iter().cloned().collect())
        .unwrap_or_default();
    if lines.is_empty() {
        "nothing".to_owned()
    } else {
        lines.join(" / ")
    }
}

/// The address in a `... listening on 127.0.0.1:40123` line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, after) = line.split_once("listening on ")?;
    after.split_whitespace().next()?.parse().ok()
}

/// How to build what [`find_servers`] looks for.
const RELEASE_BUILD: &str = "cargo build --release --workspace";

/// Where the server binaries are: beside this executable, built in release mode. `command`
/// (`compare`, `soak`) is named in the advice given to a debug build.
fn release_dir(command: &str) -> anyhow::Result<PathBuf> {
    if cfg!(debug_assertions) {
        bail!(
            "this chat-bench is a debug build, and debug servers measure the compiler's \
             checks, not the models: run `{RELEASE_BUILD}`, then `target/release/chat-bench \
             {command}` (or `cargo run --release -p chat-bench -- {command}`)"
        );
    }
    let exe = std::env::current_exe().context("cannot find chat-bench's own path")?;
    let dir = exe.parent().context("chat-bench's path has no folder")?;
    Ok(dir.to_owned())
}

/// The folder that holds every version's release binary, or an error naming the missing ones.
pub fn find_servers() -> anyhow::Result<PathBuf> {
    let dir = release_dir("compare")?;
    let missing: Vec<&str> = VERSIONS
        .iter()
        .map(|version| version.binary)
        .filter(|binary| !dir.join(binary).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found in {}: run `{RELEASE_BUILD}` first",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(dir)
}

/// One version's release binary, for `command`.
pub fn find_server(version: &Version, command: &str) -> anyhow::Result<PathBuf> {
    let path = release_dir(command)?.join(version.binary);
    if !path.is_file() {
        bail!("{} not found: run `{RELEASE_BUILD}` first", path.display());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_the_address() {
        assert_eq!(
            listening_addr("2026-05-01T12:00:00Z  INFO v4-async listening on 127.0.0.1:40123"),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            listening_addr("v1-threads listening on [::1]:8081"),
            Some("[::1]:8081".parse().unwrap())
        );
        assert_eq!(listening_addr("WARN accept failed"), None);
    }
}

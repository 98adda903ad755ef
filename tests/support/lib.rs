//! Helpers that let each integration test read like the scenario it checks.
//!
//! Every test starts a real server binary on port 0, reads the port from its `listening on`
//! line, and talks to it over real TCP on 127.0.0.1. Reads have a deadline instead of sleeps:
//! a test waits exactly as long as the server needs, and fails with a message if it never
//! answers.

pub mod client_process;
pub mod tls;
pub mod web;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once. Generous, because CI is a
/// busy 2-core machine; a passing test never waits for it.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// `--stall-ms` for a room where some reader stops or trickles and must be evicted while the
/// others, which keep reading, must not. A reader that keeps reading drains half a queue in
/// milliseconds, but on a loaded 2-core machine a test thread can wait hundreds of them for a
/// CPU (with 200 ms, a reader that kept up was evicted once while the whole workspace was being
/// tested); four times the default keeps such a wait from looking like a stall, and is still
/// far shorter than a stopped or trickling reader holds the room.
pub const PATIENT_STALL_MS: &str = "2000";

/// `--stall-ms` for a room where every reader keeps reading, so none may be evicted: the
/// longest the flag takes. Such a reader empties its queue in milliseconds, but while the whole
/// workspace is tested on a loaded 2-core machine a test thread has waited more than two
/// seconds for a CPU (a fast reader was evicted once at 2000 ms); no thread waits a minute.
pub const NEVER_STALL_MS: &str = "60000";

/// The server binaries, so that one test body can run against several of them. v2 and v3
/// come twice, once per `--poller` (SPEC 12): the same behaviour is expected of both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    V1Threads,
    V2Select,
    V3Broadcast,
    V4Async,
    /// v2-select with `--poller epoll`.
    V2SelectEpoll,
    /// v3-broadcast with `--poller epoll`.
    V3BroadcastEpoll,
    /// Needs a Redis: see `tests/cluster.rs`.
    V5Cluster,
}

impl Server {
    /// The cargo package and binary name.
    pub fn name(self) -> &'static str {
        match self {
            Server::V1Threads => "v1-threads",
            Server::V2Select | Server::V2SelectEpoll => "v2-select",
            Server::V3Broadcast | Server::V3BroadcastEpoll => "v3-broadcast",
            Server::V4Async => "v4-async",
            Server::V5Cluster => "v5-cluster",
        }
    }

    /// The arguments that choose how it waits: `--poller epoll` for the epoll variants.
    pub fn poller_args(self) -> &'static [&'static str] {
        match self {
            Server::V2SelectEpoll | Server::V3BroadcastEpoll => &["--poller", "epoll"],
            _ => &[],
        }
    }

    /// Starts this server on port 0 with the extra arguments and waits for `listening on`.
    pub fn start(self, args: &[&str]) -> Running {
        Running::start(self, args)
    }

    /// True for the chat rooms (v3, v4), where a line goes to the others and not back to its
    /// sender; false for the echo servers (v1, v2).
    pub fn is_room(self) -> bool {
        matches!(
            self,
            Server::V3Broadcast | Server::V3BroadcastEpoll | Server::V4Async | Server::V5Cluster
        )
    }

    /// Like [`Server::start`], with v4's rate limit off (`--rate 0`): for tests that send more
    /// lines than a person types, where the limit is not what is being checked.
    pub fn start_unthrottled(self, args: &[&str]) -> Running {
        let mut all = Vec::from(args);
        if matches!(self, Server::V4Async | Server::V5Cluster) {
            all.extend(["--rate", "0"]);
        }
        Running::start(self, &all)
    }

    /// The server process with `args`, logging at info, its output piped.
    fn spawn(self, args: &[&str]) -> Child {
        self.spawn_logging(args, "info")
    }

    /// The server process with `args`, logging at `level` (`RUST_LOG`), its output piped.
    fn spawn_logging(self, args: &[&str], level: &str) -> Child {
        Command::new(binary(self.name()))
            .args(self.poller_args())
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server")
    }

    /// Runs this server with `args` expecting it to fail at start-up; returns what it printed.
    pub fn start_expecting_failure(self, args: &[&str]) -> Output {
        let mut child = self.spawn(args);
        let start = Instant::now();
        while child.try_wait().expect("poll child").is_none() {
            if start.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!(
                    "{} {args:?} kept running; it should have failed",
                    self.name()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect output")
    }

    /// Like [`Server::start_unthrottled`], logging only warnings (`RUST_LOG=warn`, as the
    /// benchmarks run): for floods of many thousands of lines, each of which `info` would log
    /// and the test would keep. Evictions are warnings, so they are still logged.
    pub fn start_unthrottled_quietly(self, args: &[&str]) -> Running {
        let mut all = Vec::from(args);
        if matches!(self, Server::V4Async | Server::V5Cluster) {
            all.extend(["--rate", "0"]);
        }
        Running::start_logging(self, &all, "warn")
    }
}

/// The path of a workspace binary, built once per test process with the same profile as the
/// tests (`cargo test` does not build other packages' binaries).
pub fn binary(package: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    // target/<profile>/deps/<test binary>
    let test_exe = std::env::current_exe().expect("current exe");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = profile_dir.join(package);
    if built.insert(package.to_owned()) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "-p", package]);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    path
}

/// Everything a server has written to stdout and stderr so far, one entry per line.
#[derive(Debug, Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    fn collect(self: &Arc<Self>, stream: impl Read + Send + 'static) {
        let log = Arc::clone(self);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                log.lines.lock().unwrap().push(line);
                log.grew.notify_all();
            }
        });
    }

    fn wait_for(&self, needle: &str) -> Option<String> {
        let start = Instant::now();
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|line| line.contains(needle)) {
                return Some(line.clone());
            }
            let left = DEADLINE.checked_sub(start.elapsed())?;
            lines = self.grew.wait_timeout(lines, left).unwrap().0;
        }
    }
}

/// A server process started by a test; killed when dropped.
#[derive(Debug)]
pub struct Running {
    pub server: Server,
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Log>,
}

impl Running {
    fn start(server: Server, args: &[&str]) -> Running {
        Running::start_logging(server, args, "info")
    }

    fn start_logging(server: Server, args: &[&str], level: &str) -> Running {
        let mut with_addr = vec!["--addr", "127.0.0.1:0"];
        with_addr.extend_from_slice(args);
        let mut child = server.spawn_logging(&with_addr, level);
        let log = Arc::new(Log::default());
        log.collect(child.stdout.take().unwrap());
        log.collect(child.stderr.take().unwrap());
        let mut running = Running {
            server,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
        };
        let line = running.log.wait_for("listening on ").unwrap_or_else(|| {
            panic!(
                "{} printed no `listening on` line: {:?}",
                server.name(),
                running.log.lines.lock().unwrap()
            )
        });
        let addr = line.split("listening on ").nth(1).unwrap();
        let addr = addr.split_whitespace().next().unwrap();
        running.addr = addr.parse().expect("address in the listening line");
        running
    }

    /// A new client connection, joined (for rooms, its join has been processed once a line it
    /// sends gets a reply or is relayed; see [`Client::sync`]).
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// A new client connection from the loopback address `source` (`127.0.0.2`, say), which
    /// `--max-per-ip` counts, unlike `127.0.0.1`.
    pub fn connect_from(&self, source: std::net::IpAddr) -> Client {
        Client::connect_from(self.addr, source)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the server logged a line containing `needle`, and returns it.
    pub fn expect_log(&self, needle: &str) -> String {
        self.log.wait_for(needle).unwrap_or_else(|| {
            panic!(
                "{} never logged {needle:?}; it logged {:?}",
                self.server.name(),
                self.log.lines.lock().unwrap()
            )
        })
    }

    /// Every line the server has logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    /// A sender and someone who hears it, both served; see [`Conversation`].
    pub fn conversation(&self) -> Conversation {
        let sender_only = |sender| Conversation {
            addr: self.addr,
            sender,
            observer: None,
        };
        if !self.server.is_room() {
            return sender_only(self.connect());
        }
        let mut observer = self.connect();
        if self.server == Server::V4Async {
            // v4 welcomes a client once it is in the room; lines sent before that may miss it.
            observer.read_until(|line| line.starts_with("* welcome "));
        }
        let mut sender = self.connect();
        // The observer hearing the sender proves both are in the room; the sender hearing the
        // observer consumes what the sender got on joining (v4's welcome and history).
        sender.send_line(PROBE);
        let probe = chat_line(sender.addr(), PROBE);
        observer.read_until(|line| line == probe);
        observer.send_line(PROBE);
        let probe = chat_line(observer.addr(), PROBE);
        sender.read_until(|line| line == probe);
        Conversation {
            observer: Some(observer),
            ..sender_only(sender)
        }
    }

    /// Waits until the server holds at most `limit` descriptors and returns how many it holds.
    /// Closes are processed asynchronously and nothing can be read to learn when, so this polls
    /// /proc until the deadline.
    pub fn expect_fds_at_most(&self, limit: usize) -> usize {
        let start = Instant::now();
        loop {
            let open = self.open_fds();
            if open <= limit {
                return open;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} still holds {open} descriptors after {DEADLINE:?}; expected at most {limit}",
                self.server.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open descriptors of the server process, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Resident memory of the server process in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Peak resident memory of the server process in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Sends SIGTERM and waits for the exit status (v4's graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.wait_exit()
    }

    /// Waits (with the deadline) for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll child").is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The line a conversation sends to make sure a client is served before a test starts.
const PROBE: &str = "probe";

/// `<ADDR> says: <TEXT>`, the chat line a client's text becomes.
pub fn chat_line(sender: SocketAddr, text: &str) -> String {
    format!("{sender} says: {text}")
}

/// Notices about who is in the room: `* welcome ...`, `* X joined (N online)`,
/// `* X left (N online)`.
pub fn is_membership_notice(line: &str) -> bool {
    line.starts_with("* ")
        && (line.starts_with("* welcome ")
            || line.contains(" joined (")
            || line.contains(" left ("))
}

/// Someone who speaks and someone who hears it, whichever version runs, so that one test body
/// checks a behaviour against all four servers: on the echo servers (v1, v2) the sender hears
/// its own lines; in a room (v3, v4) a second client, already in the room, hears them. Errors
/// about the sender's lines go to the sender in both cases.
#[derive(Debug)]
pub struct Conversation {
    addr: SocketAddr,
    /// The client whose lines are checked.
    pub sender: Client,
    /// The other client in a room; `None` on an echo server.
    observer: Option<Client>,
}

impl Conversation {
    /// The client that receives the sender's lines: the sender itself on an echo server.
    pub fn observer(&mut self) -> &mut Client {
        self.observer.as_mut().unwrap_or(&mut self.sender)
    }

    /// The sender and, in a room, the other client: for tests that close one of them.
    pub fn into_clients(self) -> (Client, Option<Client>) {
        (self.sender, self.observer)
    }

    /// The chat line the sender's `text` becomes.
    pub fn says(&self, text: &str) -> String {
        chat_line(self.sender.addr(), text)
    }

    /// The next line the observer receives, skipping notices about who joined or left.
    pub fn heard(&mut self) -> String {
        self.observer()
            .read_until(|line| !is_membership_notice(line))
    }

    /// Checks that the next thing the observer hears is the sender saying `text`.
    pub fn expect_heard(&mut self, text: &str) {
        let expected = self.says(text);
        assert_eq!(self.heard(), expected);
    }

    /// Connects one more client and returns it once the server has relayed (or echoed) a line
    /// from it. What it received on joining (v4's welcome) is left unread.
    pub fn add_client(&mut self) -> Client {
        let client = Client::connect(self.addr);
        self.served(client)
    }

    /// Like [`Conversation::add_client`], connecting from the loopback address `source`
    /// (`127.0.0.2`, say), which `--max-per-ip` counts.
    pub fn add_client_from(&mut self, source: std::net::IpAddr) -> Client {
        let client = Client::connect_from(self.addr, source);
        self.served(client)
    }

    /// Returns `client` once the server has relayed (or echoed) a line from it.
    fn served(&mut self, mut client: Client) -> Client {
        client.send_line(PROBE);
        let probe = chat_line(client.addr(), PROBE);
        match &mut self.observer {
            Some(observer) => observer.read_until(|line| line == probe),
            None => client.read_until(|line| line == probe),
        };
        client
    }
}

/// One `#[test]` per server for each test body `fn name(server: Server)`:
///
/// ```text
/// server_tests! {
///     [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
///         overlong_line_gets_error,
///         empty_lines_are_ignored,
///     }
///     [v3_broadcast, v3_broadcast_epoll, v4_async] => { joins_are_announced }
/// }
/// ```
///
/// makes `overlong_line_gets_error::v1_threads` and so on: `cargo test overlong` runs one
/// behaviour against every version, `cargo test v2_select` every behaviour against one.
#[macro_export]
macro_rules! server_tests {
    ($($servers:tt => { $($body:ident),* $(,)? })*) => {
        $($($crate::server_tests!(@body $body $servers);)*)*
    };
    (@body $body:ident [$($server:ident),* $(,)?]) => {
        mod $body {
            $(
                #[test]
                fn $server() {
                    super::$body($crate::server_named!($server));
                }
            )*
        }
    };
}

/// The [`Server`] a test name in [`server_tests!`] stands for; any other name does not compile.
#[doc(hidden)]
#[macro_export]
macro_rules! server_named {
    (v1_threads) => {
        $crate::Server::V1Threads
    };
    (v2_select) => {
        $crate::Server::V2Select
    };
    (v3_broadcast) => {
        $crate::Server::V3Broadcast
    };
    (v4_async) => {
        $crate::Server::V4Async
    };
    (v2_select_epoll) => {
        $crate::Server::V2SelectEpoll
    };
    (v3_broadcast_epoll) => {
        $crate::Server::V3BroadcastEpoll
    };
    (v5_cluster) => {
        $crate::Server::V5Cluster
    };
}

/// One client connection, reading lines with a deadline: over TCP (`Client`, what
/// [`Running::connect`] gives) or over TLS ([`tls::TlsClient`], what
/// [`tls::TlsListener::connect`] gives). Sending and reading lines are the same for both; what
/// only one transport has (a raw socket to reset, a TLS `close_notify`) is in its own `impl`.
#[derive(Debug)]
pub struct Client<S = TcpStream> {
    stream: S,
    /// Bytes read but not yet returned as lines.
    pending: Vec<u8>,
}

/// What a [`Client`] talks over: a byte stream, and the TCP socket under it.
pub trait Transport: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Transport for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl<S: Transport> Client<S> {
    /// Over `stream`, whose reads and writes already time out at [`DEADLINE`].
    fn over_stream(stream: S) -> Client<S> {
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    /// Our own address, as the server names us (`127.0.0.1:52344`).
    pub fn addr(&self) -> SocketAddr {
        self.stream.tcp().local_addr().unwrap()
    }

    /// The TCP socket, for a test that writes, shapes or closes it directly.
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
        // TLS holds records until flushed; TCP's flush does nothing.
        self.stream.flush().expect("flush");
    }

    /// Sends `text` followed by `\n`.
    pub fn send_line(&mut self, text: &str) {
        self.send(format!("{text}\n").as_bytes());
    }

    /// Next line from the server exactly as sent, with its `\r\n`. Panics at the deadline.
    pub fn read_raw_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                return self.pending.drain(..=end).collect();
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed while waiting for a line; unfinished: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => panic!(
                    "no line within {DEADLINE:?}; unfinished: {:?}",
                    String::from_utf8_lossy(&self.pending)
                ),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Next line from the server, which must end with `\r\n`; returned without it.
    pub fn read_line(&mut self) -> String {
        let raw = self.read_raw_line();
        let text = String::from_utf8(raw).expect("server lines are UTF-8");
        let Some(line) = text.strip_suffix("\r\n") else {
            panic!("server line {text:?} does not end with \\r\\n");
        };
        line.to_owned()
    }

    /// Reads the next line and checks it is exactly `expected`.
    pub fn expect_line(&mut self, expected: &str) {
        assert_eq!(self.read_line(), expected);
    }

    /// Reads lines until one satisfies `wanted`, skipping the others (join notices, say).
    pub fn read_until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.read_line();
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Reads until the connection ends: returns every byte not yet returned as a line, and the
    /// error that ended the connection if it did not end cleanly. Panics at the deadline.
    fn read_rest(&mut self) -> (Vec<u8>, Option<std::io::Error>) {
        let mut rest = std::mem::take(&mut self.pending);
        loop {
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (rest, None),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => panic!("server did not close within {DEADLINE:?}"),
                Err(e) => return (rest, Some(e)),
            }
        }
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from the local address `source` (any port); see [`tcp_from`].
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        Client::over(tcp_from(addr, source))
    }

    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        Client::over_stream(stream)
    }

    /// Sends `bytes` one TCP segment per byte: Nagle's algorithm off, one write each.
    pub fn send_byte_by_byte(&mut self, bytes: &[u8]) {
        self.stream.set_nodelay(true).expect("TCP_NODELAY");
        for byte in bytes {
            self.send(std::slice::from_ref(byte));
        }
    }

    /// Half-closes: the server sees end of file, and we can still read.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// Reads until the server closes the connection; returns the lines that came first.
    pub fn read_to_close(&mut self) -> Vec<String> {
        match self.read_rest() {
            (rest, None) => server_lines(&rest),
            (rest, Some(e)) if e.kind() == ErrorKind::ConnectionReset => server_lines(&rest),
            (_, Some(e)) => panic!("read failed: {e}"),
        }
    }

    /// Reads until the server closes the connection with a FIN, and returns the lines that came
    /// first. Panics if the connection was reset instead: a reset can destroy the last lines
    /// before they are read, which is what SPEC 4's closing rule prevents.
    pub fn read_to_orderly_close(&mut self) -> Vec<String> {
        match self.read_rest() {
            (rest, None) => server_lines(&rest),
            (rest, Some(e)) => panic!(
                "the connection ended with {e} instead of a FIN; read so far: {:?}",
                String::from_utf8_lossy(&rest[rest.len().saturating_sub(200)..])
            ),
        }
    }

    /// Closes the connection with a TCP reset instead of a FIN: what a crashed client does.
    pub fn reset(self) {
        socket_linger_zero(&self.stream);
        drop(self);
    }
}

/// A TCP connection to `addr` from the local address `source` (any port): Linux answers for
/// all of 127.0.0.0/8, so tests can play several hosts.
pub fn tcp_from(addr: SocketAddr, source: std::net::IpAddr) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    socket.into()
}

/// What a server sent, cut into its `\r\n`-ended lines (a last line without one included).
pub fn server_lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split_terminator("\r\n")
        .map(str::to_owned)
        .collect()
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// `SO_LINGER` with a zero timeout makes `close` send RST.
fn socket_linger_zero(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
}

/// What a server that had to refuse to start printed on stderr, after checking that it exited
/// with a failure status and without a panic or a backtrace.
pub fn failed_start(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "exit status {}: {stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("RUST_BACKTRACE"), "{stderr}");
    stderr
}

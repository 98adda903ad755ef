//! `chat-bench run` against real servers on port 0: every delivery is counted, nothing is
//! invented, and a run that cannot get its clients in says why.
//!
//! Tiny workloads in a debug build: these check the counting, not the speed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use sock_chat_tests::binary;

/// How long a server may take to say where it listens. Generous for a busy machine; a
/// passing test never waits for it.
const DEADLINE: Duration = Duration::from_secs(10);

/// A server started on port 0; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(package: &str, args: &[&str]) -> Server {
        let mut child = Command::new(binary(package))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (found, listening) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading after the address, so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((_, addr)) = line.split_once("listening on ") {
                    let _ = found.send(addr.trim().to_owned());
                }
            }
        });
        let addr = listening
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{package} never said where it listens"));
        Server {
            child,
            addr: addr.parse().expect("a socket address"),
        }
    }

    /// `chat-bench run` against this server, with its PID; `args` are the workload.
    fn bench(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args(["run", "--json", "--addr", &self.addr.to_string()])
            .args(["--server-pid", &self.child.id().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run chat-bench")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON report of a run that must have succeeded.
fn report(output: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chat-bench failed: {stderr}");
    serde_json::from_slice(&output.stdout).expect("a JSON report on stdout")
}

fn number(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

fn assert_clean(report: &Value, deliveries: u64) {
    assert_eq!(number(report, "expected"), deliveries, "{report}");
    assert_eq!(number(report, "delivered"), deliveries, "{report}");
    for field in [
        "lost",
        "duplicated",
        "out_of_order",
        "unexpected",
        "disconnected",
    ] {
        assert_eq!(number(report, field), 0, "{field} in {report}");
    }
    assert_eq!(report["stalled"], false);
    assert_eq!(
        report["latency"]["count"].as_u64(),
        Some(deliveries),
        "every delivery has a latency: {report}"
    );
}

#[test]
fn every_room_delivery_is_counted_once() {
    // Default announce limit: join notices and welcomes arrive too and must not count.
    let v4 = Server::start("v4-async", &["--rate", "0"]);
    let output = v4.bench(&[
        "--mode",
        "broadcast",
        "--clients",
        "5",
        "--senders",
        "2",
        "--messages",
        "50",
    ]);
    let report = report(&output);
    // Each of 2 senders' 50 lines reaches the 4 other clients.
    assert_clean(&report, 2 * 50 * 4);
    let server = &report["server"];
    assert!(server["threads"].as_u64().unwrap() >= 1, "{report}");
    assert!(server["peak_rss_kb"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn every_echo_is_counted_once() {
    let v1 = Server::start("v1-threads", &[]);
    let output = v1.bench(&[
        "--mode",
        "echo",
        "--clients",
        "4",
        "--senders",
        "3",
        "--messages",
        "40",
    ]);
    // Each sender gets its own 40 lines back; the fourth client only listens.
    assert_clean(&report(&output), 3 * 40);
}

#[test]
fn paced_lines_are_all_counted_and_the_pacer_reports_its_lateness() {
    let v4 = Server::start("v4-async", &["--rate", "0", "--announce-limit", "0"]);
    let output = v4.bench(&[
        "--clients",
        "3",
        "--senders",
        "2",
        "--messages",
        "10",
        "--rate",
        "200",
    ]);
    let report = report(&output);
    assert_clean(&report, 2 * 10 * 2);
    assert_eq!(
        report["pacer_lateness"]["count"].as_u64(),
        Some(20),
        "{report}"
    );
}

#[test]
fn clients_the_server_turns_away_are_reported_with_its_reason() {
    let v4 = Server::start("v4-async", &["--max-clients", "2"]);
    let output = v4.bench(&["--clients", "4", "--senders", "1", "--messages", "5"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("clients were confirmed in"), "{stderr}");
    assert!(stderr.contains("server full"), "{stderr}");
}

#[test]
fn a_hello_line_goes_first_and_the_token_is_found_whatever_the_name() {
    // v4 understands the hello as a nickname: lines then read "b3 says: #b...".
    let v4 = Server::start("v4-async", &["--rate", "0"]);
    let output = v4.bench(&[
        "--hello",
        "/nick b{i}",
        "--clients",
        "4",
        "--senders",
        "2",
        "--messages",
        "30",
    ]);
    assert_clean(&report(&output), 2 * 30 * 3);
}

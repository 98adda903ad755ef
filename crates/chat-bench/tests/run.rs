//! `chat-bench run` against real servers on port 0: every delivery is counted, nothing is
//! invented, and a run that cannot get its clients in says why.
//!
//! Tiny workloads in a debug build: these check the counting, not the speed.

use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sock_chat_tests::{Running, Server};

/// `chat-bench run` against `server`, with its PID; `args` are the workload.
fn bench(server: &Running, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["run", "--json", "--addr", &server.addr.to_string()])
        .args(["--server-pid", &server.pid().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chat-bench")
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
    let v4 = Server::V4Async.start(&["--rate", "0"]);
    let output = bench(
        &v4,
        &[
            "--mode",
            "broadcast",
            "--clients",
            "5",
            "--senders",
            "2",
            "--messages",
            "50",
        ],
    );
    let report = report(&output);
    // Each of 2 senders' 50 lines reaches the 4 other clients.
    assert_clean(&report, 2 * 50 * 4);
    let server = &report["server"];
    assert!(server["threads"].as_u64().unwrap() >= 1, "{report}");
    assert!(server["peak_rss_kb"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn every_echo_is_counted_once() {
    let v1 = Server::V1Threads.start(&[]);
    let output = bench(
        &v1,
        &[
            "--mode",
            "echo",
            "--clients",
            "4",
            "--senders",
            "3",
            "--messages",
            "40",
        ],
    );
    // Each sender gets its own 40 lines back; the fourth client only listens.
    assert_clean(&report(&output), 3 * 40);
}

#[test]
fn paced_lines_are_all_counted_and_the_pacer_reports_its_lateness() {
    let v4 = Server::V4Async.start(&["--rate", "0", "--announce-limit", "0"]);
    let output = bench(
        &v4,
        &[
            "--clients",
            "3",
            "--senders",
            "2",
            "--messages",
            "10",
            "--rate",
            "200",
        ],
    );
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
    let v4 = Server::V4Async.start(&["--max-clients", "2"]);
    let output = bench(
        &v4,
        &["--clients", "4", "--senders", "1", "--messages", "5"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("clients were confirmed in"), "{stderr}");
    assert!(stderr.contains("server full"), "{stderr}");
}

#[test]
fn a_hello_line_goes_first_and_the_token_is_found_whatever_the_name() {
    // v4 understands the hello as a nickname: lines then read "b3 says: #b...".
    let v4 = Server::V4Async.start(&["--rate", "0"]);
    let output = bench(
        &v4,
        &[
            "--hello",
            "/nick b{i}",
            "--clients",
            "4",
            "--senders",
            "2",
            "--messages",
            "30",
        ],
    );
    assert_clean(&report(&output), 2 * 30 * 3);
}

#[test]
fn a_run_over_tls_counts_every_delivery_once() {
    let v4 = Server::V4Async.start(&[
        "--rate",
        "0",
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-self-signed",
    ]);
    let tls = v4.tls_listener();
    for trust in [
        ["--fingerprint", tls.fingerprint.as_str()],
        ["--tls-insecure", ""],
    ] {
        let trust: Vec<&str> = trust.into_iter().filter(|arg| !arg.is_empty()).collect();
        let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args(["run", "--json", "--tls", "--addr", &tls.addr.to_string()])
            .args(&trust)
            .args(["--clients", "5", "--senders", "2", "--messages", "50"])
            .stdin(Stdio::null())
            .output()
            .expect("run chat-bench");
        // 2 senders x 50 lines x 4 other clients.
        assert_clean(&report(&output), 400);
    }
}

#[test]
fn a_run_over_websocket_counts_every_delivery_once() {
    let v4 = Server::V4Async.start(&["--rate", "0", "--web-addr", "127.0.0.1:0"]);
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "run",
            "--json",
            "--ws",
            "--addr",
            &v4.web_addr().to_string(),
        ])
        .args(["--clients", "5", "--senders", "2", "--messages", "50"])
        .stdin(Stdio::null())
        .output()
        .expect("run chat-bench");
    // 2 senders x 50 lines x 4 other clients, each line one WebSocket message.
    assert_clean(&report(&output), 400);
}

#[test]
fn a_run_over_tls_with_the_wrong_fingerprint_fails_in_one_sentence() {
    let v4 = Server::V4Async.start(&["--tls-addr", "127.0.0.1:0", "--tls-self-signed"]);
    let tls = v4.tls_listener();
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let output = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "run",
            "--tls",
            "--fingerprint",
            &wrong,
            "--addr",
            &tls.addr.to_string(),
        ])
        .args(["--clients", "2", "--senders", "1", "--messages", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run chat-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not the pinned"), "{stderr}");
}

//! v4's limits (SPEC 2, 5 and 13): its own numeric flags refused at start-up outside what the
//! server can honour, a history that cannot grow the server's memory, and `--max-per-ip`.

use std::net::IpAddr;

use sock_chat_tests::{Client, Running, Server};

/// `* welcome <ADDR>, N online - type /help for commands`.
fn welcome(client: &Client, online: usize) -> String {
    format!(
        "* welcome {}, {online} online - type /help for commands",
        client.addr()
    )
}

// --- numeric flags (SPEC 2) ---

#[test]
fn v4_numeric_flags_out_of_range_are_refused_at_start_naming_the_flag_and_the_range() {
    for (flag, value, range) in [
        // Once accepted, this overflowed every client's idle deadline and panicked its task.
        ("--idle-timeout", "18446744073709551615", "0 to 604800"),
        ("--idle-timeout", "-1", "0 to 604800"),
        ("--history", "100000000", "0 to 10000"),
        ("--rate", "1e300", "0 to 1000000"),
        ("--rate", "-1", "0 to 1000000"),
        ("--rate", "NaN", "0 to 1000000"),
        ("--rate", "inf", "0 to 1000000"),
    ] {
        // `--flag=value`, so that clap hands "-1" to the flag instead of reading it as one.
        let output = Server::V4Async.start_expecting_failure(&[&format!("{flag}={value}")]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag}={value} was accepted");
        assert!(!stderr.contains("panicked"), "{flag}={value}: {stderr}");
        let sentence = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or_default();
        assert!(
            sentence.contains(flag) && sentence.contains(range),
            "{flag}={value}: the first line should name the flag and the range {range}: {stderr}"
        );
    }
}

#[test]
fn the_largest_values_in_range_are_honoured() {
    let server = Server::V4Async.start(&[
        "--idle-timeout",
        "604800",
        "--history",
        "10000",
        "--rate",
        "1000000",
    ]);
    // Each client's task starts its idle clock, takes from its bucket and leaves the room.
    for _ in 0..3 {
        let mut client = server.connect();
        client.expect_line(&welcome(&client, 1));
        client.send_line("hello");
        client.send_line("/quit");
        client.read_to_close();
    }
    let mut last = server.connect();
    last.expect_line(&welcome(&last, 1));
}

// --- history (SPEC 5) ---

#[test]
fn the_history_keeps_the_server_small_however_many_long_lines_it_may_hold() {
    /// Lines of the longest --max-line allowed here, 64 KiB.
    const LINE: usize = 65_536;
    /// 32 MiB in all: what the history would hold if only --history bounded it.
    const LINES: usize = 512;
    /// What the server may grow by: far above what it needs for a line in flight and a
    /// bounded history, far below what those lines weigh.
    const GROWTH_MAX_KIB: u64 = 8 * 1024;
    let server = Server::V4Async.start(&[
        "--history",
        "10000",
        "--max-line",
        &LINE.to_string(),
        "--rate",
        "0",
    ]);
    let mut talker = server.connect();
    talker.expect_line(&welcome(&talker, 1));
    let before = server.rss_kib();
    let line = format!("{}\n", "x".repeat(LINE));
    for _ in 0..LINES {
        talker.send(line.as_bytes());
    }
    // Its answer comes after every line before it was kept.
    talker.send_line("/nick");
    talker.expect_line(&format!("* you are {}", talker.addr()));
    let grew = server.rss_kib().saturating_sub(before);
    assert!(
        grew < GROWTH_MAX_KIB,
        "the server grew by {grew} KiB with {LINES} lines of {LINE} bytes"
    );
}

// --- --max-per-ip (SPEC 13) ---

/// `127.0.0.N`: a loopback address that `--max-per-ip` counts like any other host.
fn host(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A client from `ip`, welcomed as the room's `online`th member.
fn join_from(server: &Running, ip: IpAddr, online: usize) -> Client {
    let mut client = server.connect_from(ip);
    client.expect_line(&welcome(&client, online));
    client
}

#[test]
fn a_connection_beyond_max_per_ip_is_told_why_and_closed_in_order() {
    let server = Server::V4Async.start(&["--max-per-ip", "2"]);
    let _first = join_from(&server, host(2), 1);
    let _second = join_from(&server, host(2), 2);
    for _ in 0..3 {
        let mut third = server.connect_from(host(2));
        assert_eq!(
            third.read_to_orderly_close(),
            ["* error: too many connections from your address (max 2)"]
        );
    }
    // Another host is not held to this one's count.
    join_from(&server, host(3), 3);
}

#[test]
fn max_per_ip_never_limits_this_machine() {
    let server = Server::V4Async.start(&["--max-per-ip", "1"]);
    let _here: Vec<Client> = (1..=5)
        .map(|online| join_from(&server, host(1), online))
        .collect();
}

#[test]
fn a_slot_freed_by_a_leaving_client_can_be_taken_again() {
    let server = Server::V4Async.start(&["--max-per-ip", "1"]);
    let mut witness = join_from(&server, host(1), 1);
    let mut leaver = join_from(&server, host(2), 2);
    witness.expect_line(&format!("* {} joined (2 online)", leaver.addr()));
    let mut refused = server.connect_from(host(2));
    assert_eq!(
        refused.read_to_orderly_close(),
        ["* error: too many connections from your address (max 1)"]
    );

    leaver.send_line("/quit");
    leaver.read_to_close();
    witness.expect_line(&format!("* {} left (1 online)", leaver.addr()));
    join_from(&server, host(2), 2);
}

/// Turning a connection away holds its descriptor for a moment (the notice, then a drain), so
/// a storm of refused connections is turned away at most 256 at a time (`TURNING_AWAY_MAX`);
/// the rest get the short answer at once. However many crowd in, the server holds a bounded
/// number of descriptors for them, and each still reads why it was refused.
#[test]
fn a_storm_of_refused_connections_holds_a_bounded_number_of_descriptors() {
    const STORM: usize = 600;
    const TURNING_AWAY_MAX: usize = 256;
    const SLACK: usize = 16;
    let server = Server::V4Async.start(&["--max-clients", "1"]);
    let mut seated = server.connect();
    seated.read_until(|line| line.starts_with("* welcome "));
    let baseline = server.open_fds();
    let mut storm: Vec<Client> = (0..STORM).map(|_| server.connect()).collect();
    for client in &mut storm {
        client.expect_line("* server full (1 clients)");
    }
    // Every refusal has been sent; those being drained still hold their descriptors, the
    // others are closed already.
    let held = server.open_fds().saturating_sub(baseline);
    assert!(
        held <= TURNING_AWAY_MAX + SLACK,
        "{held} descriptors held for {STORM} refused connections"
    );
    drop(storm);
    server.expect_fds_at_most(baseline + SLACK);
}

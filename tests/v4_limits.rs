//! v4's limits (SPEC 2, 5 and 13): its own numeric flags refused at start-up outside what the
//! server can honour, a history that cannot grow the server's memory, and `--max-per-ip`.

use sock_chat_tests::{Client, Server};

/// `* welcome <ADDR>, N online - type /help for commands`.
fn welcome(client: &Client, online: usize) -> String {
    format!(
        "* welcome {}, {online} online - type /help for commands",
        client.addr()
    )
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

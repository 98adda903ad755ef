//! SPEC 1: v1 and v2 log every line and echo it to its sender, and only to its sender, as the
//! chat line `<ADDR> says: <TEXT>` ending in `\r\n`.
//!
//! Each scenario is a function taking the [`Server`] to run against; [`echo_tests!`] turns them
//! into one `#[test]` per server, in a module named after it (`cargo test --test echo v1::`).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sock_chat_tests::{Client, Server, DEADLINE};

/// How many echoes the slow reader reads between pauses: about 2 KiB of them.
const LINES_PER_PAUSE: usize = 32;
/// The slow reader's pause: with [`LINES_PER_PAUSE`], it reads at most about 2 MB/s, far
/// slower than a server echoes on loopback.
const READER_PAUSE: Duration = Duration::from_millis(1);

/// The slow reader's receive buffer, in bytes (the kernel doubles it for its bookkeeping).
const SLOW_READER_WINDOW: usize = 64 * 1024;

/// A writer that has sent nothing for this long counts as stopped by TCP. Were it only slowed
/// (a busy machine), the test would still pass; it would just check less.
const STOPPED_AFTER: Duration = Duration::from_millis(500);

/// The chat line the server sends back when `client` says `text`.
fn said(client: &Client, text: &str) -> String {
    format!("{} says: {text}", client.addr())
}

/// Waits until `sent`, the bytes a writer thread has sent so far, stops growing.
fn wait_until_stopped(sent: &AtomicUsize) {
    let start = Instant::now();
    let mut before = sent.load(Ordering::Relaxed);
    loop {
        thread::sleep(STOPPED_AFTER);
        let now = sent.load(Ordering::Relaxed);
        if now == before {
            return;
        }
        before = now;
        assert!(start.elapsed() < DEADLINE, "the writer was never stopped");
    }
}

/// Reads `expected.len()` bytes and checks they are `expected`: a stream of echoes too long to
/// check line by line in good time.
fn expect_exactly(client: &Client, expected: &[u8]) {
    let mut received = vec![0; expected.len()];
    if let Err(error) = client.stream().read_exact(&mut received) {
        panic!("{error} before {} bytes of echoes arrived", expected.len());
    }
    if received == expected {
        return;
    }
    if let Some(at) = (0..expected.len()).find(|&at| received[at] != expected[at]) {
        let line_start = expected[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1);
        panic!(
            "echoes differ at byte {at}, in the line {:?}",
            String::from_utf8_lossy(&received[line_start..(line_start + 80).min(received.len())])
        );
    }
}

fn echoes_line_to_sender(server: Server) {
    let server = server.start(&[]);
    let mut alice = server.connect();
    alice.send_line("hello, world");
    let echo = String::from_utf8_lossy(&alice.read_raw_line()).into_owned();
    assert_eq!(echo, format!("{}\r\n", said(&alice, "hello, world")));
}

fn echoes_every_line_of_a_burst_in_order(server: Server) {
    let server = server.start(&[]);
    let mut alice = server.connect();
    let lines: Vec<String> = (1..=100).map(|n| format!("line {n}")).collect();
    alice.send(format!("{}\n", lines.join("\n")).as_bytes());
    for line in &lines {
        alice.expect_line(&said(&alice, line));
    }
}

fn each_client_gets_only_its_own_echoes(server: Server) {
    let server = server.start(&[]);
    let mut alice = server.connect();
    let mut bob = server.connect();
    alice.send_line("from alice, first");
    bob.send_line("from bob");
    alice.send_line("from alice, second");
    bob.expect_line(&said(&bob, "from bob"));
    alice.expect_line(&said(&alice, "from alice, first"));
    alice.expect_line(&said(&alice, "from alice, second"));
    // Every line has been answered; if anything else had been sent to either client, it would
    // show up before the server closes the connection on end of file.
    alice.shutdown_write();
    bob.shutdown_write();
    assert_eq!(alice.read_to_close(), Vec::<String>::new());
    assert_eq!(bob.read_to_close(), Vec::<String>::new());
}

fn logs_each_line_as_it_echoes_it(server: Server) {
    let server = server.start(&[]);
    let mut alice = server.connect();
    alice.send_line("for the record");
    let chat_line = said(&alice, "for the record");
    alice.expect_line(&chat_line);
    server.expect_log(&chat_line);
}

fn logs_connects_and_disconnects(server: Server) {
    let server = server.start(&[]);
    let alice = server.connect();
    let addr = alice.addr();
    server.expect_log(&format!("{addr} connected"));
    drop(alice);
    server.expect_log(&format!("{addr} disconnected"));
}

/// SPEC 1's backpressure: a client that sends faster than it reads its echoes is slowed down by
/// TCP, never disconnected, and loses nothing: 4 MB of 40-byte lines, written as fast as the
/// socket takes them, while the echoes are read at about 2 MB/s.
fn a_client_reading_slower_than_it_sends_gets_every_echo_in_order(server: Server) {
    const LINES: usize = 100_000;
    let server = server.start(&[]);
    let mut client = server.connect();
    // A small receive window, as over a slow link. Left alone, the kernel would grow the
    // buffer until it held every echo, and the server's backpressure would never be needed.
    socket2::SockRef::from(client.stream())
        .set_recv_buffer_size(SLOW_READER_WINDOW)
        .expect("SO_RCVBUF");
    let line = |i: usize| format!("line {i:06} of a steady stream of forty");
    let stream: String = (0..LINES).map(|i| line(i) + "\n").collect();
    assert_eq!(stream.len(), LINES * 40);
    let mut writer = client.stream().try_clone().expect("clone stream");
    let writing = thread::spawn(move || writer.write_all(stream.as_bytes()));

    for i in 0..LINES {
        if i % LINES_PER_PAUSE == 0 {
            thread::sleep(READER_PAUSE);
        }
        client.expect_line(&said(&client, &line(i)));
    }
    writing.join().expect("writer").expect("every line sent");
    // Still connected, and nothing else was sent: the connection ends only when we end it.
    client.shutdown_write();
    assert_eq!(client.read_to_orderly_close(), Vec::<String>::new());
}

/// A client that stops reading is no longer read: its lines wait in TCP's buffers and TCP stops
/// its sender, the server holds only a bounded amount for it and serves everyone else, and it
/// gets every echo once it reads again. (v1: its thread blocks in `write`; v2: the loop stops
/// asking `poll` for its input while its echoes wait.)
fn a_client_that_stops_reading_is_not_read_and_the_others_are_served(server: Server) {
    // 16 MB of kilobyte lines: about twice what the socket buffers of one loopback connection
    // take in before TCP stops the sender, so the sender is certainly stopped.
    const LINES: usize = 16_000;
    // What the server may grow by for one client: its outbox (--max-queue, 256 KiB) and
    // change, against the tens of MB it would take to keep this flood.
    const MEMORY_FOR_ONE_CLIENT_KIB: u64 = 8 * 1024;
    let server = server.start(&[]);
    let flooder = server.connect();
    let rss_before = server.rss_kib();
    let line = |i: usize| format!("line {i:07}, nobody reads my echoes {}", "-".repeat(960));
    let flood: String = (0..LINES).map(|i| line(i) + "\n").collect();
    let mut writer = flooder.stream().try_clone().expect("clone stream");
    // The writer stays stopped by TCP for as long as nobody reads the echoes.
    writer.set_write_timeout(None).expect("no write timeout");
    let sent = Arc::new(AtomicUsize::new(0));
    let sent_by_writer = Arc::clone(&sent);
    let writing = thread::spawn(move || {
        for piece in flood.as_bytes().chunks(64 * 1024) {
            writer.write_all(piece)?;
            sent_by_writer.fetch_add(piece.len(), Ordering::Relaxed);
        }
        std::io::Result::Ok(())
    });
    wait_until_stopped(&sent);

    let mut alice = server.connect();
    alice.send_line("am I served?");
    alice.expect_line(&said(&alice, "am I served?"));

    let echoes: String = (0..LINES)
        .map(|i| said(&flooder, &line(i)) + "\r\n")
        .collect();
    expect_exactly(&flooder, echoes.as_bytes());
    writing.join().expect("writer").expect("every line sent");
    let grew = server.peak_rss_kib().saturating_sub(rss_before);
    assert!(
        grew < MEMORY_FOR_ONE_CLIENT_KIB,
        "the server grew by {grew} KiB for one client that did not read"
    );
}

/// `echo_tests!(v1, Server::V1Threads)` runs every scenario above against that server, as
/// `v1::echoes_line_to_sender` and so on: one line per server. A new scenario also needs its
/// `#[test]` here.
macro_rules! echo_tests {
    ($module:ident, $server:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn echoes_line_to_sender() {
                super::echoes_line_to_sender($server)
            }

            #[test]
            fn echoes_every_line_of_a_burst_in_order() {
                super::echoes_every_line_of_a_burst_in_order($server)
            }

            #[test]
            fn each_client_gets_only_its_own_echoes() {
                super::each_client_gets_only_its_own_echoes($server)
            }

            #[test]
            fn logs_each_line_as_it_echoes_it() {
                super::logs_each_line_as_it_echoes_it($server)
            }

            #[test]
            fn logs_connects_and_disconnects() {
                super::logs_connects_and_disconnects($server)
            }

            #[test]
            fn a_client_reading_slower_than_it_sends_gets_every_echo_in_order() {
                super::a_client_reading_slower_than_it_sends_gets_every_echo_in_order($server)
            }

            #[test]
            fn a_client_that_stops_reading_is_not_read_and_the_others_are_served() {
                super::a_client_that_stops_reading_is_not_read_and_the_others_are_served($server)
            }
        }
    };
}

echo_tests!(v1, Server::V1Threads);
echo_tests!(v2, Server::V2Select);
echo_tests!(v2_epoll, Server::V2SelectEpoll);

//! SPEC 1: v1 and v2 log every line and echo it to its sender, and only to its sender, as the
//! chat line `<ADDR> says: <TEXT>` ending in `\r\n`.
//!
//! Each scenario is a function taking the [`Server`] to run against; [`echo_tests!`] turns them
//! into one `#[test]` per server, in a module named after it (`cargo test --test echo v1::`).

use std::io::{ErrorKind, Write};
use std::thread;

use sock_chat_tests::{Client, Server};

/// The chat line the server sends back when `client` says `text`.
fn said(client: &Client, text: &str) -> String {
    format!("{} says: {text}", client.addr())
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
        }
    };
}

echo_tests!(v1, Server::V1Threads);
echo_tests!(v2, Server::V2Select);

/// v2 only: its echo goes through a bounded outbox (`--max-queue`), as v3's relay does, so a
/// client that sends without reading its echoes is disconnected and the loop never waits for
/// it. (In v1 a blocking write stalls only that client's own thread: that is v1's lesson.)
#[test]
fn v2_drops_a_client_that_never_reads_its_echoes_and_serves_the_others() {
    // Over ten times what the socket buffers of one connection hold on loopback (a few MB).
    const GIVE_UP_AFTER_BYTES: usize = 64 << 20;
    let server = Server::V2Select.start(&["--max-queue", "4096"]);
    let flooder = server.connect();
    let mut writer = flooder.stream().try_clone().expect("clone stream");
    let flooding = thread::spawn(move || {
        let chunk = "nobody reads my echoes\n".repeat(1000);
        let mut sent = 0;
        while sent < GIVE_UP_AFTER_BYTES {
            match writer.write_all(chunk.as_bytes()) {
                Ok(()) => sent += chunk.len(),
                // The server closed the socket with our lines unread: the kernel resets it.
                Err(e)
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    return true
                }
                Err(e) => panic!("sending failed with {e} instead of a disconnect"),
            }
        }
        false
    });
    let mut alice = server.connect();
    alice.send_line("am I served?");
    alice.expect_line(&said(&alice, "am I served?"));
    assert!(
        flooding.join().expect("flooding thread"),
        "a client that never read its echoes was still connected after {GIVE_UP_AFTER_BYTES} bytes"
    );
    alice.send_line("and now?");
    alice.expect_line(&said(&alice, "and now?"));
}

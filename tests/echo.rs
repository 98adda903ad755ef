//! SPEC 1: v1 and v2 log every line and echo it to its sender, and only to its sender, as the
//! chat line `<ADDR> says: <TEXT>` ending in `\r\n`.
//!
//! Each scenario is a function taking the [`Server`] to run against; [`echo_tests!`] turns them
//! into one `#[test]` per server, in a module named after it (`cargo test --test echo v1::`).

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

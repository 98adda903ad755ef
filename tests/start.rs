//! Starting a server (SPEC 2): the `listening on` line, port 0, start-up errors that a person
//! can act on, and `--max-clients`.

use std::net::TcpListener;
use std::process::Output;

use sock_chat_tests::{failed_start, server_tests, Server};

server_tests! {
    [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
        logs_one_listening_line_with_the_resolved_port,
        port_zero_gives_each_server_its_own_free_port,
        unparsable_addr_exits_with_one_sentence_naming_it,
        unbindable_addr_exits_with_one_sentence_naming_it,
        address_in_use_exits_with_one_sentence_naming_it,
        max_clients_turns_away_the_next_connection_and_keeps_serving,
    }
}

fn logs_one_listening_line_with_the_resolved_port(server: Server) {
    let running = server.start(&[]);
    assert_ne!(
        running.addr.port(),
        0,
        "port 0 must be resolved in the log line"
    );
    running.expect_log(&format!("{} listening on {}", server.name(), running.addr));

    // After some traffic, so a second `listening on` line would have had time to show up.
    let mut chat = running.conversation();
    chat.sender.send_line("hello");
    chat.expect_heard("hello");
    let listening: Vec<_> = running
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("listening on "))
        .collect();
    assert_eq!(listening.len(), 1, "{listening:?}");
}

fn port_zero_gives_each_server_its_own_free_port(server: Server) {
    let first = server.start(&[]);
    let second = server.start(&[]);
    assert_ne!(first.addr, second.addr);
    for running in [&first, &second] {
        let mut chat = running.conversation();
        chat.sender.send_line("here");
        chat.expect_heard("here");
    }
}

fn unparsable_addr_exits_with_one_sentence_naming_it(server: Server) {
    for addr in ["127.0.0.1:99999", "no-port-here", "999.1.2.3:80"] {
        let output = server.start_expecting_failure(&["--addr", addr]);
        let stderr = failed_start(&output);
        // clap may add its usage lines, but the error sentence comes first.
        let sentence = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        assert!(sentence.contains(addr), "{addr}: {stderr}");
    }
}

fn unbindable_addr_exits_with_one_sentence_naming_it(server: Server) {
    // TEST-NET-1 (RFC 5737): a valid address that no local interface has.
    let addr = "192.0.2.1:8080";
    let output = server.start_expecting_failure(&["--addr", addr]);
    let sentence = one_sentence(&output);
    assert!(sentence.contains(addr), "{sentence}");
    assert!(sentence.contains("assign requested address"), "{sentence}");
}

fn address_in_use_exits_with_one_sentence_naming_it(server: Server) {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = server.start_expecting_failure(&["--addr", &addr]);
    let sentence = one_sentence(&output);
    assert!(sentence.contains(&addr), "{sentence}");
    assert!(sentence.contains("in use"), "{sentence}");
}

fn max_clients_turns_away_the_next_connection_and_keeps_serving(server: Server) {
    const MAX: usize = 3;
    let mut running = server.start(&["--max-clients", &MAX.to_string()]);
    let mut chat = running.conversation();
    let clients_in_chat = if server.is_room() { 2 } else { 1 };
    let _others: Vec<_> = (clients_in_chat..MAX).map(|_| chat.add_client()).collect();

    for _ in 0..3 {
        let mut turned_away = running.connect();
        assert_eq!(turned_away.read_to_close(), ["* server full (3 clients)"]);
    }
    assert!(running.is_running());
    chat.sender.send_line("still here");
    chat.expect_heard("still here");
}

/// The one line a failed start printed on stderr.
fn one_sentence(output: &Output) -> String {
    let stderr = failed_start(output);
    let lines: Vec<_> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one sentence, got {stderr:?}");
    lines[0].to_owned()
}

//! Limits that protect everyone: numeric flags a server cannot honour are refused at start-up
//! (SPEC 2), one address cannot take every seat (`--max-per-ip`, SPEC 13), and a client turned
//! away reads why before its connection ends (SPEC 4's closing notices).
//!
//! Each behaviour is one body run against every server that has it: a server joins a behaviour
//! by being added to its list below.

use std::net::{IpAddr, Ipv4Addr};

use sock_chat_tests::{failed_start, server_tests, Client, Server};

server_tests! {
    [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
        out_of_range_numeric_flags_are_refused_at_start_up_naming_the_flag_and_range,
        a_connection_beyond_max_per_ip_gets_the_notice_and_other_addresses_are_served,
        this_machine_is_never_limited_by_max_per_ip,
        a_connection_that_leaves_frees_its_place_for_its_address,
        a_client_turned_away_as_server_full_reads_the_notice_to_an_orderly_close,
        a_client_turned_away_by_max_per_ip_reads_the_notice_to_an_orderly_close,
    }
}

/// A host that `--max-per-ip` counts: any loopback address but 127.0.0.1.
const HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Another such host, counted apart from [`HOST`].
const OTHER_HOST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// How many turned-away clients check that their notice arrives. A reset that destroys the
/// notice is a race with the client's read, so a single try could pass by luck.
const TURNED_AWAY_TRIES: usize = 20;

/// What a turned-away client has typed before it reads, [`SAID_BEFORE_READING_TIMES`] over: a
/// paste of 64 KiB, more than a server takes in one read, so a server that reads only what
/// already came before it closes leaves input unread, and the kernel resets the connection.
const SAID_BEFORE_READING: &[u8] = b"hello?\r\n";
/// See [`SAID_BEFORE_READING`].
const SAID_BEFORE_READING_TIMES: usize = 8 * 1024;

fn out_of_range_numeric_flags_are_refused_at_start_up_naming_the_flag_and_range(server: Server) {
    let mut refused = vec![
        ("--max-line", "18446744073709551615", "from 1 to 1048576"),
        ("--max-clients", "0", "from 1 to 1000000"),
        ("--max-per-ip", "-1", "from 0 to 1000000"),
    ];
    if server != Server::V1Threads {
        // v1 queues nothing: its blocking write is its queue.
        refused.push(("--max-queue", "0", "from 1 to 1073741824"));
    }
    for (flag, value, range) in refused {
        let output = server.start_expecting_failure(&["--addr", "127.0.0.1:0", flag, value]);
        let stderr = failed_start(&output);
        // clap may add a usage hint, but the error sentence comes first.
        let sentence = stderr.lines().find(|line| !line.trim().is_empty());
        assert!(
            sentence.is_some_and(|line| line.contains(flag) && line.contains(range)),
            "{flag} {value}: {stderr}"
        );
    }
}

fn a_connection_beyond_max_per_ip_gets_the_notice_and_other_addresses_are_served(server: Server) {
    let mut running = server.start(&["--max-per-ip", "2"]);
    let mut chat = running.conversation();
    let _two_from_host = [chat.add_client_from(HOST), chat.add_client_from(HOST)];

    let mut third = running.connect_from(HOST);
    assert_eq!(
        third.read_to_orderly_close(),
        ["* error: too many connections from your address (max 2)"]
    );

    let _other_host = chat.add_client_from(OTHER_HOST);
    assert!(running.is_running());
    chat.sender.send_line("still here");
    chat.expect_heard("still here");
}

fn this_machine_is_never_limited_by_max_per_ip(server: Server) {
    const MAX_PER_IP: usize = 2;
    let running = server.start(&["--max-per-ip", &MAX_PER_IP.to_string()]);
    let mut chat = running.conversation();
    // The conversation's own clients come from 127.0.0.1 too.
    let _many: Vec<Client> = (0..MAX_PER_IP + 3).map(|_| chat.add_client()).collect();
    chat.sender.send_line("all of us");
    chat.expect_heard("all of us");
}

fn a_connection_that_leaves_frees_its_place_for_its_address(server: Server) {
    let running = server.start(&["--max-per-ip", "1"]);
    let mut chat = running.conversation();
    let mut leaving = chat.add_client_from(HOST);
    assert_eq!(
        running.connect_from(HOST).read_to_orderly_close(),
        ["* error: too many connections from your address (max 1)"]
    );

    // Once the server closes its side, it has forgotten the connection.
    leaving.shutdown_write();
    leaving.read_to_close();
    let _back = chat.add_client_from(HOST);
}

fn a_client_turned_away_as_server_full_reads_the_notice_to_an_orderly_close(server: Server) {
    const MAX: usize = 2;
    let running = server.start(&["--max-clients", &MAX.to_string()]);
    let mut chat = running.conversation();
    let seated = if server.is_room() { 2 } else { 1 };
    let _others: Vec<Client> = (seated..MAX).map(|_| chat.add_client()).collect();

    expect_notice_then_orderly_close(|| running.connect(), "* server full (2 clients)");
}

fn a_client_turned_away_by_max_per_ip_reads_the_notice_to_an_orderly_close(server: Server) {
    let running = server.start(&["--max-per-ip", "1"]);
    let mut chat = running.conversation();
    let _seated = chat.add_client_from(HOST);

    expect_notice_then_orderly_close(
        || running.connect_from(HOST),
        "* error: too many connections from your address (max 1)",
    );
}

/// Connects [`TURNED_AWAY_TRIES`] clients that speak before they read, as telnet users do, and
/// checks that each reads `notice` and then a FIN, never a reset.
fn expect_notice_then_orderly_close(mut connect: impl FnMut() -> Client, notice: &str) {
    for _ in 0..TURNED_AWAY_TRIES {
        let mut client = connect();
        client.send(&SAID_BEFORE_READING.repeat(SAID_BEFORE_READING_TIMES));
        assert_eq!(client.read_to_orderly_close(), [notice]);
    }
}

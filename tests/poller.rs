//! poll and epoll (SPEC 12): `--poller poll|epoll` on v2-select and v3-broadcast. Every other
//! test file runs its v2 and v3 bodies against both pollers (`v2_select_epoll`,
//! `v3_broadcast_epoll`); these check what only the choice itself can get wrong: that the
//! flag really changes how the server waits, that a bad value is refused, and the one path
//! where epoll must be told something poll never needs, a listener resting after `EMFILE`.

use std::net::TcpStream;
use std::process::Command;

use sock_chat_tests::{failed_start, server_tests, Running, Server};

server_tests! {
    [v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll] => {
        the_server_waits_with_epoll_only_when_asked,
        out_of_descriptors_it_rests_the_listener_serves_its_clients_then_accepts_again,
    }
    [v2_select, v3_broadcast] => {
        an_unknown_poller_is_refused_at_start_up_naming_the_flag,
    }
}

/// Connections made while the server may open no descriptor: each waits in its accept queue.
const EXTRA_CLIENTS: usize = 4;

fn the_server_waits_with_epoll_only_when_asked(server: Server) {
    let running = server.start(&[]);
    // An epoll instance is a descriptor of its own, which /proc names.
    let epoll_instances = std::fs::read_dir(format!("/proc/{}/fd", running.pid()))
        .expect("read /proc/PID/fd")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:[eventpoll]")
        .count();
    let asked = server.poller_args().contains(&"epoll");
    assert_eq!(epoll_instances, usize::from(asked), "{server:?}");
}

fn an_unknown_poller_is_refused_at_start_up_naming_the_flag(server: Server) {
    let output = server.start_expecting_failure(&["--poller", "select"]);
    assert!(!output.status.success());
    let said = failed_start(&output);
    assert!(said.contains("--poller"), "{said}");
}

fn out_of_descriptors_it_rests_the_listener_serves_its_clients_then_accepts_again(server: Server) {
    let running = server.start(&[]);
    let mut chat = running.conversation();
    // From now on it may open no descriptor: the next accept fails with EMFILE.
    let open = running.open_fds();
    set_descriptor_limit(&running, open);
    let waiting: Vec<TcpStream> = (0..EXTRA_CLIENTS)
        .map(|_| TcpStream::connect(running.addr).expect("connect into the backlog"))
        .collect();
    running.expect_log("cannot accept a connection");
    // The clients it has are served as usual while the listener rests.
    chat.sender.send_line("still here");
    chat.expect_heard("still here");
    // Once descriptors are free again, it accepts: the listener was not forgotten.
    set_descriptor_limit(&running, open + 64);
    drop(waiting);
    let mut newcomer = chat.add_client();
    newcomer.send_line("let in");
    if server.is_room() {
        let said = sock_chat_tests::chat_line(newcomer.addr(), "let in");
        chat.observer().read_until(|line| line == said);
    } else {
        newcomer.expect_line(&sock_chat_tests::chat_line(newcomer.addr(), "let in"));
    }
}

/// Sets the server's soft limit on open descriptors (`prlimit(1)`, util-linux); the hard limit
/// stays, so that the soft one can be raised again.
fn set_descriptor_limit(running: &Running, limit: usize) {
    let status = Command::new("prlimit")
        .arg(format!("--pid={}", running.pid()))
        .arg(format!("--nofile={limit}:"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}

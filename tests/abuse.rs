//! Clients that misbehave (SPEC 2-4): they vanish mid-line, reset, half-close, come and go by
//! the thousand, crowd in by the hundred, or send garbage. The server cleans up after each and
//! keeps serving everyone else.

use std::io::Write;

use sock_chat_tests::{chat_line, is_membership_notice, server_tests, Client, Running, Server};

server_tests! {
    [v1_threads, v2_select, v2_select_epoll, v3_broadcast, v3_broadcast_epoll, v4_async] => {
        clients_that_reset_mid_line_are_cleaned_up,
        a_client_that_half_closes_gets_its_lines_through_and_is_cleaned_up,
        connect_close_cycles_leave_the_descriptors_it_started_with,
        hundreds_of_concurrent_clients_are_all_served,
        a_flood_of_bad_input_relays_only_clean_lines,
    }
}

/// Descriptors a server may open lazily after start-up (a runtime's internals): far fewer
/// than any of the leaks these tests would cause.
const FD_SLACK: usize = 4;

/// Checks that the server still serves a new conversation.
fn expect_still_serving(running: &mut Running) {
    assert!(running.is_running(), "the server exited");
    let mut chat = running.conversation();
    chat.sender.send_line("still serving?");
    chat.expect_heard("still serving?");
}

fn clients_that_reset_mid_line_are_cleaned_up(server: Server) {
    const CLIENTS: usize = 20;
    let mut running = server.start(&[]);
    let baseline = running.open_fds();
    for _ in 0..CLIENTS {
        let chat = running.conversation();
        let (mut sender, observer) = chat.into_clients();
        let name = sender.addr();
        sender.send(b"half a li");
        sender.reset();
        if let Some(mut observer) = observer {
            // Whether the half line is delivered depends on when the reset overtakes it, and
            // the count on whether earlier observers' closes were processed yet.
            let left = format!("* {name} left (");
            observer.read_until(|line| line.starts_with(&left));
        }
    }
    running.expect_fds_at_most(baseline + FD_SLACK);
    expect_still_serving(&mut running);
}

fn a_client_that_half_closes_gets_its_lines_through_and_is_cleaned_up(server: Server) {
    const LINES: usize = 100;
    let mut running = server.start_unthrottled(&[]);
    let baseline = running.open_fds();
    let mut chat = running.conversation();
    let name = chat.sender.addr();
    let last_words: String = (0..LINES).map(|i| format!("last words {i}\n")).collect();
    chat.sender.send(last_words.as_bytes());
    chat.sender.shutdown_write();
    // Everything sent before the end of file is delivered (on an echo server: echoed before
    // the server closes its side).
    for i in 0..LINES {
        chat.expect_heard(&format!("last words {i}"));
    }
    assert_eq!(chat.sender.read_to_close(), Vec::<String>::new());
    if server.is_room() {
        chat.observer()
            .expect_line(&format!("* {name} left (1 online)"));
    }
    drop(chat);
    running.expect_fds_at_most(baseline + FD_SLACK);
    expect_still_serving(&mut running);
}

fn connect_close_cycles_leave_the_descriptors_it_started_with(server: Server) {
    const CYCLES: usize = 2000;
    // Room for every cycle at once: a loaded server may find all of them in its accept queue
    // in one turn, and then the conversation below would be turned away as `server full`,
    // which is not what this test is about.
    let max_clients = (CYCLES + 16).to_string();
    let mut running = server.start(&["--max-clients", &max_clients]);
    let baseline = running.open_fds();
    for cycle in 0..CYCLES {
        let mut client = running.connect();
        // A mix of goodbyes: a plain close, a close right after a line (the echo or the
        // welcome then meets a closed socket), and a reset.
        match cycle % 3 {
            0 => drop(client),
            1 => {
                client.send_line("hello and goodbye");
                drop(client);
            }
            _ => client.reset(),
        }
    }
    running.expect_fds_at_most(baseline + FD_SLACK);
    expect_still_serving(&mut running);
}

fn hundreds_of_concurrent_clients_are_all_served(server: Server) {
    const CLIENTS: usize = 512;
    if server.is_room() {
        hundreds_in_a_room(server, CLIENTS);
    } else {
        hundreds_echoed(server, CLIENTS);
    }
}

/// Every client sends a line and hears its own echo, all connected at once.
fn hundreds_echoed(server: Server, clients: usize) {
    let mut running = server.start(&[]);
    let mut clients: Vec<Client> = (0..clients).map(|_| running.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send_line(&format!("client {i}"));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        client.expect_line(&chat_line(client.addr(), &format!("client {i}")));
    }
    assert!(running.is_running());
}

/// The room stays cheap: everyone connects, a few speak, one observer hears them all. Joins
/// are not announced (`--announce-limit 0`): that would be every client hearing every other.
fn hundreds_in_a_room(server: Server, clients: usize) {
    let mut running = server.start(&["--announce-limit", "0"]);
    let mut chat = running.conversation();
    let mut crowd: Vec<Client> = (2..clients).map(|_| running.connect()).collect();
    // The first, one in the middle and the last to connect speak.
    let middle = crowd.len() / 2;
    let mut expected = Vec::new();
    for i in [0, middle, crowd.len() - 1] {
        let speaker = &mut crowd[i];
        speaker.send_line(&format!("from the crowd {i}"));
        expected.push(chat_line(speaker.addr(), &format!("from the crowd {i}")));
    }
    let mut heard: Vec<String> = (0..expected.len()).map(|_| chat.heard()).collect();
    heard.sort();
    expected.sort();
    assert_eq!(heard, expected);
    chat.sender.send_line("and the sender");
    chat.expect_heard("and the sender");
    assert!(running.is_running());
}

fn a_flood_of_bad_input_relays_only_clean_lines(server: Server) {
    const FLOOD: usize = 512 << 10;
    const END: &str = "end of flood";
    let mut running = server.start_unthrottled(&[]);
    let mut chat = running.conversation();
    let flood = garbage(FLOOD);
    // A separate writer, so that an echo server's answers are read while the flood is sent.
    let mut writer = chat.sender.stream().try_clone().unwrap();
    let sending = std::thread::spawn(move || {
        writer.write_all(&flood).unwrap();
        writer.write_all(format!("\n{END}\n").as_bytes()).unwrap();
    });
    let end = chat.says(END);
    let mut lines = 0;
    loop {
        // read_line already checks UTF-8 and the `\r\n` ending.
        let line = chat.observer().read_line();
        if line == end {
            break;
        }
        assert!(
            !line.chars().any(|c| c.is_control() && c != '\t'),
            "control character in {line:?}"
        );
        assert!(
            line.starts_with(&chat.says(""))
                || line == "* error: line too long (max 1024 bytes)"
                || is_membership_notice(&line),
            "unexpected line {line:?}"
        );
        lines += 1;
    }
    sending.join().unwrap();
    assert!(lines > 100, "only {lines} lines of the flood were relayed");
    drop(chat);
    expect_still_serving(&mut running);
}

/// `len` bytes of hostile input, the same every run: text, control characters, escapes, telnet
/// commands, invalid UTF-8, blank lines and now and then a line far over `--max-line`.
fn garbage(len: usize) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b"hello",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\x1b[2J",
        b"\x07",
        b"\x08",
        b"\x7f",
        b"\0",
        b"\xff\xfd\x03",
        b"\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0",
        b"\xff",
        b"\xc3\x28",
        b"\xe2\x82",
        b"\xc2\x9b",
        "\u{1f44b}".as_bytes(),
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: deterministic, so a failure reproduces.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        let roll = next();
        if roll % 200 == 0 {
            out.resize(out.len() + 3000, b'w');
        } else {
            out.extend_from_slice(PIECES[(roll >> 8) as usize % PIECES.len()]);
        }
    }
    out
}

//! SPEC 4, backpressure and slow consumers under floods from many senders (v3, v4): the room reads from senders only
//! as fast as the receivers take the bytes, so a client that reads as fast as it can is never
//! disconnected, whatever the senders do; a receiver is disconnected as too slow only when its
//! full queue has held the room back for `--stall-ms` in a row, and its last notice arrives
//! before an orderly close.
//!
//! Each scenario is a function taking the [`Server`] to run, so that it can run against every
//! room; [`server_tests!`] makes one `#[test]` per server.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sock_chat_tests::{
    chat_line, server_tests, Client, Running, Server, NEVER_STALL_MS, PATIENT_STALL_MS,
};

server_tests! {
    [v3_broadcast, v3_broadcast_epoll, v4_async] => {
        fast_readers_are_never_evicted_while_ten_of_them_flood_one_character_lines,
        one_flooder_of_short_lines_loses_nothing_for_four_fast_readers,
        a_stopped_reader_is_evicted_while_the_others_keep_receiving,
        a_trickling_reader_is_evicted_while_fast_readers_are_not,
        an_evicted_client_reads_the_too_slow_notice_last_then_an_orderly_close,
        a_tiny_max_queue_still_relays_lines_longer_than_it,
    }
}

/// What both rooms log when they disconnect a client as too slow.
const EVICTED: &str = "held the room back";

/// A flood of this many one-character lines is about 12 MB for each receiver: three times what
/// the socket buffers of a client that stopped reading hold on loopback (about 4 MB, most of it
/// the server's send buffer), so its queue fills too.
const OVERFLOWING_LINES: usize = 512 * 1024;

/// The text of line `i` of a flood: one character, going round the alphabet, so that a
/// receiver can check that each sender's lines arrive in order.
fn letter(i: usize) -> u8 {
    const ALPHABET: usize = 26;
    b'a' + (i % ALPHABET) as u8
}

/// `lines` one-character lines (`a\nb\n...`): each of their two bytes becomes more than twelve
/// for every receiver (`127.0.0.1:52344 says: a\r\n`), the worst growth a chat line has.
fn flood(lines: usize) -> Vec<u8> {
    (0..lines).flat_map(|i| [letter(i), b'\n']).collect()
}

/// Connects `n` clients and returns them once all are in the room with nothing unread: the
/// last one speaks and all the others hear it; then the first speaks and all but it hear that
/// (which also gets the last one past whatever it was told on joining).
fn join_room(running: &Running, n: usize) -> Vec<Client> {
    const PROBE: &str = "probe";
    let mut clients: Vec<Client> = (0..n).map(|_| running.connect()).collect();
    for speaker in [n - 1, 0] {
        clients[speaker].send_line(PROBE);
        let probe = chat_line(clients[speaker].addr(), PROBE);
        for (i, client) in clients.iter_mut().enumerate() {
            if i != speaker {
                client.read_until(|line| line == probe);
            }
        }
    }
    clients
}

/// Sends `bytes` from a thread of its own, as fast as the socket takes them, so that the
/// sender can read at the same time.
fn send_in_background(client: &Client, bytes: Vec<u8>) -> JoinHandle<()> {
    let mut stream = client
        .stream()
        .try_clone()
        .expect("clone the sender's stream");
    thread::spawn(move || stream.write_all(&bytes).expect("send the flood"))
}

/// Reads `client` as fast as it can, in a thread of its own, until it has heard `lines` flood
/// lines from each of `senders`, each sender's in order. Any other line fails the test; a
/// too-slow notice or a close first means the client was disconnected.
fn hear_floods(client: &Client, senders: &[SocketAddr], lines: usize) -> JoinHandle<()> {
    let stream = client
        .stream()
        .try_clone()
        .expect("clone the reader's stream");
    let names: HashMap<Vec<u8>, usize> = senders
        .iter()
        .enumerate()
        .map(|(i, addr)| (addr.to_string().into_bytes(), i))
        .collect();
    let me = client.addr();
    thread::spawn(move || read_floods(stream, me, &names, lines))
}

fn read_floods(
    mut stream: TcpStream,
    me: SocketAddr,
    names: &HashMap<Vec<u8>, usize>,
    lines: usize,
) {
    const READ_BUFFER: usize = 64 * 1024;
    const SAYS: &[u8] = b" says: ";
    let mut heard = vec![0; names.len()];
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut pending = Vec::new();
    while heard.iter().any(|&n| n < lines) {
        let n = match stream.read(&mut buffer) {
            Ok(0) => panic!("{me} was disconnected having heard {heard:?} of {lines} lines each"),
            Ok(n) => n,
            Err(error) => panic!("{me} could not read having heard {heard:?}: {error}"),
        };
        pending.extend_from_slice(&buffer[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end + 1];
            start += end + 1;
            let text = String::from_utf8_lossy(line);
            let space = line.iter().position(|&b| b == b' ').unwrap_or(0);
            let sender = names.get(&line[..space]);
            let (Some(&sender), true) = (sender, line[space..].starts_with(SAYS)) else {
                panic!("{me} heard {text:?} in the middle of the floods");
            };
            let expected = [letter(heard[sender]), b'\r', b'\n'];
            assert_eq!(
                &line[space + SAYS.len()..],
                expected,
                "{me}: line {} from sender {sender} out of order: {text:?}",
                heard[sender]
            );
            heard[sender] += 1;
        }
        pending.drain(..start);
    }
}

/// Runs a flood of `lines` lines from each of `senders` (indexes into `clients`); every client
/// reads as fast as it can, and must hear every line of every other sender, in order.
fn flood_room(clients: &[Client], senders: &[usize], lines: usize) {
    let addrs: Vec<SocketAddr> = senders.iter().map(|&s| clients[s].addr()).collect();
    let hearing: Vec<JoinHandle<()>> = clients
        .iter()
        .map(|client| {
            let others: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|&addr| addr != client.addr())
                .collect();
            hear_floods(client, &others, lines)
        })
        .collect();
    let sending: Vec<JoinHandle<()>> = senders
        .iter()
        .map(|&s| send_in_background(&clients[s], flood(lines)))
        .collect();
    for thread in sending.into_iter().chain(hearing) {
        thread.join().expect("a client failed; see its panic above");
    }
}

/// The scenario: eleven clients that read as fast as they can, ten of which write
/// 256 KiB of one-character lines at once, with every limit on senders off.
fn fast_readers_are_never_evicted_while_ten_of_them_flood_one_character_lines(server: Server) {
    const CLIENTS: usize = 11;
    const SENDERS: usize = 10;
    const FLOOD_BYTES: usize = 256 * 1024;
    let running =
        server.start_unthrottled_quietly(&["--announce-limit", "0", "--stall-ms", NEVER_STALL_MS]);
    let clients = join_room(&running, CLIENTS);
    let senders: Vec<usize> = (0..SENDERS).collect();
    flood_room(&clients, &senders, FLOOD_BYTES / 2);
    let evictions: Vec<String> = running
        .log_lines()
        .into_iter()
        .filter(|line| line.contains(EVICTED))
        .collect();
    assert!(
        evictions.is_empty(),
        "fast readers were evicted: {evictions:?}"
    );
}

/// v3's scenario: four clients read as fast as they can while a fifth sends `a\n` 8192 times
/// per write, as fast as its socket takes it.
fn one_flooder_of_short_lines_loses_nothing_for_four_fast_readers(server: Server) {
    const READERS: usize = 4;
    const LINES_PER_WRITE: usize = 8192;
    const WRITES: usize = 64;
    let running =
        server.start_unthrottled_quietly(&["--announce-limit", "0", "--stall-ms", NEVER_STALL_MS]);
    let clients = join_room(&running, READERS + 1);
    flood_room(&clients, &[READERS], LINES_PER_WRITE * WRITES);
    assert!(
        !running
            .log_lines()
            .iter()
            .any(|line| line.contains(EVICTED)),
        "a fast reader was evicted"
    );
}

/// A client that stopped reading holds the room back for `--stall-ms`, then is disconnected,
/// and the room carries on: everyone else hears every line.
fn a_stopped_reader_is_evicted_while_the_others_keep_receiving(server: Server) {
    const LINES: usize = OVERFLOWING_LINES;
    let running = server.start_unthrottled_quietly(&[
        "--announce-limit",
        "0",
        "--stall-ms",
        PATIENT_STALL_MS,
    ]);
    let mut clients = join_room(&running, 4);
    let stopped = clients.pop().expect("four clients");
    flood_room(&clients, &[0], LINES);
    let eviction = running.expect_log(EVICTED);
    assert!(
        eviction.contains(&stopped.addr().to_string()),
        "the wrong client was evicted: {eviction}"
    );
    assert_eq!(
        running
            .log_lines()
            .iter()
            .filter(|line| line.contains(EVICTED))
            .count(),
        1,
        "a client that reads was evicted"
    );
}

/// A client that reads, but a trickle, cannot keep up with a flood: its queue never drains to
/// half within `--stall-ms`, so it is disconnected, and the fast readers are not.
fn a_trickling_reader_is_evicted_while_fast_readers_are_not(server: Server) {
    const LINES: usize = OVERFLOWING_LINES;
    // 512 bytes every 20 ms: 25 KB/s, where draining half a default queue within the patient
    // --stall-ms would take 64 KB/s.
    const TRICKLE: usize = 512;
    const TRICKLE_EVERY: Duration = Duration::from_millis(20);
    let running = server.start_unthrottled_quietly(&[
        "--announce-limit",
        "0",
        "--stall-ms",
        PATIENT_STALL_MS,
    ]);
    let mut clients = join_room(&running, 4);
    let trickler = clients.pop().expect("four clients");
    let trickler_addr = trickler.addr();
    let mut stream = trickler
        .stream()
        .try_clone()
        .expect("clone the trickler's stream");
    let trickling = thread::spawn(move || {
        let mut sip = [0u8; TRICKLE];
        while matches!(stream.read(&mut sip), Ok(n) if n > 0) {
            thread::sleep(TRICKLE_EVERY);
        }
    });
    flood_room(&clients, &[0], LINES);
    let eviction = running.expect_log(EVICTED);
    assert!(
        eviction.contains(&trickler_addr.to_string()),
        "the wrong client was evicted: {eviction}"
    );
    assert_eq!(
        running
            .log_lines()
            .iter()
            .filter(|line| line.contains(EVICTED))
            .count(),
        1,
        "a fast reader was evicted"
    );
    // What its socket still holds would take the trickle a minute: stop it here.
    trickler
        .stream()
        .shutdown(Shutdown::Both)
        .expect("shut the trickler down");
    trickling.join().expect("the trickling reader");
}

/// The too-slow notice is delivered: what the kernel already held for the evicted client
/// comes first, in whole lines, then the notice, then a FIN, not a reset.
fn an_evicted_client_reads_the_too_slow_notice_last_then_an_orderly_close(server: Server) {
    const LINES: usize = OVERFLOWING_LINES;
    let running = server.start_unthrottled_quietly(&[
        "--announce-limit",
        "0",
        "--stall-ms",
        PATIENT_STALL_MS,
    ]);
    let mut clients = join_room(&running, 3);
    let mut stopped = clients.pop().expect("three clients");
    let sender = clients[0].addr();
    let reader = hear_floods(&clients[1], &[sender], LINES);
    let sending = send_in_background(&clients[0], flood(LINES));
    running.expect_log(EVICTED);
    let lines = stopped.read_to_orderly_close();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("* error: too slow, disconnected")
    );
    let (notice, held) = lines.split_last().expect("at least the notice");
    assert!(
        !held.is_empty(),
        "the stopped reader held nothing: {notice}"
    );
    for (i, line) in held.iter().enumerate() {
        let text = char::from(letter(i)).to_string();
        assert_eq!(line, &chat_line(sender, &text), "line {i} of what it held");
    }
    sending.join().expect("the sender");
    reader.join().expect("the reader that kept up");
}

/// A queue can always take one read while it is at most half full, so a `--max-queue` smaller
/// than a line does not stop the line (and the room) for ever.
fn a_tiny_max_queue_still_relays_lines_longer_than_it(server: Server) {
    const LINE: usize = 50_000;
    const LINES: usize = 3;
    let running = server.start_unthrottled_quietly(&[
        "--announce-limit",
        "0",
        "--max-queue",
        "1",
        "--max-line",
        "100000",
    ]);
    let mut clients = join_room(&running, 2);
    let long: Vec<String> = (0..LINES)
        .map(|i| char::from(letter(i)).to_string().repeat(LINE))
        .collect();
    let sending = send_in_background(&clients[0], (long.join("\n") + "\n").into_bytes());
    let sender = clients[0].addr();
    for line in &long {
        assert_eq!(clients[1].read_line(), chat_line(sender, line));
    }
    sending.join().expect("the sender");
}

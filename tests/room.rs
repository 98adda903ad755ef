//! SPEC 4, the chat room (v3, v4): a line reaches every other client, in the order the server
//! received it, and never its sender; joins and leaves are announced, with the number online,
//! while the room is small; a client that does not read is dropped once it has held the room
//! back for `--stall-ms`, and the others hear everything; a client that reads as fast as it can
//! is never dropped. `tests/backpressure.rs` looks closer at how the room waits for its readers.
//!
//! Each scenario is a function taking the [`Server`] to run; [`server_tests!`] makes one
//! `#[test]` per room server (`cargo test --test room v3_broadcast`).

use std::io::Write;
use std::net::SocketAddr;
use std::thread;

use sock_chat_tests::{chat_line, server_tests, Client, Running, Server};

server_tests! {
    [v3_broadcast, v3_broadcast_epoll, v4_async] => {
        a_line_reaches_everyone_else_but_not_its_sender,
        lines_arrive_in_the_order_the_server_received_them,
        every_receiver_hears_concurrent_senders_in_the_same_order,
        joins_and_leaves_are_announced_to_the_others_with_the_count,
        joins_and_leaves_are_not_announced_above_the_announce_limit,
        a_client_that_never_reads_is_dropped_while_the_others_hear_everything,
        a_fast_reader_is_never_dropped_in_a_burst_from_many_senders,
    }
}

/// The next line a client receives, skipping v4's `* welcome ...` greeting, which is not what
/// these scenarios are about.
fn next_line(client: &mut Client) -> String {
    client.read_until(|line| !line.starts_with("* welcome "))
}

/// Connects `N` clients one after another. Everyone already in the room hears each join, so on
/// return all of them are in the room and none has anything unread.
fn join<const N: usize>(running: &Running) -> [Client; N] {
    let mut room: Vec<Client> = Vec::with_capacity(N);
    for _ in 0..N {
        let newcomer = running.connect();
        let notice = format!("* {} joined ({} online)", newcomer.addr(), room.len() + 1);
        for member in &mut room {
            assert_eq!(next_line(member), notice);
        }
        room.push(newcomer);
    }
    room.try_into().expect("N clients")
}

fn a_line_reaches_everyone_else_but_not_its_sender(server: Server) {
    let running = server.start(&[]);
    let [mut alice, mut bob, mut carol] = join(&running);
    alice.send_line("hello, room");
    let hello = chat_line(alice.addr(), "hello, room");
    assert_eq!(next_line(&mut bob), hello);
    assert_eq!(next_line(&mut carol), hello);
    // Had alice's line come back to her, it would be queued before bob's answer.
    bob.send_line("hello, alice");
    let answer = chat_line(bob.addr(), "hello, alice");
    assert_eq!(next_line(&mut alice), answer);
    assert_eq!(next_line(&mut carol), answer);
}

fn lines_arrive_in_the_order_the_server_received_them(server: Server) {
    let running = server.start(&[]);
    let [mut alice, mut bob, mut carol, mut dave] = join(&running);
    // Each line is sent only once carol has heard the one before, so the server received them
    // in this order; dave, who only listens, must hear them in the same order.
    let script = [(0, "first"), (1, "second"), (0, "third"), (1, "fourth")];
    let mut expected = Vec::new();
    for (speaker, text) in script {
        let speaker = if speaker == 0 { &mut alice } else { &mut bob };
        speaker.send_line(text);
        let line = chat_line(speaker.addr(), text);
        assert_eq!(next_line(&mut carol), line);
        expected.push(line);
    }
    let heard: Vec<String> = expected.iter().map(|_| next_line(&mut dave)).collect();
    assert_eq!(heard, expected);
    // And each speaker heard the other's lines, in order, and none of its own.
    assert_eq!(next_line(&mut alice), expected[1]);
    assert_eq!(next_line(&mut alice), expected[3]);
    assert_eq!(next_line(&mut bob), expected[0]);
    assert_eq!(next_line(&mut bob), expected[2]);
}

fn every_receiver_hears_concurrent_senders_in_the_same_order(server: Server) {
    const LINES: usize = 300;
    let running = server.start_unthrottled(&[]);
    let [mut alice, mut bob, mut carol, mut dave] = join(&running);
    let (alice_says, bob_says) = (said_lines(&alice, "a", LINES), said_lines(&bob, "b", LINES));
    // Both speak at once, a line per write, so the server interleaves them as they come.
    let speakers = [(&alice, "a"), (&bob, "b")].map(|(speaker, tag)| {
        let mut stream = speaker.stream().try_clone().expect("clone stream");
        thread::spawn(move || {
            for i in 0..LINES {
                stream
                    .write_all(format!("{tag} {i}\n").as_bytes())
                    .expect("send");
            }
        })
    });
    let carol_heard: Vec<String> = (0..2 * LINES).map(|_| next_line(&mut carol)).collect();
    let dave_heard: Vec<String> = (0..2 * LINES).map(|_| next_line(&mut dave)).collect();
    for speaker in speakers {
        speaker.join().expect("speaker thread");
    }
    assert_eq!(
        carol_heard, dave_heard,
        "two listeners heard different orders"
    );
    let from = |heard: &[String], says: &[String]| -> Vec<String> {
        heard
            .iter()
            .filter(|line| says.contains(line))
            .cloned()
            .collect()
    };
    assert_eq!(from(&carol_heard, &alice_says), alice_says);
    assert_eq!(from(&carol_heard, &bob_says), bob_says);
    // Each speaker heard exactly the other's lines, in order.
    let alice_heard: Vec<String> = (0..LINES).map(|_| next_line(&mut alice)).collect();
    let bob_heard: Vec<String> = (0..LINES).map(|_| next_line(&mut bob)).collect();
    assert_eq!(alice_heard, bob_says);
    assert_eq!(bob_heard, alice_says);
}

/// The chat lines `client` sending `"{tag} 0"`, `"{tag} 1"`, ... becomes.
fn said_lines(client: &Client, tag: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| chat_line(client.addr(), &format!("{tag} {i}")))
        .collect()
}

fn joins_and_leaves_are_announced_to_the_others_with_the_count(server: Server) {
    let running = server.start(&[]);
    // `join` checks that alice hears bob join (2 online), and both hear carol (3 online).
    let [mut alice, bob, mut carol] = join(&running);
    let bob_addr = bob.addr();
    drop(bob);
    let left = format!("* {bob_addr} left (2 online)");
    assert_eq!(next_line(&mut alice), left);
    // Carol's first line is about bob: nobody is told of their own join.
    assert_eq!(next_line(&mut carol), left);
    let carol_addr = carol.addr();
    carol.shutdown_write();
    assert_eq!(
        next_line(&mut alice),
        format!("* {carol_addr} left (1 online)")
    );
}

fn joins_and_leaves_are_not_announced_above_the_announce_limit(server: Server) {
    // A notice goes out only if the number online it carries is at most the limit.
    let running = server.start(&["--announce-limit", "2"]);
    // Up to two clients, joins are announced (checked by `join`).
    let [mut alice, mut bob] = join(&running);
    // The third and fourth are not: the first thing alice and bob hear after bob's join is
    // what each newcomer says (a join is processed before anything the newcomer sends).
    let mut newcomers = Vec::new();
    for text in ["nobody saw me come in", "nor me"] {
        let mut newcomer = running.connect();
        newcomer.send_line(text);
        let line = chat_line(newcomer.addr(), text);
        assert_eq!(next_line(&mut alice), line);
        assert_eq!(next_line(&mut bob), line);
        newcomers.push(newcomer);
    }
    let [carol, dave]: [Client; 2] = newcomers.try_into().expect("two newcomers");
    // Dave leaves 3 online: not announced. A leave is announced (or not) by the time the server
    // logs the disconnect, so after that log line bob's next line is the first thing alice
    // hears.
    let dave_addr = dave.addr();
    drop(dave);
    running.expect_log(&format!("{dave_addr} disconnected"));
    bob.send_line("three of us");
    assert_eq!(next_line(&mut alice), chat_line(bob.addr(), "three of us"));
    // Carol leaves 2 online: back at the limit, leaves are announced again.
    let carol_addr = carol.addr();
    drop(carol);
    let left = format!("* {carol_addr} left (2 online)");
    assert_eq!(next_line(&mut alice), left);
    assert_eq!(next_line(&mut bob), left);
}

/// A flood line long enough that a few make a sizeable write, numbered to check the order.
fn flood_line(i: usize) -> String {
    format!("flood {i:06} {}", "x".repeat(400))
}

fn a_client_that_never_reads_is_dropped_while_the_others_hear_everything(server: Server) {
    // A small outbox, so the sleeper holds the room back as soon as its socket buffers are full,
    // and is dropped `--stall-ms` later.
    const MAX_QUEUE: &str = "4096";
    // Lines sent per batch: about 3.5 KB as relayed, under MAX_QUEUE. The talker sends the next
    // batch only once the listener has heard the last, so the listener is never more than one
    // outbox behind and never holds the room back for long, however the machine schedules it.
    const BATCH: usize = 8;
    // Over ten times what the socket buffers of one connection hold on loopback (a few MB).
    const GIVE_UP_AFTER_BYTES: usize = 64 << 20;

    let running = server.start_unthrottled(&["--max-queue", MAX_QUEUE]);
    let [mut talker, mut listener, mut sleeper] = join(&running);
    let sleeper_left = format!("* {} left (2 online)", sleeper.addr());
    let (mut sent, mut bytes, mut sleeper_gone) = (0, 0, false);
    while !sleeper_gone {
        assert!(
            bytes < GIVE_UP_AFTER_BYTES,
            "a client that never read was still in the room after {bytes} bytes"
        );
        let batch: String = (sent..sent + BATCH).map(|i| flood_line(i) + "\n").collect();
        talker.send(batch.as_bytes());
        bytes += batch.len();
        for i in sent..sent + BATCH {
            let mut line = next_line(&mut listener);
            if line == sleeper_left {
                sleeper_gone = true;
                line = next_line(&mut listener);
            }
            assert_eq!(line, chat_line(talker.addr(), &flood_line(i)));
        }
        sent += BATCH;
    }
    // The room carries on.
    talker.send_line("after the flood");
    assert_eq!(
        next_line(&mut listener),
        chat_line(talker.addr(), "after the flood")
    );
    // The sleeper was disconnected: reading what its socket still held ends in a close. What
    // it holds is the start of the flood, in order; only the last line may be cut off, or be
    // the too-slow notice, or both.
    let held: Vec<String> = sleeper
        .read_to_close()
        .into_iter()
        .filter(|line| !line.starts_with("* welcome "))
        .collect();
    assert!(
        held.len() < sent,
        "the sleeper holds {} lines, the flood was {sent}",
        held.len()
    );
    for (i, line) in held.iter().enumerate().take(held.len().saturating_sub(1)) {
        assert_eq!(line, &chat_line(talker.addr(), &flood_line(i)));
    }
}

fn a_fast_reader_is_never_dropped_in_a_burst_from_many_senders(server: Server) {
    // A burst of this many lines from each sender, all at once...
    const LINES: usize = 2000;
    const SENDERS: usize = 4;
    // ...is about 16 times this per receiver: a limit on how far a client may fall behind,
    // not on how much the room may say.
    const MAX_QUEUE: &str = "65536";

    let running = server.start_unthrottled(&["--max-queue", MAX_QUEUE]);
    let [reader, senders @ ..] = join::<{ SENDERS + 1 }>(&running);
    let addrs: Vec<SocketAddr> = senders.iter().map(Client::addr).collect();
    let line = |i: usize| format!("burst {i:04} {}", "y".repeat(80));

    // Every sender also hears the others; each reads in its own thread, as fast as it can.
    let mut hearing = Vec::new();
    let mut bursting = Vec::new();
    for (s, sender) in senders.into_iter().enumerate() {
        let mut writer = sender.stream().try_clone().expect("clone stream");
        let burst: String = (0..LINES).map(|i| line(i) + "\n").collect();
        bursting.push(thread::spawn(move || writer.write_all(burst.as_bytes())));
        let others: Vec<SocketAddr> = addrs.iter().copied().filter(|&a| a != addrs[s]).collect();
        hearing.push(thread::spawn(move || {
            hear_bursts(sender, &others, LINES, line)
        }));
    }
    let mut reader = reader;
    let reader_heard = hear_bursts_in(&mut reader, &addrs, LINES, line);
    for burst in bursting {
        burst
            .join()
            .expect("sender thread")
            .expect("send the burst");
    }
    let _senders: Vec<Client> = hearing
        .into_iter()
        .map(|heard| heard.join().expect("a sender missed lines of the others"))
        .collect();
    assert_eq!(reader_heard, SENDERS * LINES);
    // Nobody was dropped: the reader is still in the room.
    let mut sender = running.connect();
    sender.send_line("still there?");
    let still = chat_line(sender.addr(), "still there?");
    assert_eq!(reader.read_until(|l| !l.contains(" joined (")), still);
}

/// Reads until `client` has heard `lines` lines from each of `senders`, each sender's in order,
/// and nothing else; returns how many it heard.
fn hear_bursts_in(
    client: &mut Client,
    senders: &[SocketAddr],
    lines: usize,
    line: impl Fn(usize) -> String,
) -> usize {
    let mut next = vec![0; senders.len()];
    let mut heard = 0;
    while next.iter().any(|&n| n < lines) {
        let got = next_line(client);
        let Some(s) = senders
            .iter()
            .position(|addr| got.starts_with(&format!("{addr} says: ")))
        else {
            panic!("{} heard {got:?} in the middle of a burst", client.addr());
        };
        assert_eq!(got, chat_line(senders[s], &line(next[s])));
        next[s] += 1;
        heard += 1;
    }
    heard
}

/// [`hear_bursts_in`] for a client owned by a thread; hands the client back so that it stays
/// in the room (a close would be announced to the others).
fn hear_bursts(
    mut client: Client,
    senders: &[SocketAddr],
    lines: usize,
    line: impl Fn(usize) -> String,
) -> Client {
    hear_bursts_in(&mut client, senders, lines, line);
    client
}

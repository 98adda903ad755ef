//! SPEC 4, backpressure in a room (v3, v4): the server reads from senders only as fast as the
//! receivers take the bytes, so nothing is dropped and a client that reads as fast as it can
//! is never disconnected, whatever the senders do. A receiver that holds the room back for
//! `--stall-ms` in a row, because it stopped reading or reads a trickle, is disconnected, and
//! the room goes on. A client closed with a last notice (`* error: too slow`, `* server full`)
//! reads that notice last, then an orderly close, never a reset.
//!
//! Each scenario is a function taking the [`Server`] to run; [`server_tests!`] makes one
//! `#[test]` per room server (`cargo test --test backpressure v3_broadcast`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use sock_chat_tests::{
    chat_line, server_tests, Client, Running, Server, DEADLINE, NEVER_STALL_MS, PATIENT_STALL_MS,
};

server_tests! {
    [v3_broadcast, v3_broadcast_epoll, v4_async] => {
        fast_readers_are_never_dropped_by_a_flood_of_short_lines,
        many_senders_of_long_and_short_lines_lose_nothing_and_drop_nobody,
        a_reader_that_pauses_for_less_than_the_stall_is_not_dropped,
        a_stopped_reader_is_dropped_after_the_stall_and_the_room_carries_on,
        a_trickle_reader_is_dropped_while_fast_readers_are_not,
        a_client_dropped_as_too_slow_reads_the_notice_last_then_an_orderly_close,
        a_client_turned_away_reads_server_full_then_an_orderly_close,
    }
}

/// `--stall-ms` for scenarios that wait for a reader to be dropped: short, so they run fast.
const SHORT_STALL_MS: &str = "200";

/// How long the room may go quiet for its others while a stopped reader is dropped: the stall
/// (200 ms) and plenty for a loaded machine, far below the forever of a room that waits for a
/// reader that never comes back.
const ROOM_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Flood bytes after which a scenario waiting for a reader to be dropped gives up: many times
/// what the kernel buffers for one loopback connection (a few MB), so a reader that stopped is
/// full long before.
const FLOOD_MAX_BYTES: usize = 256 << 20;

fn fast_readers_are_never_dropped_by_a_flood_of_short_lines(server: Server) {
    // The defect as found: four clients read as fast as they can, a fifth sends `a\n` 8192
    // times per write, as fast as its socket takes it. Each 2-byte line reaches every reader
    // as a chat line about twelve times longer. (A server that reads faster than its readers
    // read dropped them all within half a second, when it outran them: built for release and
    // logging at warn. Here, logging every line, it is slower than its readers; the scenario
    // still checks that every line arrives, in order, and nobody is dropped.)
    const READERS: usize = 4;
    const LINES_PER_WRITE: usize = 8192;
    const WRITES: usize = 128;
    const LINES: usize = LINES_PER_WRITE * WRITES;

    let running = server.start_unthrottled(&["--stall-ms", NEVER_STALL_MS]);
    let [mut flooder, readers @ ..] = join::<{ READERS + 1 }>(&running);
    let name = flooder.addr();
    let hearing: Vec<JoinHandle<Client>> = readers
        .into_iter()
        .map(|reader| thread::spawn(move || hear_letters(reader, name, LINES)))
        .collect();
    let mut writer = flooder.stream().try_clone().expect("clone stream");
    for write in 0..WRITES {
        writer
            .write_all(&letter_lines(write * LINES_PER_WRITE, LINES_PER_WRITE))
            .expect("flood");
    }
    let mut readers: Vec<Client> = hearing
        .into_iter()
        .map(|heard| heard.join().expect("a reader missed lines or was dropped"))
        .collect();
    expect_all_still_in_room(&mut flooder, &mut readers);
}

fn many_senders_of_long_and_short_lines_lose_nothing_and_drop_nobody(server: Server) {
    const SENDERS: usize = 5;
    const READERS: usize = 5;
    const LINES: usize = 2000;
    // Lines of one byte and lines of the longest length the server takes, mixed.
    let line = |i: usize| -> String {
        let text = format!("{i:05}");
        match i % 3 {
            0 => text,
            1 => text + &"s".repeat(i % 7),
            _ => format!("{text} {}", "L".repeat(1024 - 6)),
        }
    };

    let running = server.start_unthrottled(&["--stall-ms", NEVER_STALL_MS]);
    let clients = join::<{ SENDERS + READERS }>(&running);
    let addrs: Vec<SocketAddr> = clients.iter().map(Client::addr).collect();
    let senders = &addrs[..SENDERS];
    let mut hearing = Vec::new();
    let mut speaking = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        if i < SENDERS {
            let mut writer = client.stream().try_clone().expect("clone stream");
            speaking.push(thread::spawn(move || {
                // A few lines per write, so senders interleave within the server's reads.
                for start in (0..LINES).step_by(16) {
                    let burst: String = (start..LINES.min(start + 16))
                        .map(|i| line(i) + "\n")
                        .collect();
                    writer.write_all(burst.as_bytes()).expect("send");
                }
            }));
        }
        // Every client hears every sender but itself.
        let from: Vec<SocketAddr> = senders.iter().copied().filter(|&s| s != addrs[i]).collect();
        hearing.push(thread::spawn(move || {
            hear_numbered(client, &from, LINES, line)
        }));
    }
    for sender in speaking {
        sender.join().expect("a sender could not send");
    }
    let mut clients: Vec<Client> = hearing
        .into_iter()
        .map(|heard| heard.join().expect("a client missed lines or was dropped"))
        .collect();
    let (speaker, others) = clients.split_first_mut().expect("clients");
    expect_all_still_in_room(speaker, others);
}

fn a_reader_that_pauses_for_less_than_the_stall_is_not_dropped(server: Server) {
    // A reader busy elsewhere for a moment (a window being dragged, a laptop's fan spinning
    // up): much less than the stall, even on a loaded machine.
    const PAUSE: Duration = Duration::from_millis(2000);
    const STALL_MS: &str = "10000";
    // What the pausing reader's kernel may hold for it: small, so that the pause fills it and
    // the server's queue for it, and the server has to wait.
    const RECEIVE_BUFFER: usize = 64 * 1024;

    let running = server.start_unthrottled(&["--stall-ms", STALL_MS]);
    let [talker, pauser] = join(&running);
    socket2::SockRef::from(pauser.stream())
        .set_recv_buffer_size(RECEIVE_BUFFER)
        .expect("SO_RCVBUF");
    let flood = Flood::start(&talker);
    thread::sleep(PAUSE);
    let mut hearing = Hearing::new(&pauser, talker.addr());
    hearing.until_heard(hearing.heard + 1000);
    flood.stop();
    let heard = hearing.until(&chat_line(talker.addr(), END_OF_FLOOD));
    assert_eq!(heard, flood.sent());
}

fn a_stopped_reader_is_dropped_after_the_stall_and_the_room_carries_on(server: Server) {
    let running = server.start_unthrottled(&["--stall-ms", SHORT_STALL_MS]);
    let [talker, listener, sleeper] = join(&running);
    let sleeper_left = format!("* {} left (2 online)", sleeper.addr());
    let flood = Flood::start(&talker);
    let mut hearing = Hearing::new(&listener, talker.addr());
    hearing.until(&sleeper_left);
    // The room goes on: the listener keeps hearing the flood, in order, after the sleeper left.
    hearing.until_heard(hearing.heard + 1000);
    flood.stop();
    let heard = hearing.until(&chat_line(talker.addr(), END_OF_FLOOD));
    assert_eq!(heard, flood.sent());
    assert!(
        hearing.longest_pause < ROOM_PAUSE_MAX,
        "the listener heard nothing for {:?} while the sleeper held the room",
        hearing.longest_pause
    );
    drop(sleeper);
}

fn a_trickle_reader_is_dropped_while_fast_readers_are_not(server: Server) {
    // A trickle: this much, then a pause, again and again: 20 KB/s, far slower than the room.
    const SIP: usize = 1024;
    const BETWEEN_SIPS: Duration = Duration::from_millis(50);

    let running = server.start_unthrottled(&["--stall-ms", PATIENT_STALL_MS]);
    let [talker, fast, also_fast, trickle] = join(&running);
    let trickle_left = format!("* {} left (3 online)", trickle.addr());
    let stop_sipping = Arc::new(AtomicBool::new(false));
    let sipping = {
        let stop = Arc::clone(&stop_sipping);
        let mut stream = trickle.stream().try_clone().expect("clone stream");
        thread::spawn(move || {
            let mut sip = [0u8; SIP];
            while !stop.load(Ordering::Relaxed) {
                match stream.read(&mut sip) {
                    Ok(0) => return,
                    Ok(_) => thread::sleep(BETWEEN_SIPS),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
    };
    let flood = Flood::start(&talker);
    let (left_tx, left_rx) = mpsc::channel();
    let hearing: Vec<JoinHandle<(Client, u64)>> = [fast, also_fast]
        .into_iter()
        .map(|client| {
            let (talker, trickle_left, left_tx) =
                (talker.addr(), trickle_left.clone(), left_tx.clone());
            thread::spawn(move || {
                let mut hearing = Hearing::new(&client, talker);
                hearing.until(&trickle_left);
                left_tx.send(()).expect("the main thread waits for this");
                // Then the rest of the flood, in order, and nothing else.
                let heard = hearing.until(&chat_line(talker, END_OF_FLOOD));
                (client, heard)
            })
        })
        .collect();
    // Both fast readers heard the trickle leave; then the flood ends.
    for _ in 0..2 {
        left_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the trickle reader was never dropped");
    }
    let sent = flood.sent();
    stop_sipping.store(true, Ordering::Relaxed);
    for heard in hearing {
        let (_client, heard) = heard
            .join()
            .expect("a fast reader missed lines or was dropped");
        assert_eq!(heard, sent, "a fast reader heard {heard} of {sent} lines");
    }
    sipping.join().expect("trickle thread");
    drop(trickle);
}

fn a_client_dropped_as_too_slow_reads_the_notice_last_then_an_orderly_close(server: Server) {
    let running = server.start_unthrottled(&["--stall-ms", SHORT_STALL_MS]);
    let [talker, listener, mut sleeper] = join(&running);
    let sleeper_left = format!("* {} left (2 online)", sleeper.addr());
    let flood = Flood::start(&talker);
    Hearing::new(&listener, talker.addr()).until(&sleeper_left);
    // Dropped, the sleeper wakes up at once and speaks: input the server must not leave
    // unread, or closing the socket would send a reset that destroys the notice.
    let _ = sleeper.stream().write_all(b"wait, I was reading\n");
    let held = sleeper.read_to_orderly_close();
    flood.sent();
    let (last, before) = held.split_last().expect("the sleeper heard something");
    assert_eq!(last, "* error: too slow, disconnected");
    // Before it, the flood from its start, whole lines only.
    for (i, line) in before.iter().enumerate() {
        assert_eq!(line, &chat_line(talker.addr(), &flood_line(i as u64)));
    }
}

fn a_client_turned_away_reads_server_full_then_an_orderly_close(server: Server) {
    // What a script sends as soon as it connects: far more than the server reads at once.
    const EAGER_BYTES: usize = 64 * 1024;
    let running = server.start(&["--max-clients", "1"]);
    let _inside = running.connect();
    let mut turned_away = running.connect();
    let eager: String = (0..EAGER_BYTES / 16)
        .map(|i| format!("hello {i:08}\n"))
        .collect();
    turned_away.send(eager.as_bytes());
    assert_eq!(
        turned_away.read_to_orderly_close(),
        ["* server full (1 clients)"]
    );
}

// --- joining ---

/// The next line a client receives, skipping v4's `* welcome ...` greeting.
fn next_line(client: &mut Client) -> String {
    client.read_until(|line| !line.starts_with("* welcome "))
}

/// Connects `N` clients one after another. Everyone already in the room hears each join, so on
/// return all of them are in the room and none has anything unread.
fn join<const N: usize>(running: &Running) -> [Client; N] {
    let mut room: Vec<Client> = Vec::with_capacity(N);
    for _ in 0..N {
        let mut newcomer = running.connect();
        if running.server == Server::V4Async {
            // v4 greets a newcomer once it is in the room; the join notice follows.
            newcomer.read_until(|line| line.starts_with("* welcome "));
        }
        let notice = format!("* {} joined ({} online)", newcomer.addr(), room.len() + 1);
        for member in &mut room {
            assert_eq!(next_line(member), notice);
        }
        room.push(newcomer);
    }
    room.try_into().expect("N clients")
}

/// Checks that every one of `others` is still in the room: each hears `speaker`.
fn expect_all_still_in_room(speaker: &mut Client, others: &mut [Client]) {
    speaker.send_line("still there?");
    let still = chat_line(speaker.addr(), "still there?");
    for other in others {
        assert_eq!(next_line(other), still, "{} was dropped", other.addr());
    }
}

// --- reading fast ---

/// Reads a client's lines as fast as the socket gives them: one 64 KiB read at a time, lines
/// handed out in place. [`Client::read_line`] is for a few lines; these scenarios read millions.
struct FastLines {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl FastLines {
    fn new(client: &Client) -> FastLines {
        FastLines {
            stream: client.stream().try_clone().expect("clone stream"),
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The next line without its `\r\n`. Panics on a close, a reset or the deadline.
    fn next(&mut self) -> &str {
        loop {
            if let Some(newline) = self.buf[self.start..self.end]
                .iter()
                .position(|&b| b == b'\n')
            {
                let line = self.start..self.start + newline + 1;
                self.start = line.end;
                let line = &self.buf[line];
                let line = line.strip_suffix(b"\r\n").expect("lines end with \\r\\n");
                return std::str::from_utf8(line).expect("lines are UTF-8");
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => self.end += n,
                Err(error) => panic!("no line within {DEADLINE:?}: {error}"),
            }
        }
    }
}

/// The `count` two-byte lines from `first` on: `a\n`, `b\n`, ... `z\n`, `a\n`, ...
fn letter_lines(first: usize, count: usize) -> Vec<u8> {
    (first..first + count)
        .flat_map(|i| [b'a' + (i % 26) as u8, b'\n'])
        .collect()
}

/// Reads until `client` has heard `lines` letter lines from `sender` in order (see
/// [`letter_lines`]) and nothing else; hands the client back, still connected.
fn hear_letters(client: Client, sender: SocketAddr, lines: usize) -> Client {
    let says = chat_line(sender, "");
    let mut reader = FastLines::new(&client);
    for i in 0..lines {
        let line = reader.next();
        let letter = [b'a' + (i % 26) as u8];
        assert!(
            line.as_bytes().strip_prefix(says.as_bytes()) == Some(&letter[..]),
            "{} heard {line:?} as line {i}",
            client.addr()
        );
    }
    client
}

/// Reads until `client` has heard `lines` lines from each of `senders`, each sender's in order
/// and exactly as sent, and nothing else; hands the client back, still connected.
fn hear_numbered(
    client: Client,
    senders: &[SocketAddr],
    lines: usize,
    line: impl Fn(usize) -> String,
) -> Client {
    let prefixes: Vec<String> = senders.iter().map(|&s| chat_line(s, "")).collect();
    let mut next = vec![0; senders.len()];
    let mut reader = FastLines::new(&client);
    while next.iter().any(|&n| n < lines) {
        let got = reader.next();
        let Some(s) = prefixes.iter().position(|p| got.starts_with(p.as_str())) else {
            panic!("{} heard {got:?} in the middle of the burst", client.addr());
        };
        assert_eq!(
            &got[prefixes[s].len()..],
            line(next[s]),
            "from {}",
            senders[s]
        );
        next[s] += 1;
    }
    client
}

// --- a numbered flood ---

/// The text of flood line `i`: numbered, long enough that the flood fills socket buffers soon.
fn flood_line(i: u64) -> String {
    format!("flood {i:08} {}", "x".repeat(200))
}

/// The line a flood ends with once stopped.
const END_OF_FLOOD: &str = "end of flood";

/// A client sending numbered lines as fast as the server takes them, in its own thread, until
/// stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    sending: JoinHandle<u64>,
}

impl Flood {
    /// Lines per write.
    const BATCH: u64 = 32;

    fn start(talker: &Client) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = talker.stream().try_clone().expect("clone stream");
        let stopped = Arc::clone(&stop);
        let sending = thread::spawn(move || {
            let (mut sent, mut bytes) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                assert!(
                    bytes < FLOOD_MAX_BYTES,
                    "nobody was dropped after {bytes} bytes of flood"
                );
                let batch: String = (sent..sent + Self::BATCH)
                    .map(|i| flood_line(i) + "\n")
                    .collect();
                writer.write_all(batch.as_bytes()).expect("flood");
                sent += Self::BATCH;
                bytes += batch.len();
            }
            writer
                .write_all(format!("{END_OF_FLOOD}\n").as_bytes())
                .expect("end the flood");
            sent
        });
        Flood { stop, sending }
    }

    /// Asks the flood to stop: it ends with [`END_OF_FLOOD`] once its current write is taken,
    /// so its hearers must keep reading up to that line.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// How many flood lines were sent before [`END_OF_FLOOD`]; waits for the flood to end.
    fn sent(self) -> u64 {
        self.stop();
        self.sending.join().expect("flood thread")
    }
}

/// A client hearing a [`Flood`]: every flood line in order, and the longest wait between two
/// lines it heard.
struct Hearing {
    lines: FastLines,
    says: String,
    /// The number of the next flood line, which is also how many were heard.
    heard: u64,
    last_heard: Instant,
    longest_pause: Duration,
}

impl Hearing {
    fn new(client: &Client, talker: SocketAddr) -> Hearing {
        Hearing {
            lines: FastLines::new(client),
            says: chat_line(talker, ""),
            heard: 0,
            last_heard: Instant::now(),
            longest_pause: Duration::ZERO,
        }
    }

    /// Hears flood lines until the line `wanted`; returns how many flood lines came first.
    /// Panics on a flood line out of order and on any other line.
    fn until(&mut self, wanted: &str) -> u64 {
        loop {
            if let Some(line) = self.next_other() {
                assert_eq!(line, wanted, "unexpected line");
                return self.heard;
            }
        }
    }

    /// Hears flood lines until `number` of them were heard; panics on any other line.
    fn until_heard(&mut self, number: u64) {
        while self.heard < number {
            if let Some(line) = self.next_other() {
                panic!("unexpected line {line:?}");
            }
        }
    }

    /// Hears one line: `None` if it was the next flood line, else the line.
    fn next_other(&mut self) -> Option<String> {
        let line = self.lines.next();
        let now = Instant::now();
        self.longest_pause = self.longest_pause.max(now - self.last_heard);
        self.last_heard = now;
        match line.strip_prefix(self.says.as_str()) {
            Some(text) if text != END_OF_FLOOD => {
                assert_eq!(text, flood_line(self.heard), "flood out of order");
                self.heard += 1;
                None
            }
            _ => Some(line.to_owned()),
        }
    }
}

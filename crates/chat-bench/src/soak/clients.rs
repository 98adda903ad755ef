//! What each kind of soak client does, and what it counts.
//!
//! Well-behaved clients are a [`receive`] task each, which checks every line against a
//! [`StreamLedger`] per sender, and a [`chat`] or [`flood`] task that sends. Non-readers
//! ([`non_reader`]) and churners ([`churn`]) are one task each and only add to [`Counters`].
//! Everything they share is in [`Shared`]: written by its owner, read by the coordinator.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chat_protocol::message;
use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::Plan;
use crate::load::{next_tag, now_nanos, Mode};
use crate::tally::{new_latencies, Arrival, Latencies, StreamLedger, LATENCY_UNIT_NANOS};
use crate::token::{for_each_token, write_token, Kind, RunTag, Token, TOKEN_LEN};

/// The shortest `--max-line` a soak can work with: a flood line holds a token and a space.
pub(super) const MAX_LINE_MIN: usize = TOKEN_LEN + 1;

/// The longest `--max-line` a soak accepts: receivers hold a few lines in their buffer.
pub(super) const MAX_LINE_MAX: usize = 1024 * 1024;

/// How often a chatter says something: ten lines a second, a busy person's typing bursts.
pub(super) const CHATTER_INTERVAL: Duration = Duration::from_millis(100);

/// What a chatter's line says before its token, so the line looks like chat.
const CHATTER_TEXT: &[u8] = b"hello everyone, a chatter here ";

/// Lines of exactly `--max-line` bytes in one flood burst (32 KiB at the default).
pub(super) const FLOOD_LONG_LINES: u32 = 32;

/// Bare-token lines in one flood burst (9 KiB): the most lines per byte.
pub(super) const FLOOD_SHORT_LINES: u32 = 256;

/// One burst in this many, from the first, carries an overlong line between its long and
/// short lines.
pub(super) const FLOOD_OVERLONG_EVERY: u64 = 50;

/// How far past `--max-line` an overlong line goes: more than one read's worth of a small
/// server buffer, so that refusing it takes the framer across reads.
const OVERLONG_BEYOND: usize = 1000;

/// Written at both ends of every overlong line: if any receiver ever sees it, some of an
/// overlong line was relayed. No other line holds it.
const OVERLONG_MARK: &[u8] = b"soak-overlong-line";

/// What fills long lines: one letter, no token marker, no whitespace for a sanitiser to trim.
const FILLER: u8 = b'x';

/// The highest sequence number a flooder sends; it stops there (a bounded loop), long before
/// a token's 8 hex digits run out.
const SEQ_LIMIT: u32 = u32::MAX - 2 * (FLOOD_LONG_LINES + FLOOD_SHORT_LINES);

/// Long lines a non-reader sends on each visit: about a megabyte, enough that on an echo
/// server its own echoes fill every buffer on the way back.
const NON_READER_LINES: usize = 1024;

/// How long a non-reader may try to send before it gives up (its own echoes may block it).
const NON_READER_SEND: Duration = Duration::from_secs(1);

/// How long a non-reader stays without reading: ten times a room's default `--stall-ms`.
const NON_READER_HOLD: Duration = Duration::from_secs(5);

/// At the end of a visit a non-reader reads what it was sent, to learn whether the server
/// closed it; it stops after this long, or after [`NON_READER_QUIET`] without a byte.
const NON_READER_CHECK: Duration = Duration::from_secs(1);

/// A connection silent for this long after its buffers were read was not closed.
const NON_READER_QUIET: Duration = Duration::from_millis(200);

/// The pause between two of a churner's connections (and two non-reader visits).
const CHURN_PAUSE: Duration = Duration::from_millis(20);

/// How long a half-closed churner waits for the server to close its side. SPEC 4: the server
/// cleans up a half-closed client; what it still owes it is a few hundred kilobytes at most.
pub(super) const CHURN_EOF_TIMEOUT: Duration = Duration::from_secs(5);

/// A churner that vanishes mid-line first sends this many times `--max-line` bytes with no
/// newline, which the server must discard without keeping them.
const VANISH_LINE_FACTOR: usize = 4;

/// What churners send: each line breaks a rule of SPEC 3 that the sanitiser must enforce
/// before anyone else sees the line.
const JUNK: &[&[u8]] = &[
    // ANSI escapes (clear the screen, move the cursor, red) and a bell.
    b"\x1b[2J\x1b[H\x1b[31mscreen cleared, text red\x1b[0m\x07\n",
    // Invalid UTF-8: stray bytes, an overlong '/', a surrogate, a cut-off sequence.
    b"bad utf-8 \xff\xfe \xc0\xaf \xed\xa0\x80 \xf0\x28\x8c\x28 end\n",
    // Telnet commands: WILL ECHO, DO SUPPRESS-GO-AHEAD, a subnegotiation.
    b"\xff\xfb\x01\xff\xfd\x03telnet commands\xff\xfa\x18\x01\xff\xf0 end\n",
    // Bidirectional controls: an override and an isolate.
    "bidi \u{202e}desrever\u{202c} and \u{2067}isolate\u{2069} end\n".as_bytes(),
    // C1 controls: a CSI and a next-line.
    "c1 controls \u{9b}31m \u{85} end\n".as_bytes(),
    // NUL, DEL and backspace, and a CRLF ending.
    b"nul \x00 del \x7f backspace \x08 end\r\n",
    // Blank and whitespace-only lines, which are no lines at all.
    b"   \t  \n",
    b"\n",
];

/// How long any connect may take before it counts as refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a churner's or non-reader's small write may take (its socket is new and empty).
const JUNK_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The smallest read buffer of a well-behaved receiver; more with a long `--max-line`.
const READ_BUFFER: usize = 64 * 1024;

/// A receiver's buffer holds at least this many of the longest lines a server may send...
const LONGEST_LINES_PER_BUFFER: usize = 4;

/// ...each `--max-line` bytes plus what the server adds to it: a name (an address, or a
/// nickname of at most 16 bytes), ` says: ` and `\r\n`.
const LINE_OVERHEAD: usize = 256;

/// Counts that every churner and non-reader adds to.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) churn_cycles: AtomicU64,
    pub(super) resets: AtomicU64,
    pub(super) vanished: AtomicU64,
    pub(super) half_closes: AtomicU64,
    /// Half-closed churners the server never closed.
    pub(super) unanswered: AtomicU64,
    pub(super) closes: AtomicU64,
    pub(super) visits: AtomicU64,
    pub(super) evicted: AtomicU64,
    pub(super) evicted_with_notice: AtomicU64,
    /// Connects (churners and non-readers) that failed or timed out.
    pub(super) refused: AtomicU64,
    pub(super) first_refusal: Mutex<Option<String>>,
    /// Lines read by churners that SPEC 3 forbids.
    pub(super) unsanitised: AtomicU64,
    pub(super) first_unsanitised: Mutex<Option<String>>,
}

impl Counters {
    fn refused(&self, why: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_refusal.lock() {
            first.get_or_insert(why);
        }
    }
}

/// What every task of a soak shares.
#[derive(Debug)]
pub(super) struct Shared {
    tag: RunTag,
    addr: SocketAddr,
    pub(super) plan: Plan,
    /// Lines each well-behaved client has handed to the kernel whole.
    pub(super) sent: Vec<AtomicU32>,
    /// `seen[receiver * n + sender]`: lines of `sender` that `receiver` has seen, without a
    /// gap, from the first.
    seen: Vec<AtomicU32>,
    /// Overlong lines each well-behaved client sent, and the refusals it has read.
    pub(super) overlong_sent: Vec<AtomicU32>,
    refusals: Vec<AtomicU32>,
    /// Well-behaved clients whose connection ended (seen by their receiving side)...
    closed: Vec<AtomicBool>,
    /// ...which tells their sending side to stop: its lines would go nowhere.
    gone: Vec<Notify>,
    probed: AtomicUsize,
    pub(super) delivered: AtomicU64,
    /// When the traffic started, on the tokens' clock (0 before).
    pub(super) traffic_started: AtomicU64,
    /// Wakes the coordinator: everyone probed, a connection closed.
    wake: Notify,
    pub(super) counters: Counters,
    /// `* error: line too long (max N bytes)`, as the server words it.
    refusal: Vec<u8>,
}

impl Shared {
    pub(super) fn new(plan: &Plan, addr: SocketAddr) -> Shared {
        let n = plan.well_behaved();
        let counts = |size: usize| (0..size).map(|_| AtomicU32::new(0)).collect();
        Shared {
            tag: next_tag(),
            addr,
            plan: plan.clone(),
            sent: counts(n),
            seen: counts(n * n),
            overlong_sent: counts(n),
            refusals: counts(n),
            closed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            gone: (0..n).map(|_| Notify::new()).collect(),
            probed: AtomicUsize::new(0),
            delivered: AtomicU64::new(0),
            traffic_started: AtomicU64::new(0),
            wake: Notify::new(),
            counters: Counters::default(),
            refusal: message::line_too_long(plan.max_line).into_bytes(),
        }
    }

    /// Lines the well-behaved clients have sent so far.
    pub(super) fn sent_total(&self) -> u64 {
        self.sent
            .iter()
            .map(|s| u64::from(s.load(Ordering::Acquire)))
            .sum()
    }

    fn refusals_total(&self) -> u64 {
        self.refusals
            .iter()
            .map(|r| u64::from(r.load(Ordering::Acquire)))
            .sum()
    }

    fn closed_count(&self) -> usize {
        self.closed
            .iter()
            .filter(|c| c.load(Ordering::Acquire))
            .count()
    }

    fn seen(&self, receiver: usize, sender: usize) -> &AtomicU32 {
        &self.seen[receiver * self.plan.well_behaved() + sender]
    }

    /// Lines sent that some receiver has not seen yet, over every (sender, receiver) pair of
    /// connections still open, and refusals of overlong lines not read yet.
    pub(super) fn behind(&self) -> u64 {
        let n = self.plan.well_behaved();
        let mut behind = 0;
        for receiver in (0..n).filter(|&r| !self.closed[r].load(Ordering::Acquire)) {
            let judged = |&s: &usize| {
                self.plan.expects(receiver, s) && !self.closed[s].load(Ordering::Acquire)
            };
            for sender in (0..n).filter(judged) {
                let sent = self.sent[sender].load(Ordering::Acquire);
                let seen = self.seen(receiver, sender).load(Ordering::Acquire);
                behind += u64::from(sent.saturating_sub(seen));
            }
            let owed = self.overlong_sent[receiver].load(Ordering::Acquire);
            let refused = self.refusals[receiver].load(Ordering::Acquire);
            behind += u64::from(owed.saturating_sub(refused));
        }
        behind
    }
}

/// The well-behaved clients, connected and proven in: their sending halves, and their
/// receiving tasks, which already run (welcomes and join notices are read, never left in a
/// socket buffer).
#[derive(Debug)]
pub(super) struct Joined {
    writers: Vec<OwnedWriteHalf>,
    receiving: Vec<JoinHandle<(OwnedReadHalf, Receiver)>>,
    stop_receiving: watch::Sender<bool>,
}

/// Connects the well-behaved clients and proves every one is in: a room relays client 0's
/// probe (sent every `probe_every`, since a probe relayed before a client joined never
/// reaches it) to all the others; an echo server returns each client's own. A line sent after
/// this reaches every one of them, so none can miss a line for having joined late.
pub(super) async fn join(
    shared: &Arc<Shared>,
    probe_every: Duration,
    timeout: Duration,
) -> anyhow::Result<Joined> {
    let plan = &shared.plan;
    let (stop_receiving, stop) = watch::channel(false);
    let mut writers = Vec::with_capacity(plan.well_behaved());
    let mut receiving = Vec::with_capacity(plan.well_behaved());
    for index in 0..plan.well_behaved() {
        let stream = connect(shared.addr)
            .await
            .with_context(|| format!("well-behaved client {} could not connect", index + 1))?;
        // Chatters' lines are awaited one by one: never hold them back for Nagle.
        stream.set_nodelay(true)?;
        let (reader, mut writer) = stream.into_split();
        let receiver = Receiver::new(index, shared);
        let stop = stop.clone();
        receiving.push(tokio::spawn(receive(
            reader,
            receiver,
            Arc::clone(shared),
            stop,
        )));
        if plan.mode == Mode::Echo {
            // A failure shows as the receiver's closed connection.
            let _ = writer.write_all(&probe_line(shared.tag, index, 0)).await;
        }
        writers.push(writer);
    }
    let give_up = Instant::now() + timeout;
    let mut round = 0;
    while shared.probed.load(Ordering::Acquire) < probe_target(shared) {
        let closed = shared.closed_count();
        if closed > 0 || Instant::now() > give_up {
            bail!(
                "only {} of {} well-behaved clients were confirmed in ({closed} connections \
                 closed by the server) within {} s",
                shared.probed.load(Ordering::Acquire),
                probe_target(shared),
                timeout.as_secs()
            );
        }
        if plan.mode == Mode::Broadcast {
            let _ = writers[0]
                .write_all(&probe_line(shared.tag, 0, round))
                .await;
            round += 1;
        }
        let _ = tokio::time::timeout(probe_every, shared.wake.notified()).await;
    }
    Ok(Joined {
        writers,
        receiving,
        stop_receiving,
    })
}

/// Every client at work.
#[derive(Debug)]
pub(super) struct Traffic {
    sending: Vec<JoinHandle<(OwnedWriteHalf, Sent)>>,
    receiving: Vec<JoinHandle<(OwnedReadHalf, Receiver)>>,
    stop_receiving: watch::Sender<bool>,
    give_up: watch::Sender<bool>,
    others: Vec<JoinHandle<()>>,
}

/// Starts the chatters and flooders (on the joined connections), the non-readers and the
/// churners; each stops by itself at `deadline`.
pub(super) fn start(
    shared: &Arc<Shared>,
    joined: Joined,
    started: Instant,
    deadline: Instant,
) -> Traffic {
    let plan = &shared.plan;
    shared.traffic_started.store(now_nanos(), Ordering::Release);
    let (give_up, give_up_rx) = watch::channel(false);
    let mut sending = Vec::with_capacity(plan.well_behaved());
    for (index, writer) in joined.writers.into_iter().enumerate() {
        let shared = Arc::clone(shared);
        let give_up = give_up_rx.clone();
        sending.push(if index < plan.chatters {
            tokio::spawn(chat(index, writer, shared, started, deadline, give_up))
        } else {
            tokio::spawn(flood(index, writer, shared, deadline, give_up))
        });
    }
    let mut others = Vec::new();
    for index in 0..plan.non_readers {
        others.push(tokio::spawn(non_reader(
            index,
            Arc::clone(shared),
            deadline,
        )));
    }
    for index in 0..plan.churners {
        others.push(tokio::spawn(churn(index, Arc::clone(shared), deadline)));
    }
    Traffic {
        sending,
        receiving: joined.receiving,
        stop_receiving: joined.stop_receiving,
        give_up,
        others,
    }
}

/// What the well-behaved clients counted, once the traffic is over; dropping it closes
/// their connections.
#[derive(Debug)]
pub(super) struct Ended {
    pub(super) receivers: Vec<Receiver>,
    /// By client: why it could not send, if it could not.
    pub(super) send_failures: Vec<Option<String>>,
    /// Senders still unable to send when the soak stopped waiting for them.
    pub(super) blocked_senders: usize,
    // Never read: holding them keeps the clients connected until everything is measured.
    _connections: Vec<(OwnedReadHalf, OwnedWriteHalf)>,
}

impl Traffic {
    /// Waits, once the senders are done, until every receiver still connected has seen
    /// every line sent by every sender still connected (and every flooder its refusals):
    /// true if that happened before `timeout`, or before `stall` passed with nothing
    /// arriving (a line that has not come by then is not coming).
    pub(super) async fn catch_up(
        &self,
        shared: &Shared,
        timeout: Duration,
        stall: Duration,
        tick: Duration,
    ) -> bool {
        let give_up = Instant::now() + timeout;
        let progress = || shared.delivered.load(Ordering::Acquire) + shared.refusals_total();
        let (mut last, mut moved) = (progress(), Instant::now());
        loop {
            let senders_done = self.sending.iter().all(JoinHandle::is_finished);
            if senders_done && shared.behind() == 0 {
                return true;
            }
            let now = progress();
            if now != last {
                (last, moved) = (now, Instant::now());
            }
            if Instant::now() > give_up || moved.elapsed() > stall {
                return false;
            }
            let _ = tokio::time::timeout(tick, shared.wake.notified()).await;
        }
    }

    /// Stops every task and collects what it counted.
    pub(super) async fn end(self) -> anyhow::Result<Ended> {
        let _ = self.give_up.send(true);
        let _ = self.stop_receiving.send(true);
        let mut send_failures = Vec::with_capacity(self.sending.len());
        let mut blocked_senders = 0;
        let mut writers = Vec::with_capacity(self.sending.len());
        for task in self.sending {
            let (writer, sent) = task.await.context("a sending task failed")?;
            blocked_senders += usize::from(sent.blocked);
            send_failures.push(sent.error);
            writers.push(writer);
        }
        let mut receivers = Vec::with_capacity(self.receiving.len());
        let mut readers = Vec::with_capacity(self.receiving.len());
        for task in self.receiving {
            let (reader, receiver) = task.await.context("a receiving task failed")?;
            readers.push(reader);
            receivers.push(receiver);
        }
        for task in self.others {
            task.await.context("a churner or non-reader failed")?;
        }
        Ok(Ended {
            receivers,
            send_failures,
            blocked_senders,
            _connections: readers.into_iter().zip(writers).collect(),
        })
    }
}

/// Connects, or says why not within [`CONNECT_TIMEOUT`].
async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(error).with_context(|| format!("connecting to {addr}")),
        Err(_) => bail!(
            "connecting to {addr} took more than {} s",
            CONNECT_TIMEOUT.as_secs()
        ),
    }
}

fn probe_line(tag: RunTag, client: usize, round: u32) -> Vec<u8> {
    let mut line = Vec::with_capacity(TOKEN_LEN + 1);
    push_token(&mut line, tag, Kind::Probe, client, round);
    line.push(b'\n');
    line
}

fn push_token(out: &mut Vec<u8>, tag: RunTag, kind: Kind, sender: usize, seq: u32) {
    let token = Token {
        kind,
        sender: sender as u16,
        seq,
        sent_nanos: now_nanos(),
    };
    write_token(out, tag, token);
}

/// Reads into a buffer and hands on whole lines; the unfinished last one waits for the next
/// read. A line longer than the buffer is cut, keeping its tail.
#[derive(Debug)]
struct LineBuffer {
    buffer: Vec<u8>,
    filled: usize,
}

impl LineBuffer {
    fn new(size: usize) -> LineBuffer {
        LineBuffer {
            buffer: vec![0; size],
            filled: 0,
        }
    }

    /// Where the next read goes.
    fn space(&mut self) -> &mut [u8] {
        &mut self.buffer[self.filled..]
    }

    /// Takes `n` bytes just read into [`LineBuffer::space`] and passes every whole line so
    /// far to `lines`, at once.
    fn commit(&mut self, n: usize, lines: impl FnOnce(&[u8])) {
        let end = self.filled + n;
        match memchr::memrchr(b'\n', &self.buffer[..end]) {
            Some(last) => {
                lines(&self.buffer[..=last]);
                self.buffer.copy_within(last + 1..end, 0);
                self.filled = end - last - 1;
            }
            None if end == self.buffer.len() => {
                // Keep what could be the start of a token or of a mark.
                let keep = TOKEN_LEN.max(OVERLONG_MARK.len());
                self.buffer.copy_within(end - keep..end, 0);
                self.filled = keep;
            }
            None => self.filled = end,
        }
    }
}

/// Whole lines as a server sent them that hold something SPEC 3 says no client may receive:
/// invalid UTF-8, or a character the sanitiser removes (a control other than TAB, a
/// bidirectional control). Calls `found` with each such line.
fn unsanitised_lines(lines: &[u8], mut found: impl FnMut(&[u8])) {
    // Only a line with a byte that is not plain ASCII needs a closer look (a relayed
    // U+FFFD, a name in another script): floods are plain, and stay on the fast path.
    let mut from = 0;
    while let Some(offset) = first_unplain(&lines[from..]) {
        let at = from + offset;
        let start = memchr::memrchr(b'\n', &lines[..at]).map_or(0, |end| end + 1);
        let end = memchr::memchr(b'\n', &lines[at..]).map_or(lines.len(), |end| at + end);
        let line = &lines[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let clean = std::str::from_utf8(line)
            .is_ok_and(|text| !text.chars().any(chat_protocol::sanitize::is_forbidden));
        if !clean {
            found(line);
        }
        from = end + 1;
        if from >= lines.len() {
            break;
        }
    }
}

/// Printable ASCII, TAB and line endings: what nearly every line is made of.
fn is_plain(b: u8) -> bool {
    (b' '..0x7f).contains(&b) | (b == b'\t') | (b == b'\r') | (b == b'\n')
}

/// Where the first byte that is not [`is_plain`] is. Checked a block at a time without
/// stopping early inside a block, so that the compiler uses vector instructions: this runs
/// over every byte a flood delivers, and byte by byte it took a third of chat-bench's CPU.
fn first_unplain(bytes: &[u8]) -> Option<usize> {
    /// Bytes checked together: a few vector registers' worth.
    const BLOCK: usize = 64;
    let mut offset = 0;
    for block in bytes.chunks(BLOCK) {
        if !block.iter().fold(true, |plain, &b| plain & is_plain(b)) {
            return block
                .iter()
                .position(|&b| !is_plain(b))
                .map(|at| offset + at);
        }
        offset += block.len();
    }
    None
}

/// A forbidden line as a person can read it in a report.
pub(super) fn escaped(line: &[u8]) -> String {
    /// Enough characters to recognise a line by, few enough for one line of a report.
    const SHOWN: usize = 80;
    let text = line.escape_ascii().to_string();
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// One well-behaved client's receiving side: everything it counts is its own.
#[derive(Debug)]
pub(super) struct Receiver {
    index: usize,
    /// By sender: `Some` for the senders whose lines this client should receive.
    pub(super) ledgers: Vec<Option<StreamLedger>>,
    /// Whose probe proves this client is in: client 0's in a room, its own on an echo server.
    probe_from: Option<u16>,
    probed: bool,
    /// Of chatters' lines only: flooders' lines wait in queues by design.
    pub(super) latencies: Latencies,
    pub(super) unexpected: u64,
    pub(super) refusals: u32,
    pub(super) too_slow: bool,
    pub(super) other_errors: u64,
    pub(super) first_other_error: Option<String>,
    pub(super) overlong_relayed: u64,
    pub(super) unsanitised: u64,
    pub(super) first_unsanitised: Option<String>,
    pub(super) closed: bool,
    /// When the connection ended, on the tokens' clock.
    pub(super) closed_at: u64,
    /// The last whole line received, to explain a disconnection.
    pub(super) last_line: Vec<u8>,
}

impl Receiver {
    fn new(index: usize, shared: &Shared) -> Receiver {
        let plan = &shared.plan;
        Receiver {
            index,
            ledgers: (0..plan.well_behaved())
                .map(|sender| plan.expects(index, sender).then(StreamLedger::default))
                .collect(),
            probe_from: match plan.mode {
                Mode::Broadcast if index == 0 => None,
                Mode::Broadcast => Some(0),
                Mode::Echo => Some(index as u16),
            },
            probed: false,
            latencies: new_latencies(),
            unexpected: 0,
            refusals: 0,
            too_slow: false,
            other_errors: 0,
            first_other_error: None,
            overlong_relayed: 0,
            unsanitised: 0,
            first_unsanitised: None,
            closed: false,
            closed_at: 0,
            last_line: Vec::new(),
        }
    }

    /// Accounts for a chunk of whole lines, read at `now`.
    fn ingest(&mut self, lines: &[u8], now: u64, shared: &Shared) {
        let chatters = shared.plan.chatters;
        let mut arrived = 0;
        let mut probe_seen = false;
        let (ledgers, latencies, unexpected) =
            (&mut self.ledgers, &mut self.latencies, &mut self.unexpected);
        let probe_from = self.probe_from;
        for_each_token(lines, shared.tag, |token| match token.kind {
            Kind::Data => {
                let sender = usize::from(token.sender);
                let Some(Some(ledger)) = ledgers.get_mut(sender) else {
                    *unexpected += 1;
                    return;
                };
                if let Arrival::InOrder | Arrival::OutOfOrder = ledger.record(token.seq) {
                    arrived += 1;
                    if sender < chatters {
                        let micros = now.saturating_sub(token.sent_nanos) / LATENCY_UNIT_NANOS;
                        latencies.saturating_record(micros.max(1));
                    }
                }
            }
            Kind::Probe => probe_seen |= Some(token.sender) == probe_from,
        });
        if probe_seen && !self.probed {
            self.probed = true;
            if shared.probed.fetch_add(1, Ordering::AcqRel) + 1 >= probe_target(shared) {
                shared.wake.notify_one();
            }
        }
        if arrived > 0 {
            shared.delivered.fetch_add(arrived, Ordering::Relaxed);
            for (sender, ledger) in self.ledgers.iter().enumerate() {
                if let Some(ledger) = ledger {
                    shared
                        .seen(self.index, sender)
                        .store(ledger.contiguous(), Ordering::Release);
                }
            }
        }
        self.notices(lines, shared);
        self.overlong_relayed += memmem::find_iter(lines, OVERLONG_MARK).count() as u64;
        unsanitised_lines(lines, |line| {
            self.unsanitised += 1;
            self.first_unsanitised.get_or_insert_with(|| escaped(line));
        });
        let body = &lines[..lines.len() - 1];
        let start = memchr::memrchr(b'\n', body).map_or(0, |at| at + 1);
        self.last_line.clear();
        self.last_line.extend_from_slice(&body[start..]);
    }

    /// Counts the `* error: ...` notices among `lines`. A too-slow notice counts wherever it
    /// is: a server that writes it after half a line glues it to that line.
    fn notices(&mut self, lines: &[u8], shared: &Shared) {
        /// How every error notice starts (SPEC 3).
        const ERROR: &[u8] = b"* error: ";
        self.too_slow |= memmem::find(lines, message::TOO_SLOW.as_bytes()).is_some();
        let at_line_starts = memmem::find_iter(lines, b"\n* error: ").map(|at| at + 1);
        let starts = lines
            .starts_with(ERROR)
            .then_some(0)
            .into_iter()
            .chain(at_line_starts);
        for start in starts {
            let rest = &lines[start..];
            let line = &rest[..memchr::memchr(b'\n', rest).unwrap_or(rest.len())];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line == shared.refusal.as_slice() {
                self.refusals += 1;
                shared.refusals[self.index].store(self.refusals, Ordering::Release);
                shared.wake.notify_one();
            } else if line != message::TOO_SLOW.as_bytes() {
                self.other_errors += 1;
                self.first_other_error
                    .get_or_insert_with(|| String::from_utf8_lossy(line).into_owned());
            }
        }
    }
}

fn probe_target(shared: &Shared) -> usize {
    match shared.plan.mode {
        Mode::Broadcast => shared.plan.well_behaved() - 1,
        Mode::Echo => shared.plan.well_behaved(),
    }
}

/// A well-behaved client's reading: as fast as it can, until told to stop or closed.
async fn receive(
    mut reader: OwnedReadHalf,
    mut me: Receiver,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> (OwnedReadHalf, Receiver) {
    let longest = shared.plan.max_line + LINE_OVERHEAD;
    let size = READ_BUFFER.max(LONGEST_LINES_PER_BUFFER * longest);
    let mut buffer = LineBuffer::new(size);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let read = tokio::select! {
            biased;
            _ = &mut stopped => break,
            read = reader.read(buffer.space()) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                me.closed = true;
                me.closed_at = now_nanos();
                shared.closed[me.index].store(true, Ordering::Release);
                shared.gone[me.index].notify_one();
                shared.wake.notify_one();
                break;
            }
            Ok(n) => {
                let now = now_nanos();
                buffer.commit(n, |lines| me.ingest(lines, now, &shared));
            }
        }
    }
    (reader, me)
}

/// How a well-behaved sender ended.
#[derive(Debug, Default)]
struct Sent {
    /// It could not finish a write before the soak gave up waiting.
    blocked: bool,
    error: Option<String>,
}

/// Writes `bytes` for well-behaved client `me` unless the connection is gone or the soak
/// gives up waiting first; true if they were all written.
async fn send(
    me: usize,
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    shared: &Shared,
    give_up: &mut watch::Receiver<bool>,
    sent: &mut Sent,
) -> bool {
    if *give_up.borrow() {
        sent.blocked = true;
        return false;
    }
    tokio::select! {
        written = writer.write_all(bytes) => match written {
            Ok(()) => true,
            Err(error) => {
                sent.error = Some(error.to_string());
                false
            }
        },
        // A server that evicts a client may stop reading it too: the write would never end.
        () = shared.gone[me].notified() => false,
        _ = give_up.changed() => {
            sent.blocked = true;
            false
        }
    }
}

/// A chatter: a token line every [`CHATTER_INTERVAL`] until the deadline.
async fn chat(
    me: usize,
    mut writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    started: Instant,
    deadline: Instant,
    mut give_up: watch::Receiver<bool>,
) -> (OwnedWriteHalf, Sent) {
    // Spread over one interval, so that chatters take turns instead of speaking together.
    let offset = CHATTER_INTERVAL.mul_f64(me as f64 / shared.plan.chatters as f64);
    let mut ticks = tokio::time::interval_at((started + offset).into(), CHATTER_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = Sent::default();
    let mut line = Vec::with_capacity(CHATTER_TEXT.len() + TOKEN_LEN + 1);
    let mut seq = 0;
    loop {
        ticks.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        line.clear();
        line.extend_from_slice(CHATTER_TEXT);
        push_token(&mut line, shared.tag, Kind::Data, me, seq);
        line.push(b'\n');
        if !send(me, &mut writer, &line, &shared, &mut give_up, &mut sent).await {
            break;
        }
        seq += 1;
        shared.sent[me].store(seq, Ordering::Release);
    }
    (writer, sent)
}

/// A flooder: bursts of long and short lines, an overlong one now and then, as fast as the
/// socket takes them, until the deadline.
async fn flood(
    me: usize,
    mut writer: OwnedWriteHalf,
    shared: Arc<Shared>,
    deadline: Instant,
    mut give_up: watch::Receiver<bool>,
) -> (OwnedWriteHalf, Sent) {
    let max_line = shared.plan.max_line;
    let filler = vec![FILLER; max_line - TOKEN_LEN - 1];
    let overlong = overlong_line(max_line);
    let mut burst = Vec::new();
    let mut sent = Sent::default();
    let mut seq = 0;
    let mut bursts = 0u64;
    while Instant::now() < deadline && seq < SEQ_LIMIT {
        burst.clear();
        for _ in 0..FLOOD_LONG_LINES {
            push_token(&mut burst, shared.tag, Kind::Data, me, seq);
            burst.push(b' ');
            burst.extend_from_slice(&filler);
            burst.push(b'\n');
            seq += 1;
        }
        // The first burst has one, so that even a soak of seconds sends some.
        let with_overlong = bursts.is_multiple_of(FLOOD_OVERLONG_EVERY);
        if with_overlong {
            burst.extend_from_slice(&overlong);
        }
        for _ in 0..FLOOD_SHORT_LINES {
            push_token(&mut burst, shared.tag, Kind::Data, me, seq);
            burst.push(b'\n');
            seq += 1;
        }
        if !send(me, &mut writer, &burst, &shared, &mut give_up, &mut sent).await {
            break;
        }
        shared.sent[me].store(seq, Ordering::Release);
        if with_overlong {
            shared.overlong_sent[me].fetch_add(1, Ordering::Release);
        }
        bursts += 1;
        if !shared.plan.flood_pause.is_zero() {
            tokio::time::sleep(shared.plan.flood_pause).await;
        }
    }
    (writer, sent)
}

/// A line [`OVERLONG_BEYOND`] bytes past `max_line`, marked at both ends.
fn overlong_line(max_line: usize) -> Vec<u8> {
    let length = max_line + OVERLONG_BEYOND;
    let mut line = Vec::with_capacity(length + 1);
    line.extend_from_slice(OVERLONG_MARK);
    line.resize(length - OVERLONG_MARK.len(), FILLER);
    line.extend_from_slice(OVERLONG_MARK);
    line.push(b'\n');
    line
}

/// A non-reader: visits that connect, send, hold without reading, then look whether the
/// server gave up on it, until the deadline.
async fn non_reader(index: usize, shared: Arc<Shared>, deadline: Instant) {
    let counters = &shared.counters;
    let mut line = format!("non-reader {} says ", index + 1).into_bytes();
    line.resize(shared.plan.max_line, FILLER);
    line.push(b'\n');
    let lines = line.repeat(NON_READER_LINES);
    while Instant::now() < deadline {
        let mut stream = match connect(shared.addr).await {
            Ok(stream) => stream,
            Err(error) => {
                counters.refused(format!("non-reader: {error:#}"));
                tokio::time::sleep(CHURN_PAUSE).await;
                continue;
            }
        };
        counters.visits.fetch_add(1, Ordering::Relaxed);
        // What the socket does not take in time is not sent; a cut line is just unfinished.
        let _ = tokio::time::timeout(NON_READER_SEND, stream.write_all(&lines)).await;
        tokio::time::sleep_until(deadline.min(Instant::now() + NON_READER_HOLD).into()).await;
        let (closed, notice) = closed_by_server(&mut stream).await;
        if closed {
            counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
        if notice {
            counters.evicted_with_notice.fetch_add(1, Ordering::Relaxed);
        }
        // Closing with unread bytes resets the connection: one more way to go.
        drop(stream);
        tokio::time::sleep(CHURN_PAUSE).await;
    }
}

/// Reads what a non-reader was sent, for at most [`NON_READER_CHECK`]: whether the server
/// closed the connection, and whether it said it was too slow.
async fn closed_by_server(stream: &mut TcpStream) -> (bool, bool) {
    let too_slow = memmem::Finder::new(message::TOO_SLOW.as_bytes());
    let keep = message::TOO_SLOW.len();
    let mut buffer = vec![0; READ_BUFFER];
    let mut filled = 0;
    let mut notice = false;
    let check_deadline = Instant::now() + NON_READER_CHECK;
    loop {
        let left = check_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, notice);
        }
        match tokio::time::timeout(
            left.min(NON_READER_QUIET),
            stream.read(&mut buffer[filled..]),
        )
        .await
        {
            Err(_) => return (false, notice),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, notice),
            Ok(Ok(n)) => {
                let end = filled + n;
                notice |= too_slow.find(&buffer[..end]).is_some();
                // Keep a tail in which the notice may have begun.
                let from = end.saturating_sub(keep);
                buffer.copy_within(from..end, 0);
                filled = end - from;
            }
        }
    }
}

/// How a churner's connection ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Junk, then `SO_LINGER` 0 and close: the server sees a reset.
    Reset,
    /// Several `--max-line`s without a newline, then a reset: it vanishes mid-line.
    VanishMidLine,
    /// Junk, shut down writing, read until the server closes.
    HalfClose,
    /// Junk and a last line without a newline, then a plain close.
    Close,
}

/// The endings a churner goes through in turn (each churner starts at a different one).
const ENDINGS: [Ending; 4] = [
    Ending::Reset,
    Ending::VanishMidLine,
    Ending::HalfClose,
    Ending::Close,
];

/// A churner: connections that end every way a connection can, until the deadline.
async fn churn(index: usize, shared: Arc<Shared>, deadline: Instant) {
    let counters = &shared.counters;
    let junk: Vec<u8> = JUNK.concat();
    let mut long_partial = b"vanishing ".to_vec();
    long_partial.resize(VANISH_LINE_FACTOR * shared.plan.max_line, FILLER);
    let mut cycle = index;
    while Instant::now() < deadline {
        let mut stream = match connect(shared.addr).await {
            Ok(stream) => stream,
            Err(error) => {
                counters.refused(format!("churner: {error:#}"));
                tokio::time::sleep(CHURN_PAUSE).await;
                continue;
            }
        };
        let ending = ENDINGS[cycle % ENDINGS.len()];
        cycle += 1;
        match ending {
            Ending::Reset => {
                send_junk(&mut stream, &junk).await;
                let _ = stream.set_zero_linger();
                drop(stream);
                counters.resets.fetch_add(1, Ordering::Relaxed);
            }
            Ending::VanishMidLine => {
                send_junk(&mut stream, &long_partial).await;
                let _ = stream.set_zero_linger();
                drop(stream);
                counters.vanished.fetch_add(1, Ordering::Relaxed);
            }
            Ending::HalfClose => {
                send_junk(&mut stream, &junk).await;
                let _ = stream.shutdown().await;
                if read_to_end(&mut stream, counters).await {
                    counters.half_closes.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ending::Close => {
                let mut last = junk.clone();
                last.extend_from_slice(b"a last line without a newline");
                send_junk(&mut stream, &last).await;
                drop(stream);
                counters.closes.fetch_add(1, Ordering::Relaxed);
            }
        }
        counters.churn_cycles.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(CHURN_PAUSE).await;
    }
}

/// Writes a churner's bytes, or as many as the socket takes within [`JUNK_SEND_TIMEOUT`]: a
/// churner goes either way.
async fn send_junk(stream: &mut TcpStream, bytes: &[u8]) {
    let _ = tokio::time::timeout(JUNK_SEND_TIMEOUT, stream.write_all(bytes)).await;
}

/// Reads until the server closes (true) or [`CHURN_EOF_TIMEOUT`] passes (false), checking
/// every line for what SPEC 3 forbids.
async fn read_to_end(stream: &mut TcpStream, counters: &Counters) -> bool {
    let mut buffer = LineBuffer::new(READ_BUFFER);
    let eof_deadline = Instant::now() + CHURN_EOF_TIMEOUT;
    loop {
        let left = eof_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(buffer.space())).await {
            Err(_) => return false,
            // A reset after the half-close is the server closing too.
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => buffer.commit(n, |lines| {
                unsanitised_lines(lines, |line| {
                    counters.unsanitised.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut first) = counters.first_unsanitised.lock() {
                        first.get_or_insert_with(|| escaped(line));
                    }
                });
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitised_lines_pass_and_forbidden_bytes_are_found() {
        let mut found = Vec::new();
        let clean = "a says: caf\u{e9} \u{fffd} tab\there\r\n* b joined (2 online)\r\n";
        unsanitised_lines(clean.as_bytes(), |line| found.push(line.to_vec()));
        assert!(found.is_empty(), "{found:?}");
        for bad in [
            &b"a says: \x1b[2J\r\n"[..],
            b"a says: bell\x07\r\n",
            b"a says: \xff\xfe\r\n",
            "a says: \u{202e}x\r\n".as_bytes(),
            "a says: \u{9b}31m\r\n".as_bytes(),
            b"a says: del\x7f\r\n",
        ] {
            let mut found = Vec::new();
            let chunk = [clean.as_bytes(), bad, clean.as_bytes()].concat();
            unsanitised_lines(&chunk, |line| found.push(line.to_vec()));
            let bad = bad.strip_suffix(b"\r\n").unwrap();
            assert_eq!(
                found,
                [bad.to_vec()],
                "{:?}",
                bad.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn whole_lines_are_handed_on_and_the_rest_waits() {
        let mut buffer = LineBuffer::new(64);
        let mut seen = Vec::new();
        buffer.space()[..9].copy_from_slice(b"one\ntwo\nt");
        buffer.commit(9, |lines| seen.push(lines.to_vec()));
        buffer.space()[..5].copy_from_slice(b"hree\n");
        buffer.commit(5, |lines| seen.push(lines.to_vec()));
        assert_eq!(seen, [b"one\ntwo\n".to_vec(), b"three\n".to_vec()]);
    }

    #[test]
    fn overlong_lines_pass_the_limit_and_carry_the_mark_at_both_ends() {
        let line = overlong_line(1024);
        assert_eq!(line.len(), 1024 + OVERLONG_BEYOND + 1);
        assert!(line.starts_with(OVERLONG_MARK) && line.ends_with(b"-line\n"));
        assert_eq!(memmem::find_iter(&line, OVERLONG_MARK).count(), 2);
        assert!(!line.contains(&crate::token::MARKER));
    }

    #[test]
    fn junk_holds_what_the_sanitiser_must_remove() {
        let mut forbidden = 0;
        unsanitised_lines(&JUNK.concat(), |_| forbidden += 1);
        assert!(forbidden >= 6, "{forbidden}");
    }
}

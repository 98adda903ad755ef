//! A member's session: reading its lines, acting on them, and closing it with a last word.
//!
//! A session runs over any byte stream (`AsyncRead + AsyncWrite + Unpin + Send`): a TCP
//! connection and a TLS stream run exactly this code, and so can anything else that carries
//! bytes. It splits the stream in two: the writer half goes to the member's writer task
//! ([`crate::outbox`]), the reader half stays here, in the reader loop.
//!
//! **From v2's poll loop to `read().await`.** v2 asked `poll` which sockets were readable, then
//! read each without blocking, and a read that found nothing said `EWOULDBLOCK`. Tokio does the
//! same under every `read().await`: it tries the read, and on `WouldBlock` it registers the
//! socket with its reactor (epoll) and suspends the task until the socket is readable, then
//! tries again. The reader loop here spells the two steps out, because v4 must decide *between*
//! them: it waits until input is there ([`Inbox::readable`]), then, before taking more than
//! the byte that said so, asks the room for room ([`Room::reserve`]): it reads only what every
//! other member's queue can take. Meanwhile the rest of the client's bytes wait in the kernel
//! (or, on TLS, at most one record in rustls), and TCP slows the client.
//!
//! **Idle, rate and too slow.** A session also ends a member who says nothing for
//! `--idle-timeout`, drops lines over `--rate` (a token bucket, [`crate::rate`]) with one
//! warning a second, and learns from its writer task when the member was evicted as too slow.
//! Every close that has something to say goes through [`close_with_notice`], on every
//! transport.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chat_protocol::command::{self, Command};
use chat_protocol::framing::{Frame, LineFramer};
use chat_protocol::message::{self, CRLF};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinHandle;

use crate::bridge::Bridge;
use crate::outbox::{write_loop, Chunk, Outbox, WriterEnd};
use crate::rate::TokenBucket;
use crate::room::{refuse_rename, Admission, ClientId, Reservation, Room, Verdict};

/// The most one read takes from a client. Usually the room's free space limits a read before
/// this does (see [`Room::reserve`]); the buffer lives on the stack only while a read runs.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// How long closing a client with a last notice may take, from writing the notice to the
/// client's own close ([`close_with_notice`]): time enough for a client to read the notice and
/// close, short enough that a flood of refused or evicted connections holds few descriptors.
const LAST_NOTICE_GRACE: Duration = Duration::from_secs(1);

/// What [`close_with_notice`] reads at a time of what a departing client still sends; the bytes
/// are thrown away.
const DISCARD_BUFFER: usize = 1024;

/// A client over its rate limit hears about it at most this often.
const SLOW_DOWN_INTERVAL: Duration = Duration::from_secs(1);

/// A member that has joined the room, ready for its session: what [`serve`] needs besides the
/// stream.
#[derive(Debug)]
pub struct Joined {
    id: ClientId,
    name: String,
    outbox: Arc<Outbox>,
}

/// Makes the admitted connection from `addr` a member, named by its address until `/nick`
/// (or by what a bridge says, [`Room::default_name`]). The welcome and the history wait in
/// its outbox until [`serve`] starts its writer.
pub fn join(room: &Room, admission: Admission, addr: SocketAddr) -> Joined {
    let outbox = Arc::new(room.new_outbox());
    let name = room.default_name(addr);
    let id = room.join(admission, name.clone(), &outbox);
    tracing::info!("{addr} connected");
    Joined { id, name, outbox }
}

/// One member's session over `stream`: its writer task runs beside this reader loop until
/// either ends; then it leaves the room, and is closed with a notice if it has one coming.
pub async fn serve<S>(room: Arc<Room>, joined: Joined, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Joined { id, name, outbox } = joined;
    let (reader, writer) = tokio::io::split(stream);
    let mut inbox = Inbox::new(reader);
    let mut writer_task = tokio::spawn(write_loop(Arc::clone(&outbox), writer));
    let now = Instant::now();
    let mut session = Session {
        bucket: room
            .rate
            // At least one line may always pass, however slow the rate.
            .map(|rate| TokenBucket::new(rate, (2.0 * rate).max(1.0), now)),
        room: Arc::clone(&room),
        id,
        name,
        outbox,
        relay: String::new(),
        text: String::new(),
        warned_slow_at: None,
        heard_at: now,
        quit: None,
        asking: None,
        deferred: Vec::new(),
    };
    let mut framer = LineFramer::new(room.max_line);
    let ending = session
        .read_loop(&mut inbox, &mut framer, &mut writer_task)
        .await;
    let name = &session.name;
    let reason = session.quit.as_ref().and_then(|reason| reason.as_deref());
    room.leave(id, name, reason);
    tracing::info!("{name} disconnected ({})", ending.why());
    let notice = match ending {
        Ending::Left(_) => {
            // The writer sends whatever is still queued (the reply to a last line, say), then
            // closes.
            session.outbox.close();
            return;
        }
        Ending::TooSlow { socket, unsent } => {
            let stream = inbox.reader.unsplit(socket);
            // Boxed: the closing's state is needed once, not in every client's task.
            Box::pin(close_with_notice(
                stream,
                unsent,
                message::TOO_SLOW.to_owned(),
            ))
            .await;
            return;
        }
        Ending::Idle if session.outbox.stop() => {
            message::idle_timeout(room.idle_timeout.map_or(0, |timeout| timeout.as_secs()))
        }
        // Evicted at the same moment: the writer is stopping for that already.
        Ending::Idle => message::TOO_SLOW.to_owned(),
    };
    // Boxed, as above.
    Box::pin(async move {
        if let Ok(WriterEnd::Stopped { socket, unsent }) = writer_task.await {
            close_with_notice(inbox.reader.unsplit(socket), unsent, notice).await;
        }
    })
    .await;
}

/// The reading half of a member's stream, read the way v2 read a socket: wait until input is
/// there, then take what is there without waiting.
///
/// Any `AsyncRead` can say "input is here" only by handing some over, so the wait takes one
/// byte and holds it (or an end of stream, or an error) for the read that follows. One byte:
/// whatever room the room has for a read, it has room for that.
#[derive(Debug)]
struct Inbox<R> {
    reader: R,
    /// What the wait found, for the next read to return first.
    found: Option<Found>,
}

#[derive(Debug)]
enum Found {
    Byte(u8),
    End,
    Error(io::Error),
}

impl<R: AsyncRead + Unpin> Inbox<R> {
    fn new(reader: R) -> Self {
        Self {
            reader,
            found: None,
        }
    }

    /// Returns once a read will not wait. Cancel-safe: a byte read is kept, never lost.
    async fn readable(&mut self) {
        if self.found.is_some() {
            return;
        }
        let mut byte = [0u8; 1];
        self.found = Some(match self.reader.read(&mut byte).await {
            Ok(0) => Found::End,
            Ok(_) => Found::Byte(byte[0]),
            Err(error) => Found::Error(error),
        });
    }

    /// Fills the start of `buf` with what the wait found and what else the stream holds now,
    /// without waiting; 0 at end of stream. Called after [`Inbox::readable`].
    fn read_now(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let first = match self.found.take() {
            Some(Found::Byte(byte)) => byte,
            Some(Found::End) | None => return Ok(0),
            Some(Found::Error(error)) => return Err(error),
        };
        buf[0] = first;
        let mut rest = ReadBuf::new(&mut buf[1..]);
        // Nothing more now is fine; an end or an error after the byte shows at the next wait.
        let _ = std::pin::Pin::new(&mut self.reader).poll_read(cx, &mut rest);
        Ok(1 + rest.filled().len())
    }
}

/// Closes a client with a last notice that arrives (SPEC 4): every close that has something to
/// say comes here (too slow, idle, server full, too many from one address). The caller has
/// stopped reading the client. This writes `unsent` (the rest of a line the client was in the
/// middle of receiving, so that the notice starts a line of its own) and the notice, then shuts
/// down the write side, so that the client reads the notice and then a clean end of stream;
/// meanwhile it reads and discards whatever the client still sends, until the client closes its
/// side too; all of that within [`LAST_NOTICE_GRACE`]. Only then is the socket closed. Closing
/// it at once would be simpler and wrong: closing a socket with unread input makes the kernel
/// answer with a reset, and a reset destroys what the client has not read yet, the notice
/// first.
pub async fn close_with_notice<S>(mut stream: S, unsent: Vec<u8>, notice: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut last_words = unsent;
    last_words.extend_from_slice(&message::wire(&notice));
    let (mut from_client, mut to_client) = tokio::io::split(&mut stream);
    let say = async {
        to_client.write_all(&last_words).await?;
        to_client.shutdown().await
    };
    let discard = async {
        let mut sink = [0u8; DISCARD_BUFFER];
        while from_client.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let closing = async { tokio::join!(say, discard) };
    if tokio::time::timeout(LAST_NOTICE_GRACE, closing)
        .await
        .is_err()
    {
        tracing::debug!("closed a client that had not taken its last notice and closed in time");
    }
}

/// What one reader task knows about its client.
struct Session {
    room: Arc<Room>,
    id: ClientId,
    /// How others see this client: its address until `/nick` gives it a name.
    name: String,
    outbox: Arc<Outbox>,
    /// Chat lines of the current chunk, formatted for the others: relayed as one shared chunk.
    relay: String,
    /// Scratch space for one sanitised line, reused so a line costs no allocation.
    text: String,
    /// `None` with `--rate 0`.
    bucket: Option<TokenBucket>,
    /// When this client was last told to slow down: at most once a second.
    warned_slow_at: Option<Instant>,
    /// When this client last spoke, for `--idle-timeout`: see [`Session::on_line`].
    heard_at: Instant,
    /// Set by `/quit`, with its reason if one was given.
    quit: Option<Option<String>>,
    /// A command only the room's bridge can answer, asked once the read that held it settles.
    asking: Option<Question>,
    /// Lines read after that command, acted on once it is answered, so they keep their order.
    deferred: Vec<String>,
}

/// A command that waits for an answer from beyond this process (v5's bridge); v4 never has
/// one.
enum Question {
    /// `/nick NAME`: is the name free everywhere?
    Nick(String),
    /// `/list`: who is online everywhere?
    List,
    /// `/pm NAME TEXT` to nobody here: is NAME elsewhere? `line` is what NAME would read.
    Pm { to: String, line: String },
}

/// Why a session ended.
enum Ending<W> {
    /// The client left, or its connection broke; says how, for the log.
    Left(&'static str),
    /// Silent for `--idle-timeout`: the server closes it, telling it so.
    Idle,
    /// Evicted as too slow: its writer stopped and handed back its socket, with what it still
    /// owed of a line, for the server to close it, telling it so.
    TooSlow { socket: W, unsent: Vec<u8> },
}

impl<W> Ending<W> {
    /// The session ends because the writer task did: evicted as too slow, or the socket broke.
    fn writer_ended(end: Result<WriterEnd<W>, tokio::task::JoinError>) -> Self {
        match end {
            Ok(WriterEnd::Stopped { socket, unsent }) => Ending::TooSlow { socket, unsent },
            _ => Ending::Left("connection lost"),
        }
    }

    /// For the log line.
    fn why(&self) -> &'static str {
        match self {
            Ending::Left(why) => why,
            Ending::Idle => "idle",
            Ending::TooSlow { .. } => "too slow",
        }
    }
}

impl Session {
    /// Reads and relays until the client leaves; says why it ended.
    async fn read_loop<R, W>(
        &mut self,
        inbox: &mut Inbox<R>,
        framer: &mut LineFramer,
        writer_task: &mut JoinHandle<WriterEnd<W>>,
    ) -> Ending<W>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            let idle = async {
                match self.room.idle_timeout {
                    Some(timeout) => {
                        tokio::time::sleep_until((self.heard_at + timeout).into()).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = inbox.readable() => {}
                // The writer ends only when the client is gone or evicted: stop reading too.
                end = &mut *writer_task => return Ending::writer_ended(end),
                () = idle => return Ending::Idle,
            }
            // The backpressure: no read until every other queue has room for what it becomes.
            // Meanwhile this client's bytes wait in the kernel, and TCP slows the client.
            let room = match self
                .room
                .reserve(self.id, self.name_bound(), framer.buffered())
            {
                Verdict::Read(room) => room,
                // Boxed: waiting is the exception, so its state is not kept in every task.
                wait => tokio::select! {
                    room = Box::pin(self.wait_for_room(wait, framer)) => room,
                    end = &mut *writer_task => return Ending::writer_ended(end),
                },
            };
            let mut room = Some(room);
            let read = poll_fn(|cx| {
                let room = room.take().expect("one read per reservation");
                Poll::Ready(self.read_chunk(inbox, cx, framer, room))
            })
            .await;
            if self.asking.is_some() {
                // Boxed: only a bridged room asks, so its state is not kept in every task.
                Box::pin(self.ask_bridge()).await;
            }
            match read {
                Ok(true) => {}
                Ok(false) => return Ending::Left("end of stream"),
                Err(_) => return Ending::Left("connection reset"),
            }
            if self.quit.is_some() {
                return Ending::Left("quit");
            }
        }
    }

    /// The longest name this client's lines may carry in the next read: a `/nick` in the
    /// middle of it may make the name longer.
    fn name_bound(&self) -> usize {
        self.name.len().max(command::NICK_MAX)
    }

    /// Waits as `verdict` says until every other member's queue has room for what this
    /// client's next read could become, and reserves it; see [`Room::reserve`].
    async fn wait_for_room(&self, verdict: Verdict, framer: &LineFramer) -> Reservation {
        self.wait_for_room_holding(verdict, framer.buffered()).await
    }

    /// [`Session::wait_for_room`] for `held` bytes of lines not yet relayed.
    async fn wait_for_room_holding(&self, mut verdict: Verdict, held: usize) -> Reservation {
        loop {
            match verdict {
                Verdict::Read(reservation) => return reservation,
                Verdict::WaitFor(receiver) => receiver.wait().await,
                Verdict::WaitForReads => self.room.wait_for_reads().await,
            }
            verdict = self.room.reserve(self.id, self.name_bound(), held);
        }
    }

    /// Asks the bridge the question a command left, acts on its answer, then on the lines
    /// read after the command, in order, until one of them asks again. Those lines are relayed
    /// within room reserved for them, as if just read.
    async fn ask_bridge(&mut self) {
        let Some(bridge) = self.room.bridge().cloned() else {
            return;
        };
        while let Some(question) = self.asking.take() {
            match question {
                Question::Nick(new) => self.rename_everywhere(&*bridge, &new).await,
                Question::List => {
                    let everyone = match bridge.list().await {
                        Some(names) => message::online_list(names.iter().map(String::as_str)),
                        None => self.room.list(),
                    };
                    self.reply_lines(&everyone);
                }
                Question::Pm { to, line } => {
                    if let Err(notice) = bridge.send_private(&to, &line).await {
                        self.reply(&notice);
                    }
                }
            }
            if self.deferred.is_empty() {
                continue;
            }
            let held = self.deferred.iter().map(String::len).sum();
            let verdict = self.room.reserve(self.id, self.name_bound(), held);
            let reservation = self.wait_for_room_holding(verdict, held).await;
            let mut deferred = std::mem::take(&mut self.deferred).into_iter();
            for text in deferred.by_ref() {
                self.act_on(command::parse(&text));
                if self.asking.is_some() || self.quit.is_some() {
                    break;
                }
            }
            self.deferred = deferred.collect();
            let lines = std::mem::take(&mut self.relay);
            self.room.settle(self.id, lines, reservation);
        }
    }

    /// `/nick NEW` in a bridged room: claimed everywhere first, then taken here.
    async fn rename_everywhere(&mut self, bridge: &dyn Bridge, new: &str) {
        if let Err(refusal) = refuse_rename(&self.name, new) {
            return self.reply(&refusal);
        }
        if let Err(refusal) = bridge.claim(new).await {
            return self.reply(&refusal);
        }
        match self.room.rename(self.id, &self.name, new) {
            Ok(()) => {
                tracing::info!("{}", message::renamed(&self.name, new));
                self.name = new.to_owned();
            }
            Err(refusal) => {
                // Someone here has it in another case: the claim was ours already, keep it.
                if !self.room.has_member_named(new) {
                    bridge.release(new);
                }
                self.reply(&refusal);
            }
        }
    }

    /// Reads what `room` was reserved for, without waiting, acts on its lines and gives the
    /// room back; false at end of stream. Not `async`: the buffer lives on the stack for this
    /// call only, not in every idle task.
    fn read_chunk<R: AsyncRead + Unpin>(
        &mut self,
        inbox: &mut Inbox<R>,
        cx: &mut Context<'_>,
        framer: &mut LineFramer,
        mut room: Reservation,
    ) -> io::Result<bool> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = match inbox.read_now(cx, &mut chunk[..room.read]) {
            Ok(n) => n,
            Err(error) => {
                self.room.settle(self.id, String::new(), room);
                return Err(error);
            }
        };
        // Fewer bytes than reserved for can become less: give the rest back at once, so that
        // other readers need not wait for this one to finish.
        self.room.shrink(&mut room, n);
        let max_line = framer.max_line();
        let on_frame = |frame: Frame<'_>| match frame {
            Frame::Line(raw) => self.on_line(raw),
            Frame::TooLong => self.reply(&message::line_too_long(max_line)),
        };
        if n == 0 {
            framer.finish(on_frame);
        } else {
            framer.push(&chunk[..n], on_frame);
        }
        let lines = std::mem::take(&mut self.relay);
        self.room.settle(self.id, lines, room);
        Ok(n > 0)
    }

    /// One framed line: sanitise, rate-limit, then chat or command.
    ///
    /// Only a line with something left in it after sanitising counts as speaking for
    /// `--idle-timeout`: bytes of an unfinished line, blank lines and telnet commands cost a
    /// client nothing to send and would keep an abandoned connection in its slot forever (an
    /// overlong line never gets here: nobody looked at what it held). A line the rate limit
    /// drops still counts: its sender is plainly there, the rate limit already answers it,
    /// and not counting it would stop nobody, since one line per timeout passes any limit.
    fn on_line(&mut self, raw: &[u8]) {
        if self.quit.is_some() {
            return;
        }
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        if chat_protocol::sanitize::sanitize_into(raw, &mut text) {
            self.heard_at = Instant::now();
            if self.within_rate() {
                if self.asking.is_some() {
                    // After a question to the bridge: in order, once it is answered.
                    self.deferred.push(text.clone());
                } else {
                    self.act_on(command::parse(&text));
                }
            }
        }
        self.text = text;
    }

    /// Takes a token from the bucket; over the limit, warns at most once a second.
    fn within_rate(&mut self) -> bool {
        let Some(bucket) = &mut self.bucket else {
            return true;
        };
        let now = Instant::now();
        if bucket.try_take(now) {
            return true;
        }
        let warned_recently = self
            .warned_slow_at
            .is_some_and(|at| now.duration_since(at) < SLOW_DOWN_INTERVAL);
        if !warned_recently {
            self.warned_slow_at = Some(now);
            self.reply(message::SLOW_DOWN);
        }
        false
    }

    fn act_on(&mut self, command: Command<'_>) {
        match command {
            Command::Chat(text) => self.queue_relay(&message::chat_line(&self.name, text)),
            Command::Me(text) if command::me_reads_as_notice(text) => {
                self.reply(message::ME_READS_AS_NOTICE)
            }
            Command::Me(text) => self.queue_relay(&message::action(&self.name, text)),
            Command::Nick(None) => self.reply(&message::you_are(&self.name)),
            Command::Nick(Some(new)) if self.room.bridge().is_some() => {
                self.flush_relay();
                self.asking = Some(Question::Nick(new.to_owned()));
            }
            Command::Nick(Some(new)) => {
                // Lines already queued went out under the old name; the rename comes after.
                self.flush_relay();
                match self.room.rename(self.id, &self.name, new) {
                    Ok(()) => {
                        tracing::info!("{}", message::renamed(&self.name, new));
                        self.name = new.to_owned();
                    }
                    Err(refusal) => self.reply(&refusal),
                }
            }
            Command::List if self.room.bridge().is_some() => self.asking = Some(Question::List),
            Command::List => self.reply_lines(&self.room.list()),
            Command::Pm { to, text } => {
                self.flush_relay();
                let line = message::private(&self.name, text);
                if self.room.send_private(self.id, to, &line) {
                    return;
                }
                if self.room.bridge().is_some() {
                    let to = to.to_owned();
                    self.asking = Some(Question::Pm { to, line });
                } else {
                    self.reply(&message::no_such_user(to));
                }
            }
            Command::Quit(reason) => {
                self.flush_relay();
                self.quit = Some(reason.map(str::to_owned));
            }
            Command::Help => self.reply_lines(message::HELP),
            Command::Usage(usage) => self.reply(&message::usage(usage)),
            Command::Unknown(word) => self.reply(&message::unknown_command(word)),
        }
    }

    /// Adds a line for the others to the chunk being built.
    fn queue_relay(&mut self, line: &str) {
        tracing::info!("{line}");
        self.relay.push_str(line);
        self.relay.push_str(CRLF);
    }

    /// Relays the lines gathered so far, formatted once and shared by every receiver.
    fn flush_relay(&mut self) {
        if !self.relay.is_empty() {
            let lines = std::mem::take(&mut self.relay);
            self.room.relay(self.id, lines);
        }
    }

    /// A notice for this client only.
    fn reply(&self, line: &str) {
        self.reply_lines(&[line]);
    }

    /// Notices for this client only, as one chunk: an answer of several lines (`/help`,
    /// `/list`) is queued whole or, for a client too far behind, dropped whole.
    fn reply_lines(&self, lines: &[impl AsRef<str>]) {
        let mut answer = Vec::new();
        for line in lines {
            answer.extend_from_slice(&message::wire(line.as_ref()));
        }
        if self.outbox.push_notice(Chunk::from(answer)).is_err() {
            tracing::debug!("{}: answer dropped, too far behind", self.name);
        }
    }
}

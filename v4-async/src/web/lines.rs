//! A WebSocket as a byte stream of lines, so that a browser's session is [`crate::session`]'s,
//! unchanged.
//!
//! The session reads bytes and frames them into lines; it writes lines that end in `\r\n`.
//! [`WebSocketLines`] speaks that on one side and SPEC 9's WebSocket protocol on the other:
//!
//! ```text
//!   browser                      WebSocketLines                        session (as for TCP)
//!   text message "hi"    --->    b"hi" + b"\n"                  --->   framer, sanitiser, ...
//!   text message "hi"    <---    one message per line, no \r\n  <---   b"* bob is now al\r\n"
//!   binary message       --->    close 1003, end of stream
//!   message over 64 KiB  --->    close 1009, end of stream
//!   silent for 30 s      <---    ping; silent for 60 s: connection dropped
//!   close frame          --->    end of stream (tungstenite answers the close)
//!                        <---    close frame        <---   shutdown() after the last words
//! ```
//!
//! So every rule of the room holds for a browser because it is the same code: the framing limit
//! (a message is one line or, holding `\n`, several), the sanitiser, commands, the rate limit,
//! history, the bounded outbox, eviction as too slow, and the close with a last notice.
//!
//! **Backpressure carries through.** A message is handed to the session only as fast as the
//! session reads it, and the next one is not read from the connection before that, so a
//! browser that sends faster than the room takes waits in TCP like a telnet user. The other
//! way, a line is accepted from the session's writer only when tungstenite's write buffer has
//! room ([`WEBSOCKET_WRITE_BUFFER`]); otherwise the writer waits here, its outbox fills, and
//! a tab that stopped reading is evicted after `--stall-ms` like any member.
//!
//! **Two tasks, one connection.** The session reads from its reader task and writes from its
//! writer task (through `tokio::io::split`). tokio-tungstenite remembers one task to wake for
//! reading and one for writing, but a ping or a close sent from the reader would take the
//! writer's place and could leave the writer asleep. So every call into the WebSocket here
//! passes one waker that wakes both tasks ([`BothTasks`]): a task woken for nothing looks
//! again and sleeps again, and no wake-up is ever lost.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::{Buf, Bytes};
use chat_protocol::message;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The largest message a browser may send (SPEC 9): a line is at most `--max-line` (1 MiB at
/// most, 1 KiB by default) and gets an error past that, but a message past this closes the
/// connection with 1009 before it is even read, so that no client makes the server buffer
/// more than this for it.
pub const MESSAGE_MAX: usize = 64 * 1024;

/// Bytes tungstenite reads from the connection at a time, and allocates for each connection
/// up front: chat lines are short, and a longer message grows the buffer only while it lasts
/// (tungstenite's default is 128 KiB, which a thousand idle browsers would hold for nothing).
pub const WEBSOCKET_READ_BUFFER: usize = 4 * 1024;

/// Bytes of outgoing frames tungstenite gathers before writing them to the connection (and
/// all of them at a flush, when the member's queue runs dry): many short lines in one write.
/// A line is accepted from the session's writer only when this buffer has room, so it is the
/// only buffer besides the member's outbox; [`max_write_buffer`] bounds it hard.
pub const WEBSOCKET_WRITE_BUFFER: usize = 16 * 1024;

/// What one outgoing line may hold besides `--max-line` bytes of text: the sender's name (an
/// address or a nickname), `says: `, `(private): `, and a frame header.
const LINE_OVERHEAD: usize = 256;

/// After this long without a frame from the browser, the server pings it (SPEC 9). Browsers
/// answer pings by themselves, so a live tab is never idle for long.
pub const PING_AFTER: Duration = Duration::from_secs(30);

/// A WebSocket that has sent nothing, not even the answer to the ping, for this long is
/// dropped (SPEC 9): the browser went away without closing (a laptop lid, a lost network), and
/// its slot is freed.
pub const DROP_AFTER: Duration = Duration::from_secs(60);

/// How long closing waits for the browser's own close frame after ours, reading what it still
/// sends, before the connection is closed (the WebSocket form of
/// [`crate::session::close_with_notice`]'s drain).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The hard bound on tungstenite's write buffer: the gathering buffer plus the longest line
/// the room can send. A line is accepted only when the buffer was flushed or below
/// [`WEBSOCKET_WRITE_BUFFER`], so this is never reached; without a bound it would be unbounded.
pub fn max_write_buffer(max_line: usize) -> usize {
    WEBSOCKET_WRITE_BUFFER + max_line + LINE_OVERHEAD
}

/// A WebSocket carrying one line per text message, as an `AsyncRead + AsyncWrite` byte stream
/// of `\n`-ended lines (reading) and `\r\n`-ended lines (writing); see the module docs.
pub struct WebSocketLines {
    socket: WebSocket,
    addr: SocketAddr,
    /// The rest of the message being read, then its line end.
    incoming: Bytes,
    newline_owed: bool,
    /// The browser closed, broke a rule, or went silent: end of stream from here on.
    read_ended: bool,
    /// The start of an outgoing line whose end has not been written yet.
    partial: Vec<u8>,
    /// Frames owed to the browser besides lines: a ping, or our close frame.
    control_owed: Option<Message>,
    /// A flush of what was written is owed, for a ping or close sent from the reader.
    flush_owed: bool,
    /// Our close frame has been queued; nothing more is sent after it.
    close_sent: bool,
    /// The close code that fits the last line sent, for [`AsyncWrite::poll_shutdown`].
    close_code: u16,
    /// Set at the first `poll_shutdown`: when closing stops waiting for the browser.
    close_deadline: Option<Pin<Box<Sleep>>>,
    /// When the browser last sent a frame of any kind, and the timer for the ping or the drop.
    heard_at: Instant,
    pinged: bool,
    keepalive: Pin<Box<Sleep>>,
    /// The session's two tasks, and the one waker for both.
    tasks: Arc<BothTasks>,
    both: Waker,
}

impl std::fmt::Debug for WebSocketLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketLines")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The reader task and the writer task of one session, woken together by [`WebSocketLines`].
#[derive(Debug, Default)]
struct BothTasks {
    reader: Mutex<Option<Waker>>,
    writer: Mutex<Option<Waker>>,
}

impl BothTasks {
    fn remember(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !slot.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

impl Wake for BothTasks {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        for slot in [&self.reader, &self.writer] {
            let waker = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// Which of the session's tasks is calling.
#[derive(Clone, Copy)]
enum Task {
    Reader,
    Writer,
}

impl WebSocketLines {
    /// Wraps an upgraded WebSocket from the browser at `addr`.
    pub fn new(socket: WebSocket, addr: SocketAddr) -> Self {
        let tasks = Arc::new(BothTasks::default());
        let now = Instant::now();
        Self {
            socket,
            addr,
            incoming: Bytes::new(),
            newline_owed: false,
            read_ended: false,
            partial: Vec::new(),
            control_owed: None,
            flush_owed: false,
            close_sent: false,
            close_code: close_code::NORMAL,
            close_deadline: None,
            heard_at: now,
            pinged: false,
            keepalive: Box::pin(tokio::time::sleep_until((now + PING_AFTER).into())),
            both: Waker::from(Arc::clone(&tasks)),
            tasks,
        }
    }

    /// Remembers the calling task, and gives the context to call the WebSocket with: one that
    /// wakes both tasks.
    fn register(&self, cx: &Context<'_>, task: Task) -> Waker {
        let slot = match task {
            Task::Reader => &self.tasks.reader,
            Task::Writer => &self.tasks.writer,
        };
        BothTasks::remember(slot, cx.waker());
        self.both.clone()
    }

    /// Sends what is owed besides lines (a ping, a close) and flushes it, as far as the
    /// connection takes it now; what is left is tried again at the next poll.
    fn drive_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.control_owed.is_some() {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(error)) => return Err(io::Error::other(error)),
                Poll::Ready(Ok(())) => {
                    let frame = self.control_owed.take().expect("checked above");
                    // A close that cannot go out (the browser closed first) is no error.
                    let _ = Pin::new(&mut self.socket).start_send(frame);
                    self.flush_owed = true;
                }
            }
        }
        if self.flush_owed {
            if let Poll::Ready(result) = Pin::new(&mut self.socket).poll_flush(cx) {
                self.flush_owed = false;
                result.map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Ends the reading side with our close frame carrying `code`.
    fn close_with(&mut self, code: u16, why: &str) {
        tracing::info!("{}: WebSocket closed with {code}: {why}", self.addr);
        self.read_ended = true;
        if !self.close_sent {
            self.close_sent = true;
            self.control_owed = Some(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::default(),
            })));
        }
    }

    /// Pings a browser silent for [`PING_AFTER`]; false once it has been silent for
    /// [`DROP_AFTER`]. Arms the timer for whichever comes next.
    fn keep_alive(&mut self, cx: &mut Context<'_>) -> bool {
        while self.keepalive.as_mut().poll(cx).is_ready() {
            let silent = self.heard_at.elapsed();
            let next = if silent >= DROP_AFTER {
                return false;
            } else if silent >= PING_AFTER {
                if !self.pinged && !self.close_sent {
                    self.pinged = true;
                    self.control_owed = Some(Message::Ping(Bytes::new()));
                }
                self.heard_at + DROP_AFTER
            } else {
                self.heard_at + PING_AFTER
            };
            self.keepalive.as_mut().reset(next.into());
        }
        true
    }

    fn heard(&mut self) {
        self.heard_at = Instant::now();
        self.pinged = false;
    }

    /// Takes complete lines from `data` into text messages while tungstenite's buffer has
    /// room; returns how many bytes of `data` it took (a line's start without its end is kept
    /// in `partial` and counts as taken).
    fn send_lines(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One copy of what is written, shared by the messages cut from it.
        let mut rest = Bytes::copy_from_slice(data);
        let mut taken = 0;
        while !rest.is_empty() {
            match Pin::new(&mut self.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                Poll::Pending if taken == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
            let Some(end) = memchr::memchr(b'\n', &rest) else {
                self.partial.extend_from_slice(&rest);
                taken += rest.len();
                break;
            };
            let mut line = rest.split_to(end + 1);
            taken += line.len();
            if !self.partial.is_empty() {
                self.partial.extend_from_slice(&line);
                line = Bytes::from(std::mem::take(&mut self.partial));
            }
            let text = without_line_end(line);
            self.close_code = close_code_after(&text);
            let text = Utf8Bytes::try_from(text).unwrap_or_else(|error| {
                // The room sends only sanitised text; say so loudly if that ever changes.
                tracing::error!("{}: an outgoing line is not UTF-8: {error}", self.addr);
                Utf8Bytes::from_static("\u{FFFD}")
            });
            if let Err(error) = Pin::new(&mut self.socket).start_send(Message::Text(text)) {
                return Poll::Ready(Err(io::Error::other(error)));
            }
        }
        Poll::Ready(Ok(taken))
    }
}

/// A line as the room writes it, without its `\r\n` (or `\n`).
fn without_line_end(mut line: Bytes) -> Bytes {
    if line.ends_with(b"\n") {
        line.truncate(line.len() - 1);
    }
    if line.ends_with(b"\r") {
        line.truncate(line.len() - 1);
    }
    line
}

/// The close code that tells a program what a last line told its reader: the server is going
/// away (`* server shutting down`), come back later (`* server full`, too many from one
/// address), or a rule was broken (`* error: too slow`, idle).
fn close_code_after(line: &[u8]) -> u16 {
    if line == message::SHUTTING_DOWN.as_bytes() {
        close_code::AWAY
    } else if line.starts_with(b"* server full") || line.starts_with(b"* error: too many") {
        close_code::AGAIN
    } else if line.starts_with(b"* error: ") {
        close_code::POLICY
    } else {
        close_code::NORMAL
    }
}

impl AsyncRead for WebSocketLines {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waker = this.register(cx, Task::Reader);
        let mut cx = Context::from_waker(&waker);
        // Every message already here, as far as `buf` has room: like a TCP read, one read may
        // hold many lines, which the session then relays as one chunk.
        let start = buf.filled().len();
        loop {
            if !this.incoming.is_empty() {
                let n = this.incoming.len().min(buf.remaining());
                buf.put_slice(&this.incoming[..n]);
                this.incoming.advance(n);
            }
            if !this.incoming.is_empty() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.newline_owed {
                this.newline_owed = false;
                buf.put_slice(b"\n");
                continue;
            }
            if !this.read_ended && !this.keep_alive(&mut cx) {
                tracing::info!(
                    "{}: WebSocket silent for {} s, even to a ping: dropped",
                    this.addr,
                    DROP_AFTER.as_secs()
                );
                this.read_ended = true;
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            this.drive_control(&mut cx)?;
            if this.read_ended {
                return Poll::Ready(Ok(()));
            }
            let message = match Pin::new(&mut this.socket).poll_next(&mut cx) {
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.read_ended = true;
                    continue;
                }
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(error))) => {
                    let (code, why) = match error.into_inner().downcast::<tungstenite::Error>() {
                        Ok(error) => match *error {
                            tungstenite::Error::Capacity(_) => (
                                close_code::SIZE,
                                format!("a message over {MESSAGE_MAX} bytes"),
                            ),
                            tungstenite::Error::Utf8(_) => {
                                (close_code::INVALID, "a text message not UTF-8".to_owned())
                            }
                            tungstenite::Error::Protocol(error) => {
                                (close_code::PROTOCOL, error.to_string())
                            }
                            error => return Poll::Ready(Err(io::Error::other(error))),
                        },
                        Err(error) => return Poll::Ready(Err(io::Error::other(error))),
                    };
                    this.close_with(code, &why);
                    continue;
                }
            };
            this.heard();
            match message {
                Message::Text(text) => {
                    this.incoming = Bytes::from(text);
                    this.newline_owed = true;
                }
                Message::Binary(_) => {
                    this.close_with(close_code::UNSUPPORTED, "a binary message");
                }
                // tungstenite answered it (a ping with a pong, a close with a close): send that.
                Message::Ping(_) => this.flush_owed = true,
                Message::Pong(_) => {}
                Message::Close(_) => {
                    this.flush_owed = true;
                    this.close_sent = true;
                    this.read_ended = true;
                }
            }
        }
    }
}

impl AsyncWrite for WebSocketLines {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let waker = this.register(cx, Task::Writer);
        let mut cx = Context::from_waker(&waker);
        this.send_lines(&mut cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let waker = this.register(cx, Task::Writer);
        let mut cx = Context::from_waker(&waker);
        let mut taken = 0;
        for slice in slices.iter().filter(|slice| !slice.is_empty()) {
            match this.send_lines(&mut cx, slice) {
                Poll::Ready(Ok(n)) => {
                    taken += n;
                    if n < slice.len() {
                        break;
                    }
                }
                Poll::Pending | Poll::Ready(Err(_)) if taken > 0 => break,
                other => return other,
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waker = this.register(cx, Task::Writer);
        let mut cx = Context::from_waker(&waker);
        Pin::new(&mut this.socket)
            .poll_flush(&mut cx)
            .map_err(io::Error::other)
    }

    /// Our close frame, with the code that fits the last line, then a wait of at most
    /// [`CLOSE_GRACE`] for the browser's, reading and dropping what it still sends: closing
    /// over unread input would reset the connection, and could destroy the last lines.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waker = this.register(cx, Task::Writer);
        let mut cx = Context::from_waker(&waker);
        if !this.close_sent {
            this.close_sent = true;
            this.control_owed = Some(Message::Close(Some(CloseFrame {
                code: this.close_code,
                reason: Utf8Bytes::default(),
            })));
        }
        if this.drive_control(&mut cx).is_err() {
            return Poll::Ready(Ok(()));
        }
        let deadline = this
            .close_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_GRACE)));
        if deadline.as_mut().poll(&mut cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if this.control_owed.is_some() || this.flush_owed {
            return Poll::Pending;
        }
        loop {
            match Pin::new(&mut this.socket).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_line_end_and_nothing_else() {
        assert_eq!(
            without_line_end(Bytes::from_static(b"a says: b\r\n")),
            "a says: b"
        );
        assert_eq!(without_line_end(Bytes::from_static(b"x\n")), "x");
        assert_eq!(without_line_end(Bytes::from_static(b"x")), "x");
    }

    #[test]
    fn the_close_code_follows_the_last_notice() {
        assert_eq!(
            close_code_after(message::SHUTTING_DOWN.as_bytes()),
            close_code::AWAY
        );
        assert_eq!(
            close_code_after(message::server_full(3).as_bytes()),
            close_code::AGAIN
        );
        assert_eq!(
            close_code_after(message::too_many_from_address(2).as_bytes()),
            close_code::AGAIN
        );
        assert_eq!(
            close_code_after(message::TOO_SLOW.as_bytes()),
            close_code::POLICY
        );
        assert_eq!(close_code_after(b"bob says: hi"), close_code::NORMAL);
    }
}

//! A member's outbox: its bounded queue of bytes on their way out, and the writer task that
//! drains it into the member's connection.
//!
//! **Why a writer task per client.** The Python original relayed with
//! `for w in writers: w.write(msg); await w.drain()`: the loop waits on each client in turn, so
//! one client that stops reading stalls the broadcast for everybody, for as long as it likes.
//! Here a sender only *pushes* into each receiver's queue; each receiver's own writer task waits
//! for its connection (`write().await` suspends while that socket's kernel buffer is full), so
//! how fast one receiver reads decides how fast its own queue drains, and nothing else.
//!
//! **A queue holds pointers, not copies.** A relay is formatted once into an `Arc<[u8]>`
//! ([`Chunk`]); every receiver's queue points at the same bytes, and a writer hands its chunks
//! to the connection where they are, in one vectored write (`writev` on TCP). So a thousand
//! clients that never read cost one copy of what was said, plus a pointer per chunk each, as
//! v3's shared chunks did on one thread.
//!
//! **Slow consumers.** A queue more than half full holds the room's readers back (see
//! [`crate::room`]); it notes since when ([`Outbox::holding_back`]), and one that has held them
//! back for `--stall-ms` in a row is evicted: what it had queued is dropped, the writer stops
//! after the line it is writing and hands its connection back for the last notice
//! ([`crate::session::close_with_notice`]). A client that reads as fast as its connection
//! allows drains half a queue far sooner than that, so it is never evicted.
//!
//! The writer knows nothing of sockets: it writes to any `AsyncWrite`, a TCP half or a TLS
//! stream, and flushes when its queue runs dry (TLS holds the end of a record until then).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// How far past `--max-queue` notices (replies, joins, leaves, renames) may take a queue. Chat
/// lines are read only when they fit under `--max-queue`, but a notice never waits, so it needs
/// room of its own: 64 KiB is hundreds of notices, more than a client that reads ever has
/// waiting, and it bounds what one that does not read can cost (its notices are dropped past it).
const NOTICE_ROOM: usize = 64 * 1024;

/// Most queued chunks handed to the connection in one vectored write: enough that a queue of
/// short relays costs a few system calls, small enough for the stack of one `poll`.
const WRITE_SLICES: usize = 64;

/// Bytes on their way to clients. One chunk, formatted once, is shared by every receiver.
pub type Chunk = Arc<[u8]>;

/// How a writer task ended.
#[derive(Debug)]
pub enum WriterEnd<W> {
    /// Its outbox was closed, everything queued was written, and its side of the stream shut.
    Flushed,
    /// The socket failed: the client is gone.
    Failed,
    /// The writer was stopped (the client was evicted, or is idle) and hands back its socket,
    /// for the last notice, with the rest of the line it was in the middle of writing, if any.
    Stopped { socket: W, unsent: Vec<u8> },
}

/// Drains one client's outbox into its socket until the client is gone or the writer is
/// stopped.
pub async fn write_loop<W>(outbox: Arc<Outbox>, mut socket: W) -> WriterEnd<W>
where
    W: AsyncWrite + Unpin,
{
    loop {
        let mut batch = match outbox.take_batch() {
            Batch::Chunks(chunks) => chunks,
            Batch::Empty => {
                // What a TLS stream (or a WebSocket) holds back for a fuller record goes out
                // now; on TCP a no-op. A flush waits while the client does not read, so it must
                // heed a stop too, or an evicted client's writer would wait on it forever.
                tokio::select! {
                    flushed = socket.flush() => if flushed.is_err() {
                        return WriterEnd::Failed;
                    },
                    () = outbox.stopped.notified() => {
                        let unsent = Vec::new();
                        return WriterEnd::Stopped { socket, unsent };
                    }
                }
                outbox.ready.notified().await;
                continue;
            }
            Batch::Closed => {
                // Flushes and ends our side: a FIN on TCP, close_notify and a FIN on TLS.
                let _ = socket.shutdown().await;
                return WriterEnd::Flushed;
            }
            Batch::Stopped => {
                let unsent = Vec::new();
                return WriterEnd::Stopped { socket, unsent };
            }
        };
        // Bytes of the batch's first chunk already written.
        let mut offset = 0;
        while !batch.is_empty() {
            tokio::select! {
                // Suspends while this client's kernel buffer is full: only this writer waits.
                written = write_chunks(&mut socket, &batch, offset) => match written {
                    Ok(n) if n > 0 => {
                        outbox.sent(n);
                        offset = skip_written(&mut batch, offset + n);
                    }
                    _ => return WriterEnd::Failed,
                },
                () = outbox.stopped.notified() => {
                    let unsent = rest_of_line(&batch, offset);
                    return WriterEnd::Stopped { socket, unsent };
                }
            }
        }
    }
}

/// One vectored write of the queued chunks, starting `offset` bytes into the first: the
/// chunks are shared with every other receiver's queue and written from where they are, never
/// copied per receiver. The slices live on the stack of one `poll`, not in the writer's future.
fn write_chunks<'a, W: AsyncWrite + Unpin>(
    socket: &'a mut W,
    batch: &'a VecDeque<Chunk>,
    offset: usize,
) -> impl Future<Output = io::Result<usize>> + 'a {
    std::future::poll_fn(move |cx| {
        let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
        let mut count = 0;
        for (slice, chunk) in slices.iter_mut().zip(batch) {
            let unwritten = if count == 0 { &chunk[offset..] } else { chunk };
            *slice = IoSlice::new(unwritten);
            count += 1;
        }
        Pin::new(&mut *socket).poll_write_vectored(cx, &slices[..count])
    })
}

/// Drops the chunks that `written` bytes (counted from the start of the first) covered;
/// returns how far into the new first chunk they reached.
fn skip_written(batch: &mut VecDeque<Chunk>, mut written: usize) -> usize {
    while let Some(first) = batch.front() {
        if written < first.len() {
            return written;
        }
        written -= first.len();
        batch.pop_front();
    }
    0
}

/// What is left of the line being written when a writer stops `offset` bytes into the first
/// chunk: a chunk holds whole lines, so the line ends within it.
fn rest_of_line(batch: &VecDeque<Chunk>, offset: usize) -> Vec<u8> {
    let Some(first) = batch.front() else {
        return Vec::new();
    };
    if offset == 0 || first[offset - 1] == b'\n' {
        return Vec::new();
    }
    let rest = &first[offset..];
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .map_or(rest.len(), |i| i + 1);
    rest[..end].to_vec()
}

/// One client's bounded outbound queue, shared by every task that sends to it.
///
/// What counts against `--max-queue` is everything queued or being written. Chat lines are
/// pushed only into room a reader reserved before reading ([`crate::room::Room::reserve`]); notices are
/// pushed without waiting, up to [`NOTICE_ROOM`] past the limit. A queue more than half full
/// holds the room's readers back until it has drained to half; [`Outbox::holding_back`] notes
/// since when, and a queue that holds them back for `--stall-ms` is evicted.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    /// `--max-queue`.
    limit: usize,
    /// Shared with the room's other outboxes.
    backlog: Arc<Backlog>,
    /// Whether this queue is over half full now, readable without the lock: a reader that
    /// looks for full queues among a thousand members locks only those.
    over_half: AtomicBool,
    /// Wakes the writer: something was queued, or the outbox was closed.
    ready: Notify,
    /// Wakes a writer stuck writing: it must stop.
    stopped: Notify,
}

/// What every outbox of a room shares with the room's readers.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// How many open queues are more than half full: while none is, a reader needs to look at
    /// no queue to know that it may read.
    pub(crate) over_half: AtomicUsize,
    /// Wakes the readers waiting for room: a queue they waited for drained to half, or closed.
    pub(crate) drained: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    chunks: VecDeque<Chunk>,
    /// Bytes in `chunks` plus those of the writer's batch not yet written.
    queued: usize,
    closing: Closing,
    /// Since when this queue, more than half full, has held a reader back; `None` again once
    /// it drains to half.
    holding_back_since: Option<Instant>,
    /// A reader waits for this queue to drain to half: wake it then.
    reader_waiting: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Closing {
    #[default]
    Open,
    /// Send what is queued, then close (the client left, or the server is shutting down).
    AfterFlush,
    /// Evicted as too slow, or idle: drop what is queued, stop the writer now and hand its
    /// socket back for the last notice.
    Stopped,
}

/// What the writer finds when it looks at its outbox.
enum Batch {
    Chunks(VecDeque<Chunk>),
    Empty,
    Closed,
    Stopped,
}

/// A notice was dropped: the client has [`NOTICE_ROOM`] more than `--max-queue` waiting.
#[derive(Debug)]
pub struct TooFarBehind;

impl Outbox {
    pub(crate) fn new(limit: usize, backlog: Arc<Backlog>) -> Self {
        Self {
            state: Mutex::default(),
            limit,
            backlog,
            over_half: AtomicBool::new(false),
            ready: Notify::new(),
            stopped: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // A panic elsewhere cannot leave a queue half-updated: every update is one statement.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Half of `--max-queue`: a queue fuller than this holds readers back.
    fn half(&self) -> usize {
        self.limit / 2
    }

    /// Whether this queue holds readers back now: open and more than half full.
    fn holds_readers_back(&self, state: &OutboxState) -> bool {
        state.closing == Closing::Open && state.queued > self.half()
    }

    /// Applies `change` to the state, keeping [`Backlog::over_half`] and the waiting
    /// readers up to date with whether this queue holds readers back.
    fn update<T>(&self, change: impl FnOnce(&mut OutboxState) -> T) -> T {
        let mut state = self.lock();
        let was_over = self.holds_readers_back(&state);
        let result = change(&mut state);
        let is_over = self.holds_readers_back(&state);
        if is_over && !was_over {
            self.over_half.store(true, Ordering::SeqCst);
            self.backlog.over_half.fetch_add(1, Ordering::SeqCst);
        } else if was_over && !is_over {
            self.over_half.store(false, Ordering::SeqCst);
            self.backlog.over_half.fetch_sub(1, Ordering::SeqCst);
            state.holding_back_since = None;
            if std::mem::take(&mut state.reader_waiting) {
                self.backlog.drained.notify_waiters();
            }
        }
        result
    }

    /// Queues `chunk` without looking at the limit, unless the client is leaving: for chat
    /// lines a reader reserved room for, and the one goodbye at shutdown.
    pub fn push(&self, chunk: Chunk) {
        let _ = self.queue(chunk, usize::MAX);
    }

    /// Queues a notice, which never waits, unless the client is leaving; drops it if the client
    /// is [`NOTICE_ROOM`] past `--max-queue` behind. A queue short of that takes a whole notice,
    /// however long (a welcome with the history, a `/list`), so a notice is never cut.
    pub fn push_notice(&self, chunk: Chunk) -> Result<(), TooFarBehind> {
        self.queue(chunk, self.limit.saturating_add(NOTICE_ROOM))
    }

    /// Queues `chunk` unless the client is leaving, or refuses it if `full` bytes or more are
    /// queued already.
    fn queue(&self, chunk: Chunk, full: usize) -> Result<(), TooFarBehind> {
        let queued = self.update(|state| {
            if state.closing != Closing::Open {
                return Ok(false);
            }
            if state.queued >= full {
                return Err(TooFarBehind);
            }
            state.queued += chunk.len();
            state.chunks.push_back(chunk);
            Ok(true)
        })?;
        if queued {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Everything queued, for the writer to write from where it is. The queue starts afresh,
    /// so an idle client holds no buffer.
    fn take_batch(&self) -> Batch {
        let mut state = self.lock();
        if state.closing == Closing::Stopped {
            return Batch::Stopped;
        }
        if state.chunks.is_empty() {
            return match state.closing {
                Closing::Open => Batch::Empty,
                _ => Batch::Closed,
            };
        }
        Batch::Chunks(std::mem::take(&mut state.chunks))
    }

    /// The kernel took `n` more bytes of the writer's batch.
    fn sent(&self, n: usize) {
        self.update(|state| state.queued -= n);
    }

    /// No more pushes: the writer sends what is queued, then closes the socket.
    pub fn close(&self) {
        self.update(|state| {
            if state.closing == Closing::Open {
                state.closing = Closing::AfterFlush;
            }
        });
        self.ready.notify_one();
    }

    /// Drops what is queued and has the writer stop after the line it is writing and hand back
    /// its socket, for a last notice (too slow, idle). False if the client was already leaving.
    pub fn stop(&self) -> bool {
        let stopping = self.update(|state| {
            if state.closing != Closing::Open {
                return false;
            }
            let dropped: usize = state.chunks.iter().map(|chunk| chunk.len()).sum();
            state.queued -= dropped;
            state.chunks = VecDeque::new();
            state.closing = Closing::Stopped;
            true
        });
        if stopping {
            self.stopped.notify_one();
            self.ready.notify_one();
        }
        stopping
    }

    /// If this queue holds readers back (open and more than half full), since when: from now
    /// if it had not yet held anyone back since it last drained to half.
    pub(crate) fn holding_back(&self, now: Instant) -> Option<Instant> {
        if !self.over_half.load(Ordering::SeqCst) {
            return None;
        }
        let mut state = self.lock();
        if !self.holds_readers_back(&state) {
            return None;
        }
        Some(*state.holding_back_since.get_or_insert(now))
    }
}

/// A queue a reader must wait for: more than half full, and since when that must end.
pub(crate) struct FullQueue {
    pub(crate) outbox: Arc<Outbox>,
    /// When the first of the queues that held the reader back will have done so for
    /// `--stall-ms`: the reader looks again then, and evicts it.
    pub(crate) deadline: Instant,
}

impl FullQueue {
    /// Returns once this queue, or another one a reader waited for, has drained to half or
    /// closed, or the deadline has passed; the caller looks again.
    pub(crate) async fn wait(self) {
        let has_room = self.outbox.backlog.drained.notified();
        tokio::pin!(has_room);
        // Listening before saying so: a writer that drains the queue between the two wakes us.
        has_room.as_mut().enable();
        let still_full = {
            let mut state = self.outbox.lock();
            state.reader_waiting = self.outbox.holds_readers_back(&state);
            state.reader_waiting
        };
        if still_full {
            let _ = tokio::time::timeout_at(self.deadline.into(), has_room).await;
        }
    }
}

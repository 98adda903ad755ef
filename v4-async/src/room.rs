//! The room: who is in it, what they said lately, and the one lock that orders it all.
//!
//! The room knows members and their outboxes, never sockets. Whatever carries a member's bytes
//! (a TCP connection, a TLS stream, later a WebSocket or a bridge to another server) takes part
//! through the same few calls:
//!
//! - [`Room::admit`] at accept time takes a slot of `--max-clients` and of `--max-per-ip`
//!   (SPEC 2, 13), or says why not ([`Refusal`]); the [`Admission`] holds the slot, through a
//!   TLS handshake say, and gives it back if dropped.
//! - [`Room::join`] turns an admission into a member with a name and an [`Outbox`]: the
//!   welcome and the history go into its queue, the others hear it joined.
//! - [`Room::relay`] carries a member's chat lines to everyone else; a session reads them only
//!   into room it reserved first (the backpressure below); [`Room::rename`], [`Room::list`] and
//!   [`Room::send_private`] answer `/nick`, `/list` and `/msg`.
//! - [`Room::leave`] removes it; [`Room::shut_down`] says goodbye to everyone.
//! - With a [`Bridge`] (v5-cluster; v4 has none), the room tells it what its members do, and
//!   takes what comes from other processes: [`Room::relay_from_elsewhere`] (held back like a
//!   reader), [`Room::announce`], [`Room::send_private`] and [`Room::remember`].
//!
//! **Backpressure: readers wait for room before they read.** Pushing without waiting is safe
//! only if senders cannot outrun the receivers, and they easily could: a two-byte line `a\n`
//! becomes `127.0.0.1:52344 says: a\r\n`, twelve times the bytes, for every receiver. So a
//! reader reads only when every other member's queue is at most half full, and then at most
//! what can become no more than the free half (`message::relayed_bound`, the growth of the
//! worst lines, gives the size). Checking and reserving that room is one step under the room
//! lock, so two readers never count the same free space and no queue passes `--max-queue`
//! ([`Room::reserve`] says why). Otherwise the reader waits, on a `Notify` that the full
//! queue's writer signals once it has drained to half, and the sender's bytes wait in the
//! kernel: its TCP window closes, and TCP slows the sender. Nothing is dropped. This is v3's
//! "take `POLLIN` away from senders while a receiver is full", as code that `.await`s.
//!
//! **What the room lock covers.** One `std::sync::Mutex`, never held across an `.await`, held
//! for: admitting and joining (the member count, the per-address count, the welcome, the
//! history replay and the join notice, so no line slips between history and live chat);
//! checking and reserving room for a read (while no queue is over half full, one atomic counter
//! says so and no queue is looked at; otherwise each fuller queue is looked at, and evicted if
//! it stalled for `--stall-ms`); relaying (recording the lines in the history, then one push
//! into every other member's queue, so everyone sees lines in the same order); and renames,
//! `/list` and `/msg`, which look members up by name. Each push takes that outbox's own short
//! lock. So the room lock is held for a pass over the members, not for one push.
//!
//! **What a chat line costs.** Reading and framing allocate nothing (the read buffer is on the
//! stack; the sanitised text goes into a reused `String`). Formatting allocates: each chat line
//! becomes a new `String` (`message::chat_line`, `message::action`), appended to the session's
//! batch for the read, and the batch becomes one shared [`crate::outbox::Chunk`] (one more
//! allocation and copy, for all receivers together). The history keeps a copy of each line (one
//! allocation per line). Each receiver's queue then grows by a pointer; its `VecDeque`
//! reallocates only when it outgrows its capacity, and is handed to the writer whole, so an
//! idle client holds none.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chat_protocol::command;
use chat_protocol::limits::PerIp;
use chat_protocol::message::{self, CRLF};
use tokio::sync::Notify;

use crate::bridge::Bridge;
use crate::history::{self, History};
use crate::outbox::{Backlog, Chunk, FullQueue, Outbox};
use crate::session::READ_CHUNK;
use crate::Config;

/// How long a shutdown waits for writers to flush `* server shutting down` before returning;
/// the spec allows two seconds in all.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(1500);

/// Identifies a member of the room for as long as it is connected; increases with each join,
/// so the members listed in id order are listed in the order they came.
pub type ClientId = u64;

/// The sender of what comes from elsewhere through a [`Bridge`]: no member has this id.
pub const ELSEWHERE: ClientId = ClientId::MAX;

/// Everyone connected, what they said lately, and the limits that apply to them.
#[derive(Debug)]
pub struct Room {
    state: Mutex<RoomState>,
    max_clients: usize,
    pub(crate) max_line: usize,
    max_queue: usize,
    announce_limit: usize,
    /// Lines per second per client; `None` with `--rate 0`.
    pub(crate) rate: Option<f64>,
    pub(crate) idle_timeout: Option<Duration>,
    /// Signalled when the last member leaves, for the shutdown to know it is done.
    emptied: Notify,
    /// `--stall-ms`: how long one queue may hold the readers back before it is evicted.
    stall: Duration,
    /// Shared with every member's outbox: how many queues are more than half full.
    backlog: Arc<Backlog>,
    /// Wakes readers waiting for reads in progress to give back what they reserved.
    settled: Notify,
    /// What the room shares beyond this process (v5); `None` in v4.
    bridge: Option<Arc<dyn Bridge>>,
}

#[derive(Debug)]
struct RoomState {
    members: BTreeMap<ClientId, Member>,
    next_id: ClientId,
    /// Connections admitted but not yet members (in their TLS handshake, say): they hold
    /// slots of `--max-clients` too.
    admitted: usize,
    /// Members per address, for `--max-per-ip`: counted from accept to leave.
    per_ip: PerIp,
    /// The last chat lines, as relayed, within `--history` lines and half a queue of bytes.
    history: History,
    /// Bytes that reads in progress may still push into every queue; see [`Room::reserve`].
    reserved: usize,
    /// A reader waits for a read in progress to settle: wake it then.
    reader_waiting: bool,
}

#[derive(Debug)]
struct Member {
    /// How the others see this client.
    name: String,
    /// Where it connected from, for `--max-per-ip`.
    ip: IpAddr,
    outbox: Arc<Outbox>,
}

/// Why a connection may not join; it is told so before it is closed.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// `--max-clients` are connected.
    Full { max_clients: usize },
    /// Its address holds `--max-per-ip` connections already.
    TooManyFromAddress { max_per_ip: usize },
}

impl Refusal {
    /// What the connection is told before it is closed.
    pub fn notice(self) -> String {
        match self {
            Refusal::Full { max_clients } => message::server_full(max_clients),
            Refusal::TooManyFromAddress { max_per_ip } => {
                message::too_many_from_address(max_per_ip)
            }
        }
    }
}

impl Room {
    /// An empty room with these limits.
    pub fn new(config: &Config) -> Self {
        let state = RoomState {
            members: BTreeMap::new(),
            next_id: 0,
            admitted: 0,
            per_ip: PerIp::new(config.max_per_ip),
            history: History::new(config.history, history::budget(config.max_queue)),
            reserved: 0,
            reader_waiting: false,
        };
        Self {
            state: Mutex::new(state),
            max_clients: config.max_clients,
            max_line: config.max_line,
            max_queue: config.max_queue,
            announce_limit: config.announce_limit,
            rate: config.rate,
            idle_timeout: config.idle_timeout,
            emptied: Notify::new(),
            stall: config.stall,
            backlog: Arc::default(),
            settled: Notify::new(),
            bridge: config.bridge.clone(),
        }
    }

    /// An empty room, shared, its bridge (if any) attached.
    pub fn open(config: &Config) -> Arc<Self> {
        let room = Arc::new(Self::new(config));
        if let Some(bridge) = &room.bridge {
            bridge.attach(&room);
        }
        room
    }

    /// The room's bridge, if it has one: a session asks it what only it knows.
    pub(crate) fn bridge(&self) -> Option<&Arc<dyn Bridge>> {
        self.bridge.as_ref()
    }

    /// What a member connected from `addr` is called until `/nick`: its address, or what the
    /// bridge says (unique beyond this room too).
    pub fn default_name(&self, addr: SocketAddr) -> String {
        match &self.bridge {
            Some(bridge) => bridge.default_name(addr),
            None => addr.to_string(),
        }
    }

    /// How many are online elsewhere, through the bridge.
    fn elsewhere(&self) -> usize {
        self.bridge.as_ref().map_or(0, |bridge| bridge.elsewhere())
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a connection from `ip`, from the moment it is accepted: one of
    /// `--max-clients` and one of its address's `--max-per-ip`. Or says why it may not have one.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refusal> {
        let mut state = self.lock();
        if state.members.len() + state.admitted >= self.max_clients {
            return Err(Refusal::Full {
                max_clients: self.max_clients,
            });
        }
        if !state.per_ip.try_add(ip) {
            return Err(Refusal::TooManyFromAddress {
                max_per_ip: state.per_ip.max(),
            });
        }
        state.admitted += 1;
        Ok(Admission {
            room: Arc::clone(self),
            ip: Some(ip),
        })
    }

    /// Makes an admitted connection a member called `name`, welcomes it with the recent
    /// history into `outbox`, and tells the others. Under one lock, so no line slips between
    /// the history and the live stream.
    ///
    /// The history goes into the newcomer's empty queue as the very chunks relayed, shared,
    /// not copied; it is at most half a queue ([`history::budget`]), so the live chat that
    /// follows fits beside it while the newcomer reads it.
    pub fn join(&self, mut admission: Admission, name: String, outbox: &Arc<Outbox>) -> ClientId {
        let ip = admission.ip.take().expect("an admission joins once");
        let mut state = self.lock();
        state.admitted -= 1;
        let id = state.next_id;
        state.next_id += 1;
        let online = state.members.len() + 1 + self.elsewhere();
        outbox.push(Chunk::from(message::wire(&message::welcome(&name, online))));
        for line in state.history.lines() {
            outbox.push(Arc::clone(line));
        }
        let mut notice = None;
        if online <= self.announce_limit {
            let joined = Chunk::from(message::wire(&message::joined(&name, online)));
            send_to_all(&state.members, None, &joined);
            notice = Some(joined);
        }
        if let Some(bridge) = &self.bridge {
            if let Some(greeting) = bridge.greeting() {
                outbox.push(Chunk::from(message::wire(&greeting)));
            }
            bridge.joined(&name, notice.as_ref());
        }
        let member = Member {
            name,
            ip,
            outbox: Arc::clone(outbox),
        };
        state.members.insert(id, member);
        id
    }

    /// Gives back the slot of a connection that never joined.
    fn release(&self, ip: IpAddr) {
        let mut state = self.lock();
        state.admitted -= 1;
        state.per_ip.remove(ip);
    }

    /// Removes a client and tells the others, with the reason it gave to `/quit`.
    pub fn leave(&self, id: ClientId, name: &str, reason: Option<&str>) {
        let mut state = self.lock();
        let Some(member) = state.members.remove(&id) else {
            return;
        };
        state.per_ip.remove(member.ip);
        let online = state.members.len() + self.elsewhere();
        let mut notice = None;
        if online <= self.announce_limit {
            let left = Chunk::from(message::wire(&message::left(name, online, reason)));
            send_to_all(&state.members, None, &left);
            notice = Some(left);
        }
        if let Some(bridge) = &self.bridge {
            bridge.left(name, notice.as_ref());
        }
        if state.members.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Hands chat lines (one or many, each ending in CRLF) to every member but the sender, in
    /// one pass under the lock so every receiver sees lines in the same order, and keeps them
    /// for the history.
    pub fn relay(&self, from: ClientId, lines: String) {
        let mut state = self.lock();
        let chunk = relay_under_lock(&mut state, from, lines);
        self.tell_bridge(&chunk);
    }

    /// A member's lines were relayed here: the bridge carries them further.
    fn tell_bridge(&self, lines: &Chunk) {
        if let Some(bridge) = &self.bridge {
            bridge.said(lines);
        }
    }

    /// Hands chat lines from elsewhere (each ending in CRLF) to every member, once every
    /// member's queue has room for them: the bridge is held back like a reader (and a queue
    /// that holds it back for `--stall-ms` is evicted), so what arrives from elsewhere never
    /// takes a queue past `--max-queue` either. Keeps them for the history.
    pub async fn relay_from_elsewhere(&self, lines: String) {
        let mut verdict = self.reserve_exactly(lines.len());
        loop {
            match verdict {
                Verdict::Read(reservation) => {
                    let mut state = self.lock();
                    relay_under_lock(&mut state, ELSEWHERE, lines);
                    self.give_back(&mut state, reservation.bytes);
                    return;
                }
                Verdict::WaitFor(full) => full.wait().await,
                Verdict::WaitForReads => self.wait_for_reads().await,
            }
            verdict = self.reserve_exactly(lines.len());
        }
    }

    /// [`Room::reserve`] for `bytes` already formatted, for no member.
    fn reserve_exactly(&self, bytes: usize) -> Verdict {
        let mut state = self.lock();
        if self.backlog.over_half.load(Ordering::SeqCst) > 0 {
            if let Some(full) = self.find_full_queue(&state, ELSEWHERE) {
                return Verdict::WaitFor(full);
            }
        }
        let free = (self.max_queue - self.max_queue / 2).saturating_sub(state.reserved);
        if bytes > free && state.reserved > 0 {
            return Verdict::WaitForReads;
        }
        state.reserved += bytes;
        Verdict::Read(Reservation {
            read: 0,
            bytes,
            name_len: 0,
            held: 0,
        })
    }

    /// Tells every member `line`, a notice from elsewhere (a join, a leave, a rename there, or
    /// news of the bridge itself). Like every notice it never waits.
    pub fn announce(&self, line: &str) {
        let notice = Chunk::from(message::wire(line));
        send_to_all(&self.lock().members, None, &notice);
    }

    /// Keeps chat lines said before this room opened (each ending in CRLF) for the history,
    /// without relaying them: what the bridge knows was said lately.
    pub fn remember(&self, lines: &str) {
        self.lock().history.record_all(lines, CRLF);
    }

    /// A new client's outbox, sharing this room's [`Backlog`].
    pub fn new_outbox(&self) -> Outbox {
        Outbox::new(self.max_queue, Arc::clone(&self.backlog))
    }

    /// Whether reader `reader`, named with at most `name_len` bytes, whose framer holds `held`
    /// bytes of an unfinished line, may read now, and how much.
    ///
    /// It may read when no other member's queue is more than half full. It then reads at most
    /// what can become no more than the free half of a queue, less what reads in progress
    /// have reserved ([`message::readable_within`], [`message::relayed_bound`]), and reserves
    /// that bound until [`Room::settle`]. Why that keeps every queue bounded: the check and the
    /// reservation happen under the room lock, so no two readers count the same free space;
    /// each queue was at most half full, its writer only takes bytes away, and all the reads in
    /// progress together can push at most what they reserved, which fits in the other half. So
    /// chat lines never take a queue past `--max-queue`, except one read into a queue at most
    /// half full when not even a byte more fits (a tiny `--max-queue`, or a long line already
    /// held): that read may take one chunk, or such a line could never pass.
    ///
    /// Every queue over half full holds the reader back: since when is noted in its outbox,
    /// and one that has held it back for `--stall-ms` is evicted here.
    pub(crate) fn reserve(&self, reader: ClientId, name_len: usize, held: usize) -> Verdict {
        let mut state = self.lock();
        if self.backlog.over_half.load(Ordering::SeqCst) > 0 {
            if let Some(full) = self.find_full_queue(&state, reader) {
                return Verdict::WaitFor(full);
            }
        }
        let free = (self.max_queue - self.max_queue / 2).saturating_sub(state.reserved);
        let mut read = message::readable_within(name_len, held, free, READ_CHUNK);
        if read == 0 {
            if state.reserved > 0 {
                return Verdict::WaitForReads;
            }
            read = READ_CHUNK;
        }
        let bytes = message::relayed_bound(name_len, held + read);
        state.reserved += bytes;
        Verdict::Read(Reservation {
            read,
            bytes,
            name_len,
            held,
        })
    }

    /// A queue other than `reader`'s that is more than half full, after evicting every one
    /// that has held the readers back for `--stall-ms`; `None` if there is none left.
    fn find_full_queue(&self, state: &RoomState, reader: ClientId) -> Option<FullQueue> {
        let now = Instant::now();
        let mut found: Option<FullQueue> = None;
        for (&id, member) in &state.members {
            if id == reader {
                continue;
            }
            let Some(since) = member.outbox.holding_back(now) else {
                continue;
            };
            let deadline = since + self.stall;
            if deadline <= now {
                if member.outbox.stop() {
                    tracing::warn!(
                        "{} evicted: its full queue held the room back for {} ms (too slow)",
                        member.name,
                        self.stall.as_millis()
                    );
                }
                continue;
            }
            match &mut found {
                Some(full) => full.deadline = full.deadline.min(deadline),
                None => {
                    let outbox = Arc::clone(&member.outbox);
                    found = Some(FullQueue { outbox, deadline });
                }
            }
        }
        found
    }

    /// A read of `reservation` took `read` bytes: gives back what more bytes could have
    /// become.
    pub(crate) fn shrink(&self, reservation: &mut Reservation, read: usize) {
        let needed = message::relayed_bound(reservation.name_len, reservation.held + read);
        if needed < reservation.bytes {
            self.give_back(&mut self.lock(), reservation.bytes - needed);
            reservation.bytes = needed;
        }
    }

    /// Relays the last `lines` of a read (none, if empty) and gives back what the read
    /// reserved, in one pass under the lock.
    pub(crate) fn settle(&self, from: ClientId, lines: String, reservation: Reservation) {
        let mut state = self.lock();
        if !lines.is_empty() {
            let chunk = relay_under_lock(&mut state, from, lines);
            self.tell_bridge(&chunk);
        }
        self.give_back(&mut state, reservation.bytes);
    }

    /// Gives back `bytes` of the reads' reservations and wakes the readers waiting for that.
    fn give_back(&self, state: &mut RoomState, bytes: usize) {
        state.reserved -= bytes;
        if std::mem::take(&mut state.reader_waiting) {
            self.settled.notify_waiters();
        }
    }

    /// Returns once the reads in progress now have settled (at once if none is).
    pub(crate) async fn wait_for_reads(&self) {
        let settled = self.settled.notified();
        tokio::pin!(settled);
        // Listening before saying so: a read that settles between the two wakes us.
        settled.as_mut().enable();
        let in_progress = {
            let mut state = self.lock();
            state.reader_waiting = state.reserved > 0;
            state.reader_waiting
        };
        if in_progress {
            settled.await;
        }
    }

    /// Gives member `id` the name `new` unless someone else has it in any case; everyone,
    /// the renamed member included, is told.
    pub fn rename(&self, id: ClientId, old: &str, new: &str) -> Result<(), String> {
        refuse_rename(old, new)?;
        let mut state = self.lock();
        let taken = state
            .members
            .iter()
            .any(|(&other, member)| other != id && member.name.eq_ignore_ascii_case(new));
        if taken {
            return Err(message::nick_taken(new));
        }
        if let Some(member) = state.members.get_mut(&id) {
            member.name = new.to_owned();
        }
        let notice = Chunk::from(message::wire(&message::renamed(old, new)));
        send_to_all(&state.members, None, &notice);
        if let Some(bridge) = &self.bridge {
            bridge.renamed(old, new, &notice);
        }
        Ok(())
    }

    /// Whether a member here is called `name`, in any case.
    pub(crate) fn has_member_named(&self, name: &str) -> bool {
        let state = self.lock();
        state
            .members
            .values()
            .any(|member| member.name.eq_ignore_ascii_case(name))
    }

    /// `* online (N): ...`, in the order members joined, in lines of bounded length.
    pub fn list(&self) -> Vec<String> {
        let state = self.lock();
        message::online_list(state.members.values().map(|member| member.name.as_str()))
    }

    /// Sends `line` from member `from` to the member called `to` (any case); false if there is
    /// none. To another member it is pushed like a chat line, into room its reader reserved; to
    /// the sender itself, like a notice.
    pub fn send_private(&self, from: ClientId, to: &str, line: &str) -> bool {
        let state = self.lock();
        let target = state
            .members
            .iter()
            .find(|(_, member)| member.name.eq_ignore_ascii_case(to));
        let Some((&id, member)) = target else {
            return false;
        };
        let chunk = Chunk::from(message::wire(line));
        if id != from {
            member.outbox.push(chunk);
        } else if member.outbox.push_notice(chunk).is_err() {
            tracing::debug!(
                "{}: private line to itself dropped, too far behind",
                member.name
            );
        }
        true
    }

    /// Tells everyone the server is stopping, lets the writers flush, and returns once every
    /// client is gone or [`SHUTDOWN_FLUSH`] has passed.
    pub async fn shut_down(&self) {
        let emptied = self.emptied.notified();
        tokio::pin!(emptied);
        emptied.as_mut().enable();
        {
            let state = self.lock();
            if state.members.is_empty() {
                return;
            }
            let goodbye = Chunk::from(message::wire(message::SHUTTING_DOWN));
            for member in state.members.values() {
                member.outbox.push(Arc::clone(&goodbye));
                member.outbox.close();
            }
        }
        if tokio::time::timeout(SHUTDOWN_FLUSH, emptied).await.is_err() {
            tracing::warn!("some clients did not take the goodbye in time");
        }
    }
}

/// Why `old` may not become `new` whoever else is called what: not a nickname, or no change.
pub(crate) fn refuse_rename(old: &str, new: &str) -> Result<(), String> {
    if let Err(why) = command::check_nick(new) {
        return Err(message::bad_nick(new, why));
    }
    if new == old {
        return Err(message::you_are(old));
    }
    Ok(())
}

/// Pushes the notice `chunk` (a join, a leave, a rename) to every member except `from`. It
/// never waits; a member too far behind misses it (see [`Outbox::push_notice`]).
fn send_to_all(members: &BTreeMap<ClientId, Member>, from: Option<ClientId>, chunk: &Chunk) {
    for (&id, member) in members {
        if Some(id) != from && member.outbox.push_notice(Arc::clone(chunk)).is_err() {
            tracing::debug!("{}: notice dropped, too far behind", member.name);
        }
    }
}

/// What a reader may do next; see [`Room::reserve`].
pub(crate) enum Verdict {
    /// Read, within the reservation.
    Read(Reservation),
    /// Wait for this queue to drain.
    WaitFor(FullQueue),
    /// Wait for the reads in progress to push what they read and give back their reservation.
    WaitForReads,
}

/// Room held in every queue for one read: at most `read` bytes, which can become at most
/// `bytes` for each receiver. Given back with [`Room::settle`].
#[must_use]
pub(crate) struct Reservation {
    pub(crate) read: usize,
    bytes: usize,
    /// What `bytes` was worked out from: the longest name the lines may carry, and the bytes
    /// of an unfinished line the framer held before the read.
    name_len: usize,
    held: usize,
}

/// Hands chat lines (one or many, each ending in CRLF) to every member but `from`, and keeps
/// them for the history. Pushed past no limit: the reader reserved room for them in every queue
/// before it read them.
fn relay_under_lock(state: &mut RoomState, from: ClientId, lines: String) -> Chunk {
    state.history.record_all(&lines, CRLF);
    let chunk = Chunk::from(lines.into_bytes());
    for (&id, member) in &state.members {
        if id != from {
            member.outbox.push(Arc::clone(&chunk));
        }
    }
    chunk
}

/// A slot in the room for one connection that has not joined yet: counted against
/// `--max-clients` and `--max-per-ip` from accept on. [`Room::join`] makes it a member; dropped
/// unjoined (a failed handshake, say), it gives the slot back.
#[derive(Debug)]
pub struct Admission {
    room: Arc<Room>,
    /// `None` once joined.
    ip: Option<IpAddr>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.room.release(ip);
        }
    }
}

//! The node's side of the cluster: what v4's room tells the [`Bridge`], and what it asks.
//!
//! [`Cluster`] is the state the room's event calls and the Redis tasks ([`crate::link`])
//! share: whether the link is up, this node's members (for presence and nickname claims), how
//! many are online on the other nodes, and the two bounded queues toward and from Redis. The
//! event calls come under the room lock, so they only update that state and queue; the
//! questions (`/nick`, `/list`, `/pm` to someone elsewhere) ask Redis directly, each within
//! [`REDIS_TIMEOUT`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use chat_protocol::{command, message};
use redis::aio::MultiplexedConnection;
use v4_async::bridge::{Answer, Bridge};
use v4_async::outbox::Chunk;
use v4_async::Room;

use crate::keys;
use crate::queue::{Bounded, Weight};
use crate::wire::Event;

/// How long a nickname claim, and a node's presence, live in Redis without a heartbeat. A
/// node that dies stops refreshing them, so its names are free and its members leave every
/// `/list` this long after its last heartbeat: within [`CLAIM_TTL`], well inside the 15 s that
/// SPEC 11 allows. Shorter would let a live node lose its names to one slow round trip.
pub const CLAIM_TTL: Duration = Duration::from_secs(10);

/// How often a node refreshes its claims and presence and says it is alive: three times per
/// [`CLAIM_TTL`], so two heartbeats can be late or lost before a live node's names lapse.
pub const HEARTBEAT: Duration = Duration::from_secs(3);

/// How long any one Redis command may take (connecting included) before the link counts as
/// broken. redis-rs waits 500 ms by default, which a loaded machine's Redis can exceed with a
/// long script; a member waits for a `/nick` answer at most this long.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of events waiting to be published: several seconds of a busy room. Past it,
/// events are dropped (their lines reached this node's members only) and the log says so:
/// a slow Redis never makes the room wait, and never costs unbounded memory.
const OUTGOING_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Most bytes of messages from the other nodes waiting for the room to take them. Well under
/// Redis's own 32 MiB limit for a subscriber: past it the queue overflows, and the chat lines
/// it refused are read back from the stream once the room has caught up.
const INCOMING_MAX_BYTES: usize = 16 * 1024 * 1024;

/// What this node's members are called, for presence and heartbeats, in the order they came.
#[derive(Debug, Default)]
struct Members {
    /// Name -> when it joined (the order `/list` shows).
    names: BTreeMap<String, u64>,
    next_seq: u64,
}

/// What the room asked the link to tell the cluster, in the room's order.
#[derive(Debug)]
pub enum Outgoing {
    /// Chat lines, appended to the stream and published in one step.
    Said(Chunk),
    /// A member joined (`seq` orders it in `/list`); `members` here now.
    Joined {
        name: String,
        seq: u64,
        notice: Option<Chunk>,
        members: usize,
    },
    Left {
        name: String,
        notice: Option<Chunk>,
        members: usize,
    },
    Renamed {
        old: String,
        new: String,
        seq: u64,
        notice: Chunk,
        members: usize,
    },
    /// A claim granted and then not used.
    Release(String),
    /// A private line for a member of another node.
    Private { to: String, line: String },
}

impl Weight for Outgoing {
    fn weight(&self) -> usize {
        match self {
            Outgoing::Said(lines) => lines.len(),
            Outgoing::Private { line, .. } => line.len(),
            // Small and bounded by the room's own limits: a name, a notice.
            _ => 64,
        }
    }
}

/// What the link hands the room, in the order it came.
#[derive(Debug)]
pub enum Incoming {
    Event(Event),
    /// The link (re)connected and subscribed: read what was missed from the stream before the
    /// messages that follow this.
    Resync,
}

impl Weight for Incoming {
    fn weight(&self) -> usize {
        match self {
            Incoming::Event(Event::Said { lines, .. }) => lines.len(),
            Incoming::Event(Event::Private { line, .. }) => line.len(),
            _ => 64,
        }
    }
}

/// The link's state, as the room's members hear about it.
#[derive(Debug, Default)]
struct Link {
    /// A connection that works, while the link is up.
    connection: Option<MultiplexedConnection>,
    /// Members here were told the link is down (a drop, or a newcomer while it was down):
    /// they are told when it is back.
    told_down: bool,
}

/// One node's share of the cluster; see the module's doc.
#[derive(Debug)]
pub struct Cluster {
    /// `--node`: unique in the cluster.
    pub node: String,
    /// `--history`: lines loaded from the stream for newcomers when the link first comes up.
    pub history: usize,
    room: OnceLock<Weak<Room>>,
    room_opened: tokio::sync::Notify,
    link: Mutex<Link>,
    members: Mutex<Members>,
    /// Other nodes: members there, and when we last heard from them.
    others: Mutex<HashMap<String, (usize, Instant)>>,
    pub outgoing: Bounded<Outgoing>,
    pub incoming: Bounded<Incoming>,
    /// Events dropped because the queue toward Redis was full, for the log.
    dropped: AtomicU64,
    /// Names whose claim Redis did not answer in time. Redis may still run such a claim when
    /// it catches up (a sleeping Redis runs what was sent to it when it wakes, even on a
    /// connection the node has given up), and then holds the name for this node though no
    /// member here took it: the next heartbeat gives back those no member here holds.
    in_doubt: Mutex<Vec<String>>,
    /// The history read from the stream before the room opened, for the room to start with.
    preloaded: Mutex<Option<String>>,
}

impl Cluster {
    pub fn new(node: String, history: usize) -> Self {
        Self {
            node,
            history,
            room: OnceLock::new(),
            room_opened: tokio::sync::Notify::new(),
            link: Mutex::default(),
            members: Mutex::default(),
            others: Mutex::default(),
            outgoing: Bounded::new(OUTGOING_MAX_BYTES),
            incoming: Bounded::new(INCOMING_MAX_BYTES),
            dropped: AtomicU64::new(0),
            in_doubt: Mutex::default(),
            preloaded: Mutex::default(),
        }
    }

    /// The room starts with these history lines (each ending in CRLF), read from the stream.
    pub fn preload(&self, lines: String) {
        *self
            .preloaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(lines);
    }

    fn link(&self) -> MutexGuard<'_, Link> {
        self.link
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn others(&self) -> MutexGuard<'_, HashMap<String, (usize, Instant)>> {
        self.others
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The room, once it is open; `None` once it has closed.
    pub async fn room(&self) -> Option<Arc<Room>> {
        loop {
            let opened = self.room_opened.notified();
            if let Some(room) = self.room.get() {
                return room.upgrade();
            }
            opened.await;
        }
    }

    /// A connection to Redis while the link is up.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        self.link().connection.clone()
    }

    /// The link is up on `connection`: events flow again, and members who heard it was down
    /// hear it is back.
    pub fn link_up(&self, connection: MultiplexedConnection) {
        let told_down = {
            let mut link = self.link();
            link.connection = Some(connection);
            std::mem::take(&mut link.told_down)
        };
        tracing::info!("cluster link up");
        if told_down {
            if let Some(room) = self.room.get().and_then(Weak::upgrade) {
                room.announce(message::CLUSTER_LINK_UP);
            }
        }
    }

    /// The link broke: what was waiting to be published is dropped (it reached this node's
    /// members only), and they are told.
    pub fn link_down(&self, why: &str) {
        {
            let mut link = self.link();
            link.connection = None;
            link.told_down = true;
        }
        self.outgoing.clear();
        tracing::warn!("cluster link down: {why}");
        if let Some(room) = self.room.get().and_then(Weak::upgrade) {
            room.announce(message::CLUSTER_LINK_DOWN);
        }
    }

    /// Whether the link is up.
    fn is_up(&self) -> bool {
        self.link().connection.is_some()
    }

    /// Queues `event` toward Redis while the link is up; a full queue drops it, and says so
    /// in the log from the first event dropped, then each time the count doubles.
    fn publish(&self, event: Outgoing) {
        if !self.is_up() {
            return;
        }
        if !self.outgoing.push(event) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                let events = if dropped == 1 { "event" } else { "events" };
                tracing::warn!(
                    "Redis is not keeping up: {dropped} {events} dropped so far, heard on this \
                     node only"
                );
            }
        }
    }

    /// This node's members, in the order they came, for presence and heartbeats.
    pub fn local_members(&self) -> Vec<(String, u64)> {
        let members = self.members();
        let mut names: Vec<_> = members
            .names
            .iter()
            .map(|(name, &seq)| (name.clone(), seq))
            .collect();
        names.sort_by_key(|&(_, seq)| seq);
        names
    }

    /// Redis may yet grant `name` to this node, though the member who asked was refused.
    fn doubt(&self, name: &str) {
        self.in_doubt().push(name.to_owned());
    }

    /// The names Redis may have granted to this node that no member here holds, to give
    /// back (compare-and-delete, so a name another node holds is not touched); forgotten here.
    pub fn doubts_to_release(&self) -> Vec<String> {
        let members = self.local_members();
        let mut doubts = std::mem::take(&mut *self.in_doubt());
        doubts.retain(|doubt| {
            !members
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(doubt))
        });
        doubts
    }

    /// Names [`Cluster::doubts_to_release`] gave that could not be given back: next time.
    pub fn doubt_again(&self, names: Vec<String>) {
        self.in_doubt().extend(names);
    }

    fn in_doubt(&self) -> MutexGuard<'_, Vec<String>> {
        self.in_doubt
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// `node` has `members` now.
    pub fn heard_from(&self, node: &str, members: usize) {
        self.others()
            .insert(node.to_owned(), (members, Instant::now()));
    }

    /// `node` left the cluster.
    pub fn gone(&self, node: &str) {
        self.others().remove(node);
    }
}

impl Bridge for Cluster {
    fn attach(&self, room: &Arc<Room>) {
        let preloaded = self
            .preloaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(lines) = preloaded {
            room.remember(&lines);
        }
        let _ = self.room.set(Arc::downgrade(room));
        self.room_opened.notify_waiters();
    }

    fn default_name(&self, addr: SocketAddr) -> String {
        // Unique in the cluster as long as node names are; never a nickname (`:` and `@`).
        format!("{addr}@{}", self.node)
    }

    fn elsewhere(&self) -> usize {
        let mut others = self.others();
        // A node that died said no goodbye: it stops counting when its heartbeats stop.
        others.retain(|_, (_, heard)| heard.elapsed() < CLAIM_TTL);
        others.values().map(|&(members, _)| members).sum()
    }

    fn greeting(&self) -> Option<String> {
        let mut link = self.link();
        if link.connection.is_some() {
            return None;
        }
        link.told_down = true;
        Some(message::CLUSTER_LINK_DOWN.to_owned())
    }

    fn joined(&self, name: &str, notice: Option<&Chunk>) {
        let (seq, members) = {
            let mut members = self.members();
            let seq = members.next_seq;
            members.next_seq += 1;
            members.names.insert(name.to_owned(), seq);
            (seq, members.names.len())
        };
        self.publish(Outgoing::Joined {
            name: name.to_owned(),
            seq,
            notice: notice.cloned(),
            members,
        });
    }

    fn left(&self, name: &str, notice: Option<&Chunk>) {
        let members = {
            let mut members = self.members();
            members.names.remove(name);
            members.names.len()
        };
        self.publish(Outgoing::Left {
            name: name.to_owned(),
            notice: notice.cloned(),
            members,
        });
    }

    fn renamed(&self, old: &str, new: &str, notice: &Chunk) {
        let (seq, members) = {
            let mut members = self.members();
            let seq = members.names.remove(old).unwrap_or(0);
            members.names.insert(new.to_owned(), seq);
            (seq, members.names.len())
        };
        self.publish(Outgoing::Renamed {
            old: old.to_owned(),
            new: new.to_owned(),
            seq,
            notice: Arc::clone(notice),
            members,
        });
    }

    fn said(&self, lines: &Chunk) {
        self.publish(Outgoing::Said(Arc::clone(lines)));
    }

    fn claim<'a>(&'a self, name: &'a str) -> Answer<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(mut connection) = self.connection() else {
                return Err(message::CLUSTER_NICK_UNAVAILABLE.to_owned());
            };
            let mut invocation = keys::CLAIM.key(keys::nick(name));
            invocation.arg(&self.node).arg(CLAIM_TTL.as_millis() as u64);
            let claim = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(REDIS_TIMEOUT, claim).await {
                Ok(Ok(0)) => Err(message::nick_taken(name)),
                Ok(Ok(_)) => Ok(()),
                failed => {
                    if let Ok(Err(error)) = failed {
                        tracing::warn!("claiming {name}: {error}");
                    }
                    self.doubt(name);
                    Err(message::CLUSTER_NICK_UNAVAILABLE.to_owned())
                }
            }
        })
    }

    fn release(&self, name: &str) {
        self.publish(Outgoing::Release(name.to_owned()));
    }

    fn list(&self) -> Answer<'_, Option<Vec<String>>> {
        Box::pin(async move {
            let mut connection = self.connection()?;
            let mut invocation = keys::LIST.key(keys::NODES);
            invocation.arg(keys::MEMBERS_PREFIX).arg(&self.node);
            let elsewhere = invocation.invoke_async::<Vec<String>>(&mut connection);
            let elsewhere = match tokio::time::timeout(REDIS_TIMEOUT, elsewhere).await {
                Ok(Ok(names)) => names,
                _ => return None,
            };
            let mut everyone: Vec<String> = self
                .local_members()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            everyone.extend(elsewhere);
            Some(everyone)
        })
    }

    fn send_private<'a>(&'a self, to: &'a str, line: &'a str) -> Answer<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(mut connection) = self.connection() else {
                return Err(message::no_such_user_here(to));
            };
            let mut invocation = keys::FIND.key(keys::nick(to));
            invocation
                .arg(keys::MEMBERS_PREFIX)
                .arg(to)
                .arg(&self.node)
                .arg(u8::from(command::check_nick(to).is_ok()));
            let found = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(REDIS_TIMEOUT, found).await {
                Ok(Ok(1)) => {}
                Ok(Ok(_)) => return Err(message::no_such_user(to)),
                // Redis did not answer in time: whether the name is elsewhere is unknown.
                Ok(Err(_)) | Err(_) => return Err(message::no_such_user_here(to)),
            }
            self.publish(Outgoing::Private {
                to: to.to_owned(),
                line: line.to_owned(),
            });
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_in_doubt_is_given_back_unless_a_member_here_holds_the_name_now() {
        let cluster = Cluster::new("a".to_owned(), 20);
        cluster.doubt("alicia");
        cluster.doubt("Bob");
        cluster.joined("bob", None);
        assert_eq!(cluster.doubts_to_release(), ["alicia"]);
        assert!(cluster.doubts_to_release().is_empty(), "handed out once");
        cluster.doubt_again(vec!["alicia".to_owned()]);
        assert_eq!(cluster.doubts_to_release(), ["alicia"], "until given back");
    }
}

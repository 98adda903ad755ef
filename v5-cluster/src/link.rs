//! The link to Redis: connecting and reconnecting, publishing, the subscription, heartbeats,
//! and handing what other nodes said to the room.
//!
//! Two tasks live as long as the node:
//!
//! - [`keep_linked`] connects (two connections: one multiplexed for commands, one for the
//!   subscription, which RESP2 reserves for pub/sub), says the link is up, and runs the
//!   publisher, the subscription reader and the heartbeat until one of them fails; then it
//!   says the link is down and connects again, with back-off ([`RECONNECT_MAX`] apart at
//!   most). redis-rs does not subscribe again after a reconnect by itself, and need not: each
//!   link builds its subscription anew.
//! - [`deliver`] takes what the subscription queued and hands it to the room, in order: chat
//!   lines with [`Room::relay_from_elsewhere`] (which waits for room in every queue, like a
//!   reader), notices with [`Room::announce`], private lines with [`Room::send_private`]. After
//!   each (re)connection, and whenever its queue overflowed, it first reads from the stream
//!   what it has not delivered ([`backfill`]), by ID, so lines are neither lost nor repeated.
//!
//! No blocking `XREAD` anywhere: live lines come by pub/sub, and the stream is only read with
//! `XRANGE`, which answers at once (a blocking read on the shared connection would trip
//! redis-rs's response timeout and hold up every other command).

use std::sync::Arc;
use std::time::Duration;

use chat_protocol::message::CRLF;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, Pipeline, RedisError};
use v4_async::room::ELSEWHERE;
use v4_async::Room;

use crate::cluster::{Cluster, Incoming, Outgoing, CLAIM_TTL, HEARTBEAT, REDIS_TIMEOUT};
use crate::keys;
use crate::wire::{Event, StreamId};

/// First wait before connecting again: short, a restarted Redis is often back at once.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between two tries (SPEC 11: at most 5 s apart). Each failure doubles the wait
/// up to this, so a Redis that stays down costs a try every few seconds, not a busy loop.
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Most events published in one pipeline (one round trip): a burst's worth, while one pipeline
/// stays a bounded amount of work for Redis.
const PUBLISH_BATCH: usize = 256;

/// Stream entries read per `XRANGE` while making up for missed lines.
const BACKFILL_PAGE: usize = 1000;

/// Most bytes of back-filled lines handed to the room at once: well under half a queue, so a
/// back-fill goes through the room's backpressure in ordinary steps.
const BACKFILL_CHUNK: usize = 16 * 1024;

/// How long a node that is stopping waits for its last events (its members leaving) to be
/// published, within the two seconds a shutdown may take.
const LEAVE_FLUSH: Duration = Duration::from_millis(300);

/// How long a node that is stopping waits for Redis to take its goodbye: with
/// [`LEAVE_FLUSH`], half a second at most, within the two seconds a shutdown may take.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(200);

/// By when, after the signal to stop, a node has left the cluster, however long the room took
/// to say goodbye first (v4 gives its clients up to 1.5 s): SPEC 2 allows two seconds for the
/// whole shutdown, and the rest is for exiting on a loaded machine. Leaving the cluster is
/// cut short to fit, rather than overrun: a node whose goodbye Redis never took drops out of
/// every `/list` when its presence expires.
pub const LEFT_BY: Duration = Duration::from_millis(1750);

/// Keeps the link to Redis up for as long as the node runs; see the module's doc.
pub async fn keep_linked(cluster: Arc<Cluster>, client: Client) {
    let mut wait = RECONNECT_FIRST;
    // Why the last try failed, as logged: a Redis that stays out of reach for the same reason
    // is one line in the log, not one every few seconds.
    let mut failing: Option<String> = None;
    loop {
        match connect(&client).await {
            Ok((connection, subscription)) => {
                wait = RECONNECT_FIRST;
                failing = None;
                let why = run_link(&cluster, connection, subscription).await;
                cluster.link_down(&why);
            }
            Err(error) => {
                let why = unreachable_because(&client, &error);
                if failing.as_ref() != Some(&why) {
                    tracing::warn!(
                        "cannot reach Redis (trying again, at most {RECONNECT_MAX:?} apart): {why}"
                    );
                    failing = Some(why);
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Why Redis could not be reached, for the log: redis-rs's words, and for the two ways a
/// `rediss://` link fails before Redis has said anything, what to look at.
fn unreachable_because(client: &Client, error: &anyhow::Error) -> String {
    let tls = matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    );
    let timed_out = error.is::<tokio::time::error::Elapsed>()
        || error
            .downcast_ref::<RedisError>()
            .is_some_and(RedisError::is_timeout);
    // rustls says why it refused a certificate in words, not in a type redis-rs passes on.
    if error.to_string().contains("invalid peer certificate") {
        format!(
            "Redis's TLS certificate is not trusted ({error}); if a private CA signed it, give \
             that CA with --redis-ca FILE"
        )
    } else if tls && timed_out {
        format!("{error} (no answer to the TLS handshake: is that Redis's tls-port?)")
    } else {
        error.to_string()
    }
}

type Subscription = redis::aio::PubSubStream;

/// A command connection and a subscription to the cluster's channel.
async fn connect(client: &Client) -> anyhow::Result<(MultiplexedConnection, Subscription)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // The publisher's pipelines call the scripts by hash: a restarted Redis has forgotten them.
    for script in [&*keys::SAY, &*keys::RELEASE] {
        tokio::time::timeout(REDIS_TIMEOUT, script.load_async(&mut connection)).await??;
    }
    let subscribing = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(keys::CHANNEL).await?;
        redis::RedisResult::Ok(pubsub.into_on_message())
    };
    let subscription = tokio::time::timeout(REDIS_TIMEOUT, subscribing).await??;
    Ok((connection, subscription))
}

/// Runs one link until something fails; says what.
async fn run_link(
    cluster: &Arc<Cluster>,
    mut connection: MultiplexedConnection,
    subscription: Subscription,
) -> String {
    cluster.link_up(connection.clone());
    // Subscribed already, and nothing read from the subscription yet: whatever is appended to
    // the stream from here on comes by the channel too, after this marker, so the back-fill it
    // asks for and the channel leave no gap between them (and overlap only by IDs it skips).
    // Not refused even if the queue overflowed: an overflow asks for a back-fill as well.
    cluster.incoming.push_marker(Incoming::Resync);
    // Presence first: this node's members and names, as they are now.
    if let Err(error) = announce_presence(cluster, &mut connection).await {
        return format!("cannot write presence: {error}");
    }
    tokio::select! {
        why = read_subscription(cluster, subscription) => why,
        why = publish(cluster, connection.clone()) => why,
        why = beat(cluster, connection) => why,
    }
}

/// Reads the channel into the bounded incoming queue, never waiting for the room; says why it
/// ended (the connection dropped).
async fn read_subscription(cluster: &Cluster, mut subscription: Subscription) -> String {
    while let Some(message) = subscription.next().await {
        let Some(event) = Event::decode(message.get_payload_bytes()) else {
            continue;
        };
        // What this node said its own members have heard already.
        if event.node() != cluster.node {
            // A refusal overflows the queue: the deliverer makes up for it from the stream.
            cluster.incoming.push(Incoming::Event(event));
        }
    }
    "the subscription ended".to_owned()
}

/// Publishes what the room queued, in order, a pipeline at a time; says why it stopped.
async fn publish(cluster: &Cluster, mut connection: MultiplexedConnection) -> String {
    loop {
        let taken = cluster.outgoing.take().await;
        if taken.overflowed {
            tracing::warn!("the queue toward Redis overflowed: some events were heard here only");
        }
        let mut events = taken.entries;
        while !events.is_empty() {
            let mut pipe = redis::pipe();
            for event in events.drain(..events.len().min(PUBLISH_BATCH)) {
                add_to(&mut pipe, cluster, event);
            }
            let sent = pipe.query_async::<()>(&mut connection);
            match tokio::time::timeout(REDIS_TIMEOUT, sent).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return format!("publishing failed: {error}"),
                Err(_) => return format!("publishing took more than {REDIS_TIMEOUT:?}"),
            }
        }
    }
}

/// The commands that tell the cluster about `event`.
fn add_to(pipe: &mut Pipeline, cluster: &Cluster, event: Outgoing) {
    let node = &cluster.node;
    let members_key = keys::members(node);
    let ttl = CLAIM_TTL.as_millis() as u64;
    let notice_text = |notice: Option<&v4_async::outbox::Chunk>| {
        notice.map_or(String::new(), |chunk| {
            String::from_utf8_lossy(chunk)
                .trim_end_matches(CRLF)
                .to_owned()
        })
    };
    let notice = |pipe: &mut Pipeline, members: usize, text: String| {
        let event = Event::Notice {
            members,
            node: node.clone(),
            notice: text,
        };
        pipe.publish(keys::CHANNEL, event.encode()).ignore();
    };
    let release = |pipe: &mut Pipeline, name: &str| {
        // Default names (`addr@node`) were never claimed.
        if chat_protocol::command::check_nick(name).is_ok() {
            release_claim(pipe, name, node);
        }
    };
    match event {
        Outgoing::Said(lines) => {
            pipe.cmd("EVALSHA")
                .arg(keys::SAY.get_hash())
                .arg(1)
                .arg(keys::HISTORY)
                .arg(keys::CHANNEL)
                .arg(node)
                .arg(keys::HISTORY_ENTRIES)
                .arg(&*lines)
                .ignore();
        }
        Outgoing::Joined {
            name,
            seq,
            notice: text,
            members,
        } => {
            pipe.zadd(&members_key, &name, seq).ignore();
            pipe.pexpire(&members_key, ttl as i64).ignore();
            pipe.sadd(keys::NODES, node).ignore();
            notice(pipe, members, notice_text(text.as_ref()));
        }
        Outgoing::Left {
            name,
            notice: text,
            members,
        } => {
            pipe.zrem(&members_key, &name).ignore();
            release(pipe, &name);
            notice(pipe, members, notice_text(text.as_ref()));
        }
        Outgoing::Renamed {
            old,
            new,
            seq,
            notice: text,
            members,
        } => {
            pipe.zrem(&members_key, &old).ignore();
            pipe.zadd(&members_key, &new, seq).ignore();
            pipe.pexpire(&members_key, ttl as i64).ignore();
            // `alice` to `Alice` keeps the same claim.
            if !old.eq_ignore_ascii_case(&new) {
                release(pipe, &old);
            }
            notice(pipe, members, notice_text(Some(&text)));
        }
        Outgoing::Release(name) => release(pipe, &name),
        Outgoing::Private { to, line } => {
            let event = Event::Private {
                to,
                node: node.clone(),
                line,
            };
            pipe.publish(keys::CHANNEL, event.encode()).ignore();
        }
    }
}

/// Writes this node's members afresh, claims its nicknames again, and tells the others how
/// many it has: after a (re)connection, whatever Redis forgot or kept meanwhile.
async fn announce_presence(
    cluster: &Cluster,
    connection: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let members = cluster.local_members();
    let members_key = keys::members(&cluster.node);
    let mut pipe = redis::pipe();
    pipe.atomic().del(&members_key).ignore();
    for (name, seq) in &members {
        pipe.zadd(&members_key, name, *seq).ignore();
    }
    pipe.pexpire(&members_key, CLAIM_TTL.as_millis() as i64)
        .ignore();
    let sent = pipe.query_async::<()>(connection);
    tokio::time::timeout(REDIS_TIMEOUT, sent)
        .await
        .map_err(|_| timeout_error())??;
    // The other nodes' counts now, for `N online`, rather than at their next heartbeat.
    let mut invocation = keys::COUNTS.key(keys::NODES);
    invocation.arg(keys::MEMBERS_PREFIX).arg(&cluster.node);
    let counts = invocation.invoke_async::<Vec<(String, usize)>>(connection);
    let counts = tokio::time::timeout(REDIS_TIMEOUT, counts)
        .await
        .map_err(|_| timeout_error())??;
    for (node, members) in counts {
        if members > 0 {
            cluster.heard_from(&node, members);
        }
    }
    heartbeat(cluster, connection).await
}

/// Refreshes presence and claims every [`HEARTBEAT`]; says why it stopped.
async fn beat(cluster: &Cluster, mut connection: MultiplexedConnection) -> String {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        if let Err(error) = heartbeat(cluster, &mut connection).await {
            return format!("heartbeat failed: {error}");
        }
    }
}

/// One heartbeat: claims Redis granted when nobody was waiting any more are given back,
/// presence and claims live on, and the others hear we are alive.
async fn heartbeat(
    cluster: &Cluster,
    connection: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    release_doubts(cluster, connection).await?;
    let members = cluster.local_members();
    let mut invocation = keys::HEARTBEAT.key(keys::members(&cluster.node));
    invocation
        .key(keys::NODES)
        .arg(&cluster.node)
        .arg(CLAIM_TTL.as_millis() as u64)
        .arg(keys::NICK_PREFIX);
    for (name, _) in &members {
        if chat_protocol::command::check_nick(name).is_ok() {
            invocation.arg(name);
        }
    }
    let lost = tokio::time::timeout(
        REDIS_TIMEOUT,
        invocation.invoke_async::<Vec<String>>(connection),
    )
    .await
    .map_err(|_| timeout_error())??;
    for name in lost {
        // Another node claimed it while our link was down for longer than a claim lives.
        tracing::warn!("{name} is claimed by another node too, since the link was down");
    }
    let alive = Event::Alive {
        members: members.len(),
        node: cluster.node.clone(),
    };
    let mut publish = redis::cmd("PUBLISH");
    publish.arg(keys::CHANNEL).arg(alive.encode());
    let published = publish.query_async::<()>(connection);
    tokio::time::timeout(REDIS_TIMEOUT, published)
        .await
        .map_err(|_| timeout_error())?
}

/// Gives back the names whose claim Redis ran too late for the member who asked (see
/// [`Cluster::doubts_to_release`]). On this link, that claim was sent before: Redis runs it
/// first. On a new link, Redis has run what waited on the old one, unless a flood was
/// queued ahead of it there; such a claim lapses within [`CLAIM_TTL`].
async fn release_doubts(
    cluster: &Cluster,
    connection: &mut MultiplexedConnection,
) -> redis::RedisResult<()> {
    let doubts = cluster.doubts_to_release();
    if doubts.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for name in &doubts {
        release_claim(&mut pipe, name, &cluster.node);
    }
    let released = tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(connection))
        .await
        .unwrap_or_else(|_| Err(timeout_error()));
    if released.is_err() {
        cluster.doubt_again(doubts);
    }
    released
}

/// Adds to `pipe` the giving back of `node`'s claim on `name`: a compare-and-delete
/// ([`keys::RELEASE`]), so a name another node holds by now is left alone.
fn release_claim(pipe: &mut Pipeline, name: &str, node: &str) {
    pipe.cmd("EVALSHA")
        .arg(keys::RELEASE.get_hash())
        .arg(1)
        .arg(keys::nick(name))
        .arg(node)
        .ignore();
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis did not answer within {REDIS_TIMEOUT:?}"),
    ))
}

/// Hands what the other nodes said to the room, in order, for as long as the room is open;
/// see the module's doc.
pub async fn deliver(cluster: Arc<Cluster>, mut last_seen: Option<StreamId>) {
    // `last_seen`: the ID of the last chat entry delivered (or loaded as history); `None`
    // until the stream has been read once.
    loop {
        let taken = cluster.incoming.take().await;
        let Some(room) = cluster.room().await else {
            return;
        };
        for entry in taken.entries {
            match entry {
                Incoming::Resync => backfill(&cluster, &room, &mut last_seen).await,
                Incoming::Event(event) => {
                    deliver_one(&cluster, &room, event, &mut last_seen).await;
                }
            }
        }
        // Messages were refused after those: the chat lines among them are in the stream.
        if taken.overflowed {
            tracing::warn!("the room fell behind the cluster: catching up from the stream");
            backfill(&cluster, &room, &mut last_seen).await;
        }
    }
}

/// Hands one event from another node to the room.
async fn deliver_one(
    cluster: &Cluster,
    room: &Room,
    event: Event,
    last_seen: &mut Option<StreamId>,
) {
    match event {
        Event::Said { last, lines, .. } => {
            // Already delivered, by the back-fill that followed a reconnection.
            if last_seen.is_some_and(|seen| last <= seen) {
                return;
            }
            *last_seen = Some(last);
            room.relay_from_elsewhere(lines).await;
        }
        Event::Notice {
            members,
            node,
            notice,
        } => {
            cluster.heard_from(&node, members);
            if !notice.is_empty() {
                room.announce(&notice);
            }
        }
        Event::Alive { members, node } => cluster.heard_from(&node, members),
        Event::Bye { node } => cluster.gone(&node),
        Event::Private { to, line, .. } => {
            room.send_private(ELSEWHERE, &to, &line);
        }
    }
}

/// Reads from the stream what came after `last_seen` and hands the other nodes' lines to the
/// room; the first time, loads the last `--history` lines as the room's history instead.
async fn backfill(cluster: &Cluster, room: &Room, last_seen: &mut Option<StreamId>) {
    let Some(mut connection) = cluster.connection() else {
        return;
    };
    let Some(seen) = *last_seen else {
        match load_history(&mut connection, cluster.history).await {
            Ok((lines, newest)) => {
                room.remember(&lines);
                *last_seen = Some(newest);
            }
            Err(error) => tracing::warn!("cannot load the history: {error}"),
        }
        return;
    };
    let mut from = seen;
    let mut missed = 0usize;
    let mut lines = String::new();
    loop {
        let page = read_range(&mut connection, &format!("({from}"), "+", BACKFILL_PAGE).await;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!("cannot read the missed lines: {error}");
                break;
            }
        };
        let full = page.len() == BACKFILL_PAGE;
        for (id, node, line) in page {
            from = id;
            *last_seen = Some(id);
            if node == cluster.node {
                continue;
            }
            missed += 1;
            lines.push_str(&line);
            lines.push_str(CRLF);
            if lines.len() >= BACKFILL_CHUNK {
                room.relay_from_elsewhere(std::mem::take(&mut lines)).await;
            }
        }
        if !full {
            break;
        }
    }
    if !lines.is_empty() {
        room.relay_from_elsewhere(lines).await;
    }
    if missed > 0 {
        tracing::info!("caught up {missed} lines from the stream");
    }
}

/// Reads the history before the room opens, so that the first newcomer gets it: the last
/// `history` lines (each ending in CRLF) and the newest ID, if Redis answers in time; the node
/// starts without them otherwise, and loads them once the link is up.
pub async fn preload(client: &Client, history: usize) -> Option<(String, StreamId)> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT));
    let reading = async {
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        load_history(&mut connection, history).await
    };
    match tokio::time::timeout(REDIS_TIMEOUT, reading).await {
        Ok(Ok(loaded)) => Some(loaded),
        Ok(Err(error)) => {
            tracing::warn!("no history yet: {error}");
            None
        }
        Err(_) => None,
    }
}

/// The last `history` lines of the stream, oldest first, each ending in CRLF, and the newest
/// ID (zero for an empty stream).
async fn load_history(
    connection: &mut MultiplexedConnection,
    history: usize,
) -> anyhow::Result<(String, StreamId)> {
    let mut range = redis::cmd("XREVRANGE");
    range
        .arg(keys::HISTORY)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(history.max(1));
    let newest = range.query_async::<Vec<(String, Vec<String>)>>(connection);
    let entries = tokio::time::timeout(REDIS_TIMEOUT, newest)
        .await
        .map_err(|_| timeout_error())??;
    let entries = decode_entries(entries);
    let mut lines = String::new();
    // Newest first from XREVRANGE: the history wants them oldest first.
    for (_, _, line) in entries.iter().rev().take(history) {
        lines.push_str(line);
        lines.push_str(CRLF);
    }
    let newest = entries.first().map(|&(id, _, _)| id).unwrap_or_default();
    Ok((lines, newest))
}

/// `XRANGE` from `start` to `end`, at most `count` entries: (ID, node, line) each.
async fn read_range(
    connection: &mut MultiplexedConnection,
    start: &str,
    end: &str,
    count: usize,
) -> anyhow::Result<Vec<(StreamId, String, String)>> {
    let mut command = redis::cmd("XRANGE");
    command
        .arg(keys::HISTORY)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count);
    let range = command.query_async::<Vec<(String, Vec<String>)>>(connection);
    let entries = tokio::time::timeout(REDIS_TIMEOUT, range)
        .await
        .map_err(|_| timeout_error())??;
    Ok(decode_entries(entries))
}

/// Stream entries as (ID, node, line); entries this version cannot read are skipped.
fn decode_entries(entries: Vec<(String, Vec<String>)>) -> Vec<(StreamId, String, String)> {
    entries
        .into_iter()
        .filter_map(|(id, fields)| {
            let id = id.parse().ok()?;
            let field = |name: &str| {
                fields
                    .chunks_exact(2)
                    .find(|pair| pair[0] == name)
                    .map(|pair| pair[1].clone())
            };
            Some((id, field("node")?, field("line")?))
        })
        .collect()
}

/// Leaves the cluster on shutdown: lets the last events (members leaving) go out, then says
/// goodbye and takes this node's presence away, within [`LEAVE_FLUSH`] and [`GOODBYE_TIMEOUT`],
/// and in any case by [`LEFT_BY`] after `asked`, when the node was told to stop.
pub async fn leave(cluster: &Cluster, asked: tokio::time::Instant) {
    let left_by = asked + LEFT_BY;
    let deadline = left_by.min(tokio::time::Instant::now() + LEAVE_FLUSH);
    while !cluster.outgoing.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let Some(mut connection) = cluster.connection() else {
        return;
    };
    let goodbye_within =
        GOODBYE_TIMEOUT.min(left_by.saturating_duration_since(tokio::time::Instant::now()));
    let bye = Event::Bye {
        node: cluster.node.clone(),
    };
    let mut pipe = redis::pipe();
    pipe.publish(keys::CHANNEL, bye.encode())
        .ignore()
        .del(keys::members(&cluster.node))
        .ignore()
        .srem(keys::NODES, &cluster.node)
        .ignore();
    let sent = pipe.query_async::<()>(&mut connection);
    if !matches!(tokio::time::timeout(goodbye_within, sent).await, Ok(Ok(()))) {
        tracing::warn!("could not say goodbye to the cluster");
    }
}

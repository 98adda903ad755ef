//! Where the cluster keeps its state in Redis, and the Lua scripts that change it atomically.
//!
//! | key | type | what |
//! |---|---|---|
//! | `sock-chat:room` | channel | every event between nodes ([`crate::wire`]) |
//! | `sock-chat:history` | stream, capped near [`HISTORY_ENTRIES`] | one entry per chat line: `node`, `line` |
//! | `sock-chat:nick:<name in lower case>` | string, expires | the node that holds the nickname |
//! | `sock-chat:members:<node>` | sorted set, expires | that node's members, by arrival |
//! | `sock-chat:nodes` | set | every node that has had members (a dead one's set expires) |
//!
//! Why scripts: each runs in Redis as one step that nothing interleaves with. Appending chat
//! lines to the stream and publishing them, with the stream ID, is one step, so the channel's
//! order is the stream's order and a node can tell by ID what it missed. A claim is "take it
//! if nobody has it", a release "delete it if it is still mine": as separate commands another
//! node could claim the name in between and lose it to our delete.
//!
//! The scripts name some keys they build themselves (a node's members, a nickname): fine on
//! one Redis server, which is what v5 uses; Redis Cluster, which shards keys, would want every
//! key passed in.

use std::sync::LazyLock;

use redis::Script;

/// The channel every node publishes to and subscribes to.
pub const CHANNEL: &str = "sock-chat:room";

/// The cluster's history: one stream.
pub const HISTORY: &str = "sock-chat:history";

/// About how many entries (chat lines) the history stream keeps (SPEC 11 says about 10 000):
/// more than `--history` can ask for, and the window within which a node that lost its link
/// can make up what it missed. Trimmed with `MAXLEN ~`, which drops whole blocks at once and
/// so costs almost nothing per append.
pub const HISTORY_ENTRIES: usize = 10_000;

/// The set of nodes, for `/list`.
pub const NODES: &str = "sock-chat:nodes";

/// A node's members: this prefix and the node's name.
pub const MEMBERS_PREFIX: &str = "sock-chat:members:";

/// A nickname's claim: this prefix and the name in lower case (names ignore ASCII case).
pub const NICK_PREFIX: &str = "sock-chat:nick:";

/// The key of `node`'s members.
pub fn members(node: &str) -> String {
    format!("{MEMBERS_PREFIX}{node}")
}

/// The key of the claim on nickname `name`.
pub fn nick(name: &str) -> String {
    format!("{NICK_PREFIX}{}", name.to_ascii_lowercase())
}

/// Appends each chat line of a batch to the stream and publishes the batch once, with the ID
/// of its last entry. KEYS: history. ARGV: channel, node, cap, lines (each ending in CRLF).
pub static SAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id
for line in string.gmatch(ARGV[4], '(.-)\r\n') do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'node', ARGV[2], 'line', line)
end
if id then
  redis.call('PUBLISH', ARGV[1], 'S ' .. id .. ' ' .. ARGV[2] .. '\n' .. ARGV[4])
end
return id
",
    )
});

/// Claims a nickname for a node for a while: 1 if it was free, 2 if the node holds it
/// already, 0 if another node does. KEYS: the claim. ARGV: node, milliseconds to live.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
return 0
",
    )
});

/// Frees a nickname if this node still holds it (compare and delete). KEYS: the claim.
/// ARGV: node.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// A node's heartbeat: its presence lives on, and so does each of its nicknames (claimed
/// again if it lapsed while the link was down). Returns the names another node took
/// meanwhile. KEYS: the node's members, the node set. ARGV: node, milliseconds to live,
/// claim prefix, then the node's nicknames.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local lost = {}
for i = 4, #ARGV do
  local key = ARGV[3] .. string.lower(ARGV[i])
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
",
    )
});

/// The members of every other node, node by node (sorted by name), each node's in the order
/// they came; forgets nodes whose presence has expired. KEYS: the node set. ARGV: members
/// prefix, this node.
pub static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local nodes = redis.call('SMEMBERS', KEYS[1])
table.sort(nodes)
local names = {}
for _, node in ipairs(nodes) do
  if node ~= ARGV[2] then
    local members = redis.call('ZRANGE', ARGV[1] .. node, 0, -1)
    if #members == 0 then
      redis.call('SREM', KEYS[1], node)
    end
    for _, name in ipairs(members) do
      names[#names + 1] = name
    end
  end
end
return names
",
    )
});

/// Whether a member called `ARGV[2]` is on another node: 1 or 0. A nickname's claim says
/// where it is; a default name ends with `@node`. KEYS: the claim. ARGV: members prefix,
/// name, this node, and `1` if the name is a nickname.
pub static FIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if ARGV[4] == '1' then
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[3] then return 1 end
  return 0
end
local at = string.find(ARGV[2], '@', 1, true)
if not at then return 0 end
local node = string.sub(ARGV[2], at + 1)
if node == ARGV[3] then return 0 end
if redis.call('ZSCORE', ARGV[1] .. node, ARGV[2]) then return 1 end
return 0
",
    )
});

/// How many members every other node has: node, count, node, count... KEYS: the node set.
/// ARGV: members prefix, this node.
pub static COUNTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local counts = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if node ~= ARGV[2] then
    counts[#counts + 1] = node
    counts[#counts + 1] = redis.call('ZCARD', ARGV[1] .. node)
  end
end
return counts
",
    )
});

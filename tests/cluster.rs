//! SPEC 11: v5-cluster's nodes share one room through Redis.
//!
//! Each test starts its own `redis-server` on a free loopback port with a temporary directory
//! (never a Redis someone already runs on 6379), and its own nodes. They need `redis-server`
//! on the PATH, so they are ignored by default; `.ci/run` installs it and runs them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chat_protocol::message::{
    no_such_user_here, CLUSTER_LINK_DOWN, CLUSTER_LINK_UP, CLUSTER_NICK_UNAVAILABLE,
};
use sock_chat_tests::tls::{TempDir, TestCa};
use sock_chat_tests::{failed_start, Client, Running, Server, DEADLINE};

/// SPEC 11: a dead node's names are free, and it has left every `/list`, within this.
const DEAD_NODE_FORGOTTEN: Duration = Duration::from_secs(15);

/// Between two looks at something that changes by itself in Redis (a claim expiring).
const POLL: Duration = Duration::from_millis(250);

/// A `redis-server` of this test's own, killed (and its directory removed) when dropped.
struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Options beyond the defaults (TLS, a password); later options win in Redis.
    options: Vec<String>,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis::unstarted();
        redis.launch();
        redis
    }

    /// A Redis with its port and directory chosen, not started yet.
    fn unstarted() -> Redis {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sock-chat-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory for redis");
        Redis {
            port,
            dir,
            child: None,
            options: Vec::new(),
        }
    }

    /// Starts redis-server on this port and directory; returns once it accepts connections.
    fn launch(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)");
        let (ready, is_ready) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                }
            }
        });
        is_ready
            .recv_timeout(DEADLINE)
            .expect("redis-server ready in time");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills Redis at once (SIGKILL): every node loses its link.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A node named `name` on `redis`, without a rate limit, once its link is up.
fn node(redis: &Redis, name: &str) -> Running {
    let node = node_unlinked(redis, name);
    node.expect_log("cluster link up");
    node
}

/// A node named `name` on `redis`, as soon as it listens.
fn node_unlinked(redis: &Redis, name: &str) -> Running {
    node_at(&redis.url(), name, &[])
}

/// A client of `node` that has read its welcome (and so is in the room), and its name.
fn join(node: &Running) -> (Client, String) {
    let mut client = node.connect();
    let welcome = client.read_until(|line| line.starts_with("* welcome "));
    let name = welcome["* welcome ".len()..]
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    (client, name)
}

/// A client of `node` called `nick`.
fn join_as(node: &Running, nick: &str) -> Client {
    let (mut client, name) = join(node);
    client.send_line(&format!("/nick {nick}"));
    client.expect_line_containing(&format!("{name} is now {nick}"));
    client
}

trait ReadsChat {
    fn expect_line_containing(&mut self, text: &str) -> String;
    fn online(&mut self) -> Vec<String>;
}

impl ReadsChat for Client {
    /// Skips lines until one contains `text`.
    fn expect_line_containing(&mut self, text: &str) -> String {
        self.read_until(|line| line.contains(text))
    }

    /// Asks `/list` and collects the names it gives.
    fn online(&mut self) -> Vec<String> {
        self.send_line("/list");
        let first = self.read_until(|line| line.starts_with("* online ("));
        let count: usize = first["* online (".len()..]
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut names = names_in(&first);
        while names.len() < count {
            names.extend(names_in(&self.read_line()));
        }
        names
    }
}

fn names_in(list_line: &str) -> Vec<String> {
    let names = list_line.split_once("): ").map_or("", |(_, names)| names);
    names
        .split(", ")
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until `done` holds, looking every [`POLL`]; panics after `within`.
fn eventually(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done() {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(POLL);
    }
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn lines_reach_every_client_on_every_node_once_in_order() {
    const LINES: usize = 50;
    let redis = Redis::start();
    let nodes: Vec<Running> = ["a", "b", "c"].iter().map(|n| node(&redis, n)).collect();
    let mut clients: Vec<(Client, String)> = Vec::new();
    for node in &nodes {
        for _ in 0..2 {
            clients.push(join(node));
        }
    }
    let names: Vec<String> = clients.iter().map(|(_, name)| name.clone()).collect();
    let unique: std::collections::HashSet<_> = names.iter().collect();
    assert_eq!(
        unique.len(),
        names.len(),
        "default names are unique: {names:?}"
    );
    for (client, _) in &mut clients {
        let mut burst = String::new();
        for i in 0..LINES {
            burst.push_str(&format!("line {i}\n"));
        }
        burst.push_str("end\n");
        client.send(burst.as_bytes());
    }
    for (receiver, me) in &mut clients {
        let mut heard: HashMap<String, Vec<String>> = HashMap::new();
        let mut ended = 0;
        while ended < names.len() - 1 {
            let line = receiver.read_line();
            if line.starts_with("* ") {
                continue;
            }
            let (sender, text) = line.split_once(" says: ").expect("a chat line");
            assert_ne!(sender, me, "{me} heard its own line");
            if text == "end" {
                ended += 1;
            } else {
                heard
                    .entry(sender.to_owned())
                    .or_default()
                    .push(text.to_owned());
            }
        }
        let expected: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
        for sender in names.iter().filter(|name| *name != me) {
            assert_eq!(
                heard.get(sender),
                Some(&expected),
                "{me} heard {sender}'s lines once each, in order"
            );
        }
    }
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_nickname_race_across_nodes_has_one_winner() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    for round in 0..5 {
        let nick = format!("racer{round}");
        let (mut on_a, name_a) = join(&a);
        let (mut on_b, name_b) = join(&b);
        on_a.send_line(&format!("/nick {nick}"));
        on_b.send_line(&format!("/nick {nick}"));
        let won = |client: &mut Client, name: &str| {
            let answer = client.read_until(|line| {
                line.contains(&format!("{name} is now {nick}")) || line.starts_with("* error:")
            });
            !answer.starts_with("* error:")
        };
        let a_won = won(&mut on_a, &name_a);
        let b_won = won(&mut on_b, &name_b);
        assert!(
            a_won != b_won,
            "exactly one of them is {nick} (a: {a_won}, b: {b_won})"
        );
    }
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn nicknames_are_unique_across_nodes_ignoring_case() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let _alice = join_as(&a, "alice");
    let (mut other, _) = join(&b);
    other.send_line("/nick ALICE");
    other.expect_line_containing("* error: nickname ALICE is taken");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn pm_reaches_a_user_on_another_node() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut alice = join_as(&a, "alice");
    let mut bob = join_as(&b, "bob");
    let (mut nameless, nameless_name) = join(&b);
    bob.send_line("/pm ALICE psst");
    alice.expect_line_containing("bob (private): psst");
    alice.send_line(&format!("/pm {nameless_name} hello there"));
    nameless.expect_line_containing("alice (private): hello there");
    bob.send_line("/pm nobody hello?");
    bob.expect_line_containing("* error: no such user nobody");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn pm_to_another_node_while_the_link_is_down_says_the_link_is_down() {
    let mut redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut bob = join_as(&b, "bob");
    let mut alice = join_as(&a, "alice");
    bob.expect_line_containing("is now alice");
    redis.kill();
    // Skipping bob's join and rename, which may reach node a after alice joined.
    alice.expect_line_containing(CLUSTER_LINK_DOWN);
    alice.send_line("/pm bob are you there?");
    // Bob may well be on another node: "no such user" alone would not be true.
    alice.expect_line(&no_such_user_here("bob"));
    bob.expect_line(CLUSTER_LINK_DOWN);
    redis.launch();
    alice.expect_line(CLUSTER_LINK_UP);
    bob.expect_line(CLUSTER_LINK_UP);
    // The restarted Redis is empty until each node has said again who is on it.
    eventually(Duration::from_secs(10), "bob listed on node a", || {
        alice.online().contains(&"bob".to_owned())
    });
    alice.send_line("/pm bob there you are");
    bob.expect_line_containing("alice (private): there you are");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn list_shows_the_users_of_every_node() {
    let redis = Redis::start();
    let nodes: Vec<Running> = ["a", "b", "c"].iter().map(|n| node(&redis, n)).collect();
    let mut clients: Vec<Client> = nodes
        .iter()
        .zip(["alice", "bob", "carol"])
        .map(|(node, nick)| join_as(node, nick))
        .collect();
    // Presence is written before the rename is published: whoever heard it finds it listed.
    clients[0].expect_line_containing("is now carol");
    let mut online = clients[0].online();
    online.sort();
    assert_eq!(online, ["alice", "bob", "carol"]);
    let mut online = clients[2].online();
    online.sort();
    assert_eq!(online, ["alice", "bob", "carol"]);
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn history_survives_restarting_every_node() {
    let redis = Redis::start();
    {
        let a = node(&redis, "a");
        let b = node(&redis, "b");
        let mut alice = join_as(&a, "alice");
        let mut bob = join_as(&b, "bob");
        alice.send_line("first");
        bob.expect_line_containing("alice says: first");
        bob.send_line("second");
        alice.expect_line_containing("bob says: second");
    }
    // Every node is gone; the stream is not.
    let c = node(&redis, "c");
    let (mut newcomer, _) = join(&c);
    newcomer.expect_line("alice says: first");
    newcomer.expect_line("bob says: second");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_killed_node_leaves_list_and_frees_its_names_within_15_s() {
    let redis = Redis::start();
    let mut doomed = node(&redis, "doomed");
    let survivor = node(&redis, "survivor");
    let _alice = join_as(&doomed, "alice");
    let (mut bob, _) = join(&survivor);
    // Presence is written a round trip after the rename: /list shows alice soon.
    eventually(DEADLINE, "alice in /list", || {
        bob.online().contains(&"alice".to_owned())
    });
    let killed_at = Instant::now();
    // SIGKILL: no goodbye, no release.
    sigkill(doomed.pid());
    let _ = doomed.wait_exit();
    eventually(DEAD_NODE_FORGOTTEN, "alice leaves /list", || {
        !bob.online().contains(&"alice".to_owned())
    });
    eventually(
        DEAD_NODE_FORGOTTEN.saturating_sub(killed_at.elapsed()),
        "alice is free",
        || {
            bob.send_line("/nick alice");
            let answer = bob
                .read_until(|line| line.contains("is now alice") || line.starts_with("* error:"));
            !answer.starts_with("* error:")
        },
    );
}

/// Sends SIGKILL to `pid`, with the `kill` command: the tests have no unsafe code.
fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn losing_redis_tells_each_node_and_the_local_room_keeps_working() {
    let mut redis = Redis::start();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut alice = join_as(&a, "alice");
    let mut amy = join_as(&a, "amy");
    let mut bob = join_as(&b, "bob");
    redis.kill();
    for client in [&mut alice, &mut amy, &mut bob] {
        client
            .expect_line_containing("* server cluster link down: only users on this node hear you");
    }
    alice.send_line("still here");
    amy.expect_line("alice says: still here");
    redis.launch();
    // Each read waits up to DEADLINE, longer than the longest back-off between two tries.
    for client in [&mut alice, &mut amy, &mut bob] {
        client.expect_line_containing("* server cluster link up");
    }
    alice.send_line("back together");
    bob.expect_line_containing("alice says: back together");
    amy.expect_line_containing("alice says: back together");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_node_starts_without_redis_and_joins_the_cluster_when_it_comes() {
    let mut redis = Redis::start();
    redis.kill();
    let lonely = node_unlinked(&redis, "lonely");
    let (mut alice, _) = join(&lonely);
    alice.expect_line("* server cluster link down: only users on this node hear you");
    let (mut amy, amy_name) = join(&lonely);
    amy.expect_line("* server cluster link down: only users on this node hear you");
    alice.send_line("anyone?");
    amy.expect_line_containing("says: anyone?");
    redis.launch();
    lonely.expect_log("cluster link up");
    alice.expect_line_containing("* server cluster link up");
    let other = node(&redis, "other");
    let (mut bob, _) = join(&other);
    amy.send_line("hello cluster");
    bob.expect_line_containing(&format!("{amy_name} says: hello cluster"));
}

impl Redis {
    /// Runs one command on this Redis (as its default user) and returns its reply's first line.
    fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut stream = self.connect();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.write_all(&resp(args)).expect("send to redis");
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            assert_eq!(
                stream.read(&mut byte).expect("redis reply"),
                1,
                "redis closed"
            );
            reply.push(byte[0]);
        }
        String::from_utf8_lossy(&reply).trim_end().to_owned()
    }

    /// A Redis that speaks only TLS, on its port, with a certificate for 127.0.0.1 from a CA
    /// made for the test (no system trusts it): the CA's file is what `--redis-ca` takes.
    fn start_tls() -> (Redis, TestCa) {
        let mut redis = Redis::unstarted();
        let ca = TestCa::new(&redis.dir);
        let file = |path: &PathBuf| path.to_str().unwrap().to_owned();
        redis.options = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            redis.port.to_string(),
            "--tls-cert-file".into(),
            file(&ca.cert_pem),
            "--tls-key-file".into(),
            file(&ca.key_pem),
            "--tls-ca-cert-file".into(),
            file(&ca.ca_pem),
            // Nodes show no certificate of their own: Redis checks who they are by password.
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        redis.launch();
        (redis, ca)
    }

    /// A Redis that serves only clients that give `password`.
    fn start_with_password(password: &str) -> Redis {
        let mut redis = Redis::unstarted();
        redis.options = vec!["--requirepass".into(), password.into()];
        redis.launch();
        redis
    }
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_node_cut_off_catches_up_from_the_stream_once_each() {
    let redis = Redis::start();
    // Node b logs in as its own user, with a password, so the test can cut it off alone.
    assert_eq!(
        redis.command(&["ACL", "SETUSER", "b", "on", ">secret", "~*", "&*", "+@all"]),
        "+OK"
    );
    let a = node(&redis, "a");
    let b_url = format!("redis://b:secret@127.0.0.1:{}", redis.port);
    let b = Server::V5Cluster.start(&["--redis", &b_url, "--node", "b", "--rate", "0"]);
    b.expect_log("cluster link up");
    // Bob first, so that alice's join and rename certainly reach him, and are read, before
    // the cut: the next thing he reads must be the link-down notice.
    let mut bob = join_as(&b, "bob");
    let mut alice = join_as(&a, "alice");
    bob.expect_line_containing("is now alice");
    redis.command(&["ACL", "SETUSER", "b", "off"]);
    redis.command(&["CLIENT", "KILL", "USER", "b"]);
    bob.expect_line("* server cluster link down: only users on this node hear you");
    for i in 0..3 {
        alice.send_line(&format!("while you were away {i}"));
    }
    // Heard nowhere else meanwhile: the next line bob reads comes after the link is back.
    redis.command(&["ACL", "SETUSER", "b", "on"]);
    bob.expect_line("* server cluster link up");
    for i in 0..3 {
        bob.expect_line(&format!("alice says: while you were away {i}"));
    }
    alice.send_line("welcome back");
    bob.expect_line("alice says: welcome back");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn joins_renames_me_and_leaves_are_heard_on_every_node_with_the_cluster_count() {
    let redis = Redis::start();
    let a = node(&redis, "a");
    let mut b = node(&redis, "b");
    let (mut watcher, _) = join(&b);
    let mut alice = join_as(&a, "alice");
    // Once node b has told its members about alice, it counts her.
    watcher.expect_line_containing("is now alice");
    let (mut bob, bob_name) = join(&b);
    // The watcher's own join may reach alice first: it is bob's that counts three.
    let joined = alice.expect_line_containing(&format!("* {bob_name} joined"));
    assert_eq!(joined, format!("* {bob_name} joined (3 online)"));
    bob.send_line("/nick bob");
    alice.expect_line(&format!("* {bob_name} is now bob"));
    bob.send_line("/me waves");
    alice.expect_line("* bob waves");
    b.terminate();
    bob.expect_line_containing("* server shutting down");
    alice.expect_line_containing("* bob left (");
}

/// A node named `name` on the Redis at `url`, with `more` flags, as soon as it listens.
fn node_at(url: &str, name: &str, more: &[&str]) -> Running {
    let mut args = vec!["--redis", url, "--node", name, "--rate", "0"];
    args.extend_from_slice(more);
    Server::V5Cluster.start(&args)
}

/// Two clients of `lonely`, a node that cannot reach Redis: each is told so on joining, and
/// they still hear each other.
fn expect_a_room_of_its_own(lonely: &Running) {
    let (mut alice, alice_name) = join(lonely);
    alice.expect_line(CLUSTER_LINK_DOWN);
    let (mut amy, _) = join(lonely);
    amy.expect_line(CLUSTER_LINK_DOWN);
    alice.send_line("anyone?");
    amy.expect_line_containing(&format!("{alice_name} says: anyone?"));
}

/// Alice on `a` and bob on `b` hear each other.
fn expect_chat_across(a: &Running, b: &Running) {
    let mut alice = join_as(a, "alice");
    let mut bob = join_as(b, "bob");
    alice.expect_line_containing("is now bob");
    alice.send_line("hello from a");
    bob.expect_line_containing("alice says: hello from a");
    bob.send_line("hello from b");
    alice.expect_line_containing("bob says: hello from b");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn nodes_chat_across_a_rediss_url_given_the_redis_ca() {
    let (redis, ca) = Redis::start_tls();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = ca.ca_pem.to_str().unwrap();
    let a = node_at(&url, "a", &["--redis-ca", ca]);
    let b = node_at(&url, "b", &["--redis-ca", ca]);
    a.expect_log("cluster link up");
    b.expect_log("cluster link up");
    expect_chat_across(&a, &b);
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn nodes_chat_across_a_rediss_url_marked_insecure_and_the_log_warns() {
    let (redis, _ca) = Redis::start_tls();
    let url = format!("rediss://127.0.0.1:{}/#insecure", redis.port);
    let a = node_at(&url, "a", &[]);
    let b = node_at(&url, "b", &[]);
    for node in [&a, &b] {
        let warning = node.expect_log("#insecure");
        assert!(warning.contains("not checked"), "{warning}");
        node.expect_log("cluster link up");
    }
    expect_chat_across(&a, &b);
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn an_untrusted_redis_certificate_leaves_the_node_on_its_own_and_the_log_says_why() {
    /// Long enough for several tries (the first 100 ms apart, each wait twice the last).
    const SEVERAL_TRIES: Duration = Duration::from_secs(2);
    let (redis, _ca) = Redis::start_tls();
    let lonely = node_at(&format!("rediss://127.0.0.1:{}", redis.port), "lonely", &[]);
    let why = lonely.expect_log("cannot reach Redis");
    assert!(why.contains("certificate is not trusted"), "{why}");
    expect_a_room_of_its_own(&lonely);
    std::thread::sleep(SEVERAL_TRIES);
    let said = lonely.log_lines();
    let times = said
        .iter()
        .filter(|line| line.contains("cannot reach Redis"));
    assert_eq!(times.count(), 1, "once while it keeps failing: {said:?}");
    assert!(!said.iter().any(|line| line.contains("cluster link up")));
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn nodes_chat_across_a_redis_that_wants_the_password_in_the_url() {
    let redis = Redis::start_with_password("s3cret-pass");
    let url = format!("redis://:s3cret-pass@127.0.0.1:{}", redis.port);
    let a = node_at(&url, "a", &[]);
    let b = node_at(&url, "b", &[]);
    a.expect_log("cluster link up");
    b.expect_log("cluster link up");
    expect_chat_across(&a, &b);
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_wrong_redis_password_leaves_the_node_on_its_own_and_is_never_logged() {
    const WRONG: &str = "not-the-pass-42";
    let redis = Redis::start_with_password("s3cret-pass");
    let lonely = node_at(
        &format!("redis://:{WRONG}@127.0.0.1:{}", redis.port),
        "lonely",
        &[],
    );
    let why = lonely.expect_log("cannot reach Redis");
    assert!(
        why.to_lowercase().contains("authentication failed"),
        "{why}"
    );
    expect_a_room_of_its_own(&lonely);
    let said = lonely.log_lines();
    assert!(
        !said.iter().any(|line| line.contains(WRONG)),
        "the password in the log: {said:?}"
    );
}

/// Needs no redis-server: the name is the node's own, linked or not.
#[test]
fn a_node_is_named_after_its_host_and_port_by_default() {
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    let node = Server::V5Cluster.start(&["--redis", &nobody]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("the host name");
    let (_, name) = join(&node);
    // SPEC 11: a member without a nickname is unique across the cluster, as ADDRESS@NODE.
    let expected = format!("@{}:{}", host.trim(), node.addr.port());
    assert!(
        name.ends_with(&expected),
        "{name} should end with {expected}"
    );
}

/// Needs no redis-server: each of these fails before the node reaches for Redis.
#[test]
fn redis_tls_settings_that_cannot_work_are_start_up_errors() {
    let dir = TempDir::new("redis-ca");
    let ca = TestCa::new(&dir.0);
    let missing = dir.0.join("missing.pem");
    let nobody = format!("127.0.0.1:{}", free_port());
    let tls_url = format!("rediss://:s3cret-pass@{nobody}");
    let plain_url = format!("redis://:s3cret-pass@{nobody}");
    let insecure_url = format!("{tls_url}/#insecure");
    let path = |file: &PathBuf| file.to_str().unwrap().to_owned();
    let cases = [
        (tls_url.as_str(), path(&missing), path(&missing)),
        // A key is PEM too, but no certificate: it would trust nothing.
        (tls_url.as_str(), path(&ca.key_pem), path(&ca.key_pem)),
        // A CA for a plain link protects nothing.
        (plain_url.as_str(), path(&ca.ca_pem), "rediss://".to_owned()),
        // #insecure checks nothing, so a CA beside it would be a false comfort.
        (
            insecure_url.as_str(),
            path(&ca.ca_pem),
            "#insecure".to_owned(),
        ),
    ];
    for (url, ca_file, named) in cases {
        let args = [
            "--addr",
            "127.0.0.1:0",
            "--redis",
            url,
            "--redis-ca",
            &ca_file,
        ];
        let stderr = failed_start(&Server::V5Cluster.start_expecting_failure(&args));
        assert!(stderr.contains(&named), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret-pass"), "the password: {stderr}");
    }
}

// --- A Redis that is slow (SPEC 11: the local room keeps working, nothing grows without bound)

/// v5-cluster's `REDIS_TIMEOUT`: no Redis command, the questions `/nick`, `/list` and `/pm`
/// ask included, waits longer than this for an answer.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// v5-cluster's `HEARTBEAT`: a node sends one this often, so a Redis that stops answering is
/// noticed within one heartbeat and [`REDIS_TIMEOUT`] even by a node that has nothing to say.
const HEARTBEAT: Duration = Duration::from_secs(3);

/// How long the tests' Redis sleeps: well past [`HEARTBEAT`] and [`REDIS_TIMEOUT`], the 5 s
/// within which every node has counted its link down, with time to spare for a loaded
/// machine, and far longer than any answer or local line should take.
const REDIS_SLEEP: Duration = Duration::from_secs(12);

/// A question that needs Redis is answered within [`REDIS_TIMEOUT`]; this adds room for a
/// loaded machine, and is still far shorter than [`REDIS_SLEEP`]: an answer this soon did not
/// wait for Redis to wake.
const ANSWERED_WITHIN: Duration = Duration::from_secs(5);

const _: () = assert!(
    HEARTBEAT.as_secs() + REDIS_TIMEOUT.as_secs() + ANSWERED_WITHIN.as_secs()
        < REDIS_SLEEP.as_secs()
);

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn while_redis_sleeps_the_local_room_keeps_talking_and_commands_answer_in_time() {
    let redis = Redis::start_debuggable();
    let a = node(&redis, "a");
    let mut alice = join_as(&a, "alice");
    let mut amy = join_as(&a, "amy");
    alice.expect_line_containing("is now amy");
    let asleep = redis.sleep(REDIS_SLEEP);

    // A claim Redis does not answer is refused once REDIS_TIMEOUT has passed (or at once, if
    // the node has counted the link down already): the member is not left waiting.
    let asked = Instant::now();
    alice.send_line("/nick alicia");
    let answer = alice.read_until(|line| line.starts_with("* error:") || line.contains(" is now "));
    assert_eq!(answer, CLUSTER_NICK_UNAVAILABLE);
    assert!(
        asked.elapsed() < ANSWERED_WITHIN,
        "/nick took {:?}",
        asked.elapsed()
    );
    // Redis cannot tell who is online elsewhere: the room's own list is the answer.
    let asked = Instant::now();
    let mut online = alice.online();
    online.sort();
    assert_eq!(online, ["alice", "amy"]);
    assert!(
        asked.elapsed() < ANSWERED_WITHIN,
        "/list took {:?}",
        asked.elapsed()
    );

    alice.send_line("still talking");
    amy.expect_line_containing("alice says: still talking");
    let (mut newcomer, newcomer_name) = join(&a);
    newcomer.send_line("hello, anyone?");
    amy.expect_line_containing(&format!("{newcomer_name} says: hello, anyone?"));
    assert!(
        asleep.is_asleep(),
        "all of this while Redis slept (else the test proved nothing)"
    );
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_redis_asleep_past_the_timeout_is_a_link_down_then_up_on_every_node() {
    let redis = Redis::start_debuggable();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut alice = join_as(&a, "alice");
    let mut amy = join_as(&a, "amy");
    let mut bob = join_as(&b, "bob");
    // Everything said so far has been heard: from here on each client reads exact lines.
    bob.send_line("ready");
    alice.expect_line_containing("bob says: ready");
    amy.expect_line_containing("bob says: ready");
    alice.send_line("ready");
    amy.expect_line_containing("alice says: ready");
    bob.expect_line_containing("alice says: ready");
    let asleep = redis.sleep(REDIS_SLEEP);

    // No heartbeat is answered: every node counts its link down, once.
    for client in [&mut alice, &mut amy, &mut bob] {
        client.expect_line(CLUSTER_LINK_DOWN);
    }
    // Said while the link is down: heard on this node only, even once Redis is back.
    alice.send_line("only here");
    amy.expect_line("alice says: only here");
    asleep.wait_until_awake();
    // Each read waits up to DEADLINE, longer than the longest back-off between two tries.
    for client in [&mut alice, &mut amy, &mut bob] {
        client.expect_line(CLUSTER_LINK_UP);
    }
    alice.send_line("after the sleep");
    bob.expect_line("alice says: after the sleep");
    amy.expect_line("alice says: after the sleep");
    bob.send_line("me too");
    alice.expect_line("bob says: me too");
    amy.expect_line("bob says: me too");
}

/// What v5-cluster may hold for Redis, by its named limits: the queue toward Redis
/// (`OUTGOING_MAX_BYTES`, 8 MiB) and as much again in the batch its publisher has taken, and
/// the queue from Redis (`INCOMING_MAX_BYTES`, 16 MiB).
const CLUSTER_QUEUES_KIB: u64 = (8 + 8 + 16) * 1024;

/// What v4's room may grow by, as tests/v4_limits.rs allows it: reads in flight, its bounded
/// queues and history, the allocator's slack.
const ROOM_GROWTH_KIB: u64 = 8 * 1024;

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_node_flooded_while_redis_sleeps_stays_small_says_what_it_dropped_and_serves_its_room() {
    /// What a node may grow by while Redis sleeps, whatever its members say.
    const GROWTH_MAX_KIB: u64 = CLUSTER_QUEUES_KIB + ROOM_GROWTH_KIB;
    /// Twice what the node may grow by, in short chat lines: a node that kept them for
    /// Redis would show it.
    const FLOOD_BYTES: usize = 2 * GROWTH_MAX_KIB as usize * 1024;
    /// Written at once: many short lines.
    const WRITE: usize = 64 * 1024;
    /// Twice what the queue toward Redis holds (`OUTGOING_MAX_BYTES`).
    const UNDER_WAY: usize = 16 * 1024 * 1024;
    /// The flood stops this long before Redis wakes, even short of [`FLOOD_BYTES`] on a
    /// machine too loaded to send them all: what follows the wake is another test's.
    const QUIET_BEFORE_WAKING: Duration = Duration::from_secs(3);
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let redis = Redis::start_debuggable();
    // Warnings only: at `info` the node would log every line of the flood.
    let a = Server::V5Cluster.start_unthrottled_quietly(&["--redis", &redis.url(), "--node", "a"]);
    let b = node(&redis, "b");
    let (mut flooder, flooder_name) = join(&a);
    let (mut bob, _) = join(&b);
    // Node b lists the flooder once node a's link is up and has written its presence.
    eventually(DEADLINE, "node a linked", || {
        bob.online().contains(&flooder_name)
    });
    // Gone until the flood is over, so that no reader of node b falls behind it.
    drop(bob);
    let rss_before = a.rss_kib();
    let asleep = redis.sleep(REDIS_SLEEP);
    let flood_until = Instant::now() + REDIS_SLEEP - QUIET_BEFORE_WAKING;

    let mut writer = flooder.stream().try_clone().expect("clone stream");
    let written = Arc::new(AtomicUsize::new(0));
    let flooding = {
        let written = Arc::clone(&written);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut flood = String::new();
            let mut i = 0;
            while flood.len() < WRITE {
                flood.push_str(&format!("flood {i:08} while redis sleeps\n"));
                i += 1;
            }
            while written.load(Ordering::Relaxed) < FLOOD_BYTES && Instant::now() < flood_until {
                writer.write_all(flood.as_bytes()).expect("flood");
                written.fetch_add(flood.len(), Ordering::Relaxed);
            }
        })
    };
    // Once more than the queue toward Redis holds has been sent, a newcomer is still welcomed
    // and heard.
    eventually(DEADLINE, "flood under way", || {
        written.load(Ordering::Relaxed) > UNDER_WAY
    });
    let (mut newcomer, newcomer_name) = join(&a);
    newcomer.send_line("am I heard?");
    flooder.expect_line_containing(&format!("{newcomer_name} says: am I heard?"));
    drop(newcomer);
    flooding.join().expect("flooder");
    // Its answer comes once every line before it was read.
    flooder.send_line("/nick");
    flooder.expect_line_containing("* you are ");
    let grew = a.peak_rss_kib().saturating_sub(rss_before);
    let flooded = written.load(Ordering::Relaxed);
    assert!(
        grew < GROWTH_MAX_KIB,
        "node a grew by {grew} KiB with {flooded} bytes of lines while Redis slept"
    );
    // From the first event dropped, then now and then.
    let dropped = a.expect_log("Redis is not keeping up");
    assert!(
        dropped
            .ends_with("Redis is not keeping up: 1 event dropped so far, heard on this node only"),
        "{dropped}"
    );

    asleep.wait_until_awake();
    flooder.expect_line_containing(CLUSTER_LINK_UP);
    let (mut bob, _) = join(&b);
    flooder.send_line("after the flood");
    bob.expect_line_containing(&format!("{flooder_name} says: after the flood"));
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn a_nickname_refused_while_redis_slept_is_free_once_it_wakes() {
    let redis = Redis::start_debuggable();
    let a = node(&redis, "a");
    let b = node(&redis, "b");
    let mut alice = join_as(&a, "alice");
    let mut bob = join_as(&b, "bob");
    alice.expect_line_containing("is now bob");
    let asleep = redis.sleep(REDIS_SLEEP);
    // The claim reaches Redis, which runs it when it wakes: a claim for nobody, unless the
    // node takes it back.
    alice.send_line("/nick alicia");
    let answer = alice.read_until(|line| line.starts_with("* error:") || line.contains(" is now "));
    assert_eq!(answer, CLUSTER_NICK_UNAVAILABLE);
    asleep.wait_until_awake();
    alice.expect_line_containing(CLUSTER_LINK_UP);
    bob.expect_line_containing(CLUSTER_LINK_UP);
    // Node a publishes only once it has set its presence and claims right on the new link.
    alice.send_line("back");
    bob.expect_line("alice says: back");
    bob.send_line("/nick alicia");
    bob.expect_line("* bob is now alicia");
}

#[test]
#[ignore = "needs redis-server: apt-get install redis-server"]
fn sigterm_while_redis_sleeps_says_goodbye_and_exits_0_within_2_seconds() {
    /// SPEC 2: what a shutdown may take.
    const SHUTDOWN: Duration = Duration::from_secs(2);
    let redis = Redis::start_debuggable();
    let mut a = node(&redis, "a");
    let mut alice = join_as(&a, "alice");
    let mut amy = join_as(&a, "amy");
    alice.expect_line_containing("is now amy");
    let asleep = redis.sleep(REDIS_SLEEP);
    // Alice waits for a claim Redis will not answer; amy's line is waiting to be published.
    alice.send_line("/nick alicia");
    amy.send_line("bye");
    alice.expect_line_containing("amy says: bye");
    let asked = Instant::now();
    let status = a.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < SHUTDOWN, "took {took:?} to exit");
    for client in [&mut alice, &mut amy] {
        let last = client.read_to_close();
        assert_eq!(
            last.last().map(String::as_str),
            Some("* server shutting down"),
            "{last:?}"
        );
    }
    assert!(asleep.is_asleep(), "all of this while Redis slept");
}

impl Redis {
    /// A Redis that takes `DEBUG` commands from this machine: 7.0 refuses them unless told.
    fn start_debuggable() -> Redis {
        let mut redis = Redis::unstarted();
        redis.options = vec!["--enable-debug-command".into(), "local".into()];
        redis.launch();
        redis
    }

    /// Makes this Redis answer nobody, on any connection, for `how_long` (`DEBUG SLEEP`: it is
    /// busy, not gone: the kernel still accepts connections, and what is sent waits), and
    /// returns once it has gone quiet.
    fn sleep(&self, how_long: Duration) -> Asleep {
        use std::io::{Read, Write};
        /// A PING to an idle Redis on loopback is answered within a millisecond: one sent
        /// after the `DEBUG SLEEP` and unanswered this long shows the sleep has begun.
        const QUIET: Duration = Duration::from_millis(500);
        let sleeping = self.connect();
        let seconds = how_long.as_secs_f64().to_string();
        (&sleeping)
            .write_all(&resp(&["DEBUG", "SLEEP", &seconds]))
            .expect("send to redis");
        let asked = Instant::now();
        loop {
            let probe = self.connect();
            probe.set_read_timeout(Some(QUIET)).unwrap();
            (&probe).write_all(&resp(&["PING"])).expect("send to redis");
            match (&probe).read(&mut [0u8; 1]) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => break,
                // Answered before the sleep began: the next PING comes after it.
                _ => assert!(asked.elapsed() < DEADLINE, "Redis never went to sleep"),
            }
        }
        Asleep {
            reply: sleeping,
            wakes_by: asked + how_long + DEADLINE,
        }
    }

    /// A connection to this Redis.
    fn connect(&self) -> std::net::TcpStream {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("redis")
    }
}

/// A Redis put to sleep by [`Redis::sleep`]; it answers the `DEBUG SLEEP` when it wakes.
struct Asleep {
    reply: std::net::TcpStream,
    /// Past this, something is wrong: it should have woken long before.
    wakes_by: Instant,
}

impl Asleep {
    /// True while Redis sleeps (it has not answered yet).
    fn is_asleep(&self) -> bool {
        self.reply.set_nonblocking(true).unwrap();
        let looked = self.reply.peek(&mut [0u8; 1]);
        self.reply.set_nonblocking(false).unwrap();
        matches!(looked, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Returns once Redis has woken.
    fn wait_until_awake(self) {
        use std::io::Read;
        let left = self.wakes_by.saturating_duration_since(Instant::now());
        self.reply
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut reply = [0u8; 5];
        (&self.reply)
            .read_exact(&mut reply)
            .expect("Redis woke in time");
        assert_eq!(&reply, b"+OK\r\n");
    }
}

/// `args` as a RESP command, the way Redis reads them.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    request.into_bytes()
}

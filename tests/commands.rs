//! v4's chat features (SPEC section 5): the welcome and history, nicknames, commands, the rate
//! limit, the idle timeout and the graceful shutdown.
//!
//! Every client here first waits for its welcome, which proves the server has put it in the
//! room, and everyone already there reads the join notice; so each test can then check lines
//! exactly, in order. "Nothing else arrived" is proved without waiting for silence: someone
//! says a marker line, and it must be the very next line the others read.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use sock_chat_tests::{chat_line, Client, Running, Server};

/// Most tests send more lines, faster, than a person types; the rate limit has tests of its own.
const UNTHROTTLED: [&str; 2] = ["--rate", "0"];

/// A chat line nobody else sends: the one that must come next when nothing else should.
const MARKER: &str = "marker: nothing came before this";

/// `v4-async`'s default `--rate` is 10 lines a second with bursts of twice that.
const DEFAULT_BURST: usize = 20;

/// Lines a flooder sends in one write in the rate-limit tests: ten times the burst.
const FLOOD_LINES: usize = 200;

/// `* welcome <ADDR>, N online - type /help for commands`.
fn welcome(addr: SocketAddr, online: usize) -> String {
    format!("* welcome {addr}, {online} online - type /help for commands")
}

/// `* <NAME> joined (N online)`.
fn joined(name: impl std::fmt::Display, online: usize) -> String {
    format!("* {name} joined ({online} online)")
}

/// `* <OLD> is now <NEW>`.
fn renamed(old: impl std::fmt::Display, new: &str) -> String {
    format!("* {old} is now {new}")
}

/// Connects `N` clients one after the other. Each returns once it has read its welcome, and
/// the clients already in the room have read its join notice, so nothing is left unread.
fn room<const N: usize>(server: &Running) -> [Client; N] {
    let mut members: Vec<Client> = Vec::with_capacity(N);
    for _ in 0..N {
        let mut newcomer = server.connect();
        let online = members.len() + 1;
        newcomer.expect_line(&welcome(newcomer.addr(), online));
        for member in &mut members {
            member.expect_line(&joined(newcomer.addr(), online));
        }
        members.push(newcomer);
    }
    members.try_into().expect("N members")
}

/// `who` takes the nickname `new`; it and everyone in `others` read the rename notice.
fn take_nick(who: &mut Client, others: &mut [&mut Client], new: &str) {
    who.send_line("/nick");
    let answer = who.read_line();
    let old = answer
        .strip_prefix("* you are ")
        .unwrap_or_else(|| panic!("`/nick` alone answered {answer:?}"))
        .to_owned();
    who.send_line(&format!("/nick {new}"));
    let notice = renamed(&old, new);
    who.expect_line(&notice);
    for other in others {
        other.expect_line(&notice);
    }
}

/// Proves that `listeners` have nothing unread: `speaker` says [`MARKER`], and it is the very
/// next line each of them reads.
fn expect_nothing_more(speaker: &mut Client, listeners: &mut [&mut Client]) {
    speaker.send_line(MARKER);
    for listener in listeners {
        let line = listener.read_line();
        assert!(
            line.ends_with(&format!(" says: {MARKER}")),
            "expected the marker line next, got {line:?}"
        );
    }
}

/// `count` chat lines (`flood 0`, `flood 1`, ...) as one write.
fn flood(count: usize) -> String {
    (0..count).map(|i| format!("flood {i}\n")).collect()
}

// --- welcome and history ---

#[test]
fn welcome_names_the_newcomer_and_counts_it() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let mut first = server.connect();
    first.expect_line(&welcome(first.addr(), 1));
    let mut second = server.connect();
    second.expect_line(&welcome(second.addr(), 2));
    first.expect_line(&joined(second.addr(), 2));
}

#[test]
fn newcomer_gets_the_last_history_lines_oldest_first_as_relayed() {
    let server = Server::V4Async.start(&["--history", "3", "--rate", "0"]);
    let [mut alice, mut witness] = room(&server);
    let mut relayed = Vec::new();
    for i in 1..=5 {
        if i == 4 {
            // History keeps each line as it was relayed: under the name it was said with.
            take_nick(&mut alice, &mut [&mut witness], "alice");
        }
        alice.send_line(&format!("line {i}"));
        relayed.push(witness.read_line());
    }
    assert_eq!(relayed[2], chat_line(alice.addr(), "line 3"));
    assert_eq!(relayed[4], "alice says: line 5");

    let mut newcomer = server.connect();
    newcomer.expect_line(&welcome(newcomer.addr(), 3));
    for line in &relayed[2..] {
        newcomer.expect_line(line);
    }
    // Exactly three: the next line is one said after the newcomer arrived.
    expect_nothing_more(&mut alice, &mut [&mut newcomer]);
}

#[test]
fn history_zero_replays_nothing() {
    let server = Server::V4Async.start(&["--history", "0", "--rate", "0"]);
    let [mut talker, mut witness] = room(&server);
    talker.send_line("before you came");
    witness.expect_line(&chat_line(talker.addr(), "before you came"));

    let mut newcomer = server.connect();
    newcomer.expect_line(&welcome(newcomer.addr(), 3));
    expect_nothing_more(&mut talker, &mut [&mut newcomer]);
}

#[test]
fn a_history_heavier_than_a_queue_replays_its_latest_lines_and_keeps_the_newcomer() {
    // Two thousand lines of a thousand bytes: far more than a newcomer's queue holds.
    newcomer_gets_the_latest_history(&["--history", "2000"], 1000, 2000);
}

#[test]
fn the_default_history_of_the_longest_lines_replays_and_keeps_the_newcomer() {
    // Twenty lines of 64 KiB: the default history, at the longest --max-line allows here.
    newcomer_gets_the_latest_history(&["--max-line", "65536"], 65_536, 20);
}

/// A talker says `count` lines of `len` bytes under `args`; a newcomer then gets its welcome,
/// some of the most recent of those lines, oldest first and ending with the last one, and
/// stays connected to hear what is said next.
fn newcomer_gets_the_latest_history(args: &[&str], len: usize, count: usize) {
    let mut all = Vec::from(args);
    all.extend(UNTHROTTLED);
    let server = Server::V4Async.start(&all);
    let [mut talker, mut witness] = room(&server);
    let mut relayed = Vec::with_capacity(count);
    for i in 0..count {
        let numbered = format!("{i:06} ");
        talker.send_line(&format!("{numbered}{}", "x".repeat(len - numbered.len())));
        relayed.push(witness.read_line());
    }

    let mut newcomer = server.connect();
    newcomer.expect_line(&welcome(newcomer.addr(), 3));
    for member in [&mut talker, &mut witness] {
        member.expect_line(&joined(newcomer.addr(), 3));
    }
    talker.send_line(MARKER);
    let marker = chat_line(talker.addr(), MARKER);
    let mut replayed = Vec::new();
    loop {
        let line = newcomer.read_line();
        if line == marker {
            break;
        }
        replayed.push(line);
    }
    assert!(!replayed.is_empty(), "the newcomer got no history at all");
    assert!(
        relayed.ends_with(&replayed),
        "the replay of {} lines is not the latest lines in order; it starts {:.40?}",
        replayed.len(),
        replayed[0]
    );
}

// --- /nick ---

#[test]
fn nick_alone_tells_the_client_its_name() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client] = room(&server);
    client.send_line("/nick");
    client.expect_line(&format!("* you are {}", client.addr()));
    client.send_line("/nick alice");
    client.expect_line(&renamed(client.addr(), "alice"));
    client.send_line("/nick");
    client.expect_line("* you are alice");
}

#[test]
fn valid_nicks_are_announced_to_everyone_and_used_in_chat() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut renamer, mut other] = room(&server);
    let mut old = renamer.addr().to_string();
    // One character, sixteen characters, and every kind of character allowed.
    for new in ["x", "sixteen_chars_ok", "A_b-9", "alice"] {
        renamer.send_line(&format!("/nick {new}"));
        other.expect_line(&renamed(&old, new));
        renamer.expect_line(&renamed(&old, new));
        old = new.to_owned();
    }
    renamer.send_line("hi");
    other.expect_line("alice says: hi");
}

#[test]
fn invalid_nicks_are_refused_with_a_reason_and_the_name_kept() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client, mut other] = room(&server);
    for bad in [
        "seventeen_chars_x",
        "two words",
        // A name that looks like an address could impersonate an unnamed client.
        "127.0.0.1:5555",
        "\u{e9}mile",
    ] {
        client.send_line(&format!("/nick {bad}"));
        let refusal = client.read_line();
        assert!(
            refusal.starts_with("* error: ") && refusal.len() > "* error: ".len(),
            "/nick {bad:?} answered {refusal:?}"
        );
        client.send_line("/nick");
        client.expect_line(&format!("* you are {}", client.addr()));
    }
    // Nobody was told of a rename, and chat still goes out under the address.
    client.send_line("still me");
    other.expect_line(&chat_line(client.addr(), "still me"));
}

#[test]
fn a_nick_taken_in_any_case_is_refused() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut alice, mut rival] = room(&server);
    take_nick(&mut alice, &mut [&mut rival], "alice");
    for attempt in ["alice", "ALICE", "Alice"] {
        rival.send_line(&format!("/nick {attempt}"));
        rival.expect_line(&format!("* error: nickname {attempt} is taken"));
    }
    rival.send_line("/nick");
    rival.expect_line(&format!("* you are {}", rival.addr()));
    expect_nothing_more(&mut rival, &mut [&mut alice]);
}

#[test]
fn two_clients_racing_for_one_nick_exactly_one_wins() {
    const ROUNDS: usize = 20;
    let server = Server::V4Async.start(&UNTHROTTLED);
    let mut racers = room::<2>(&server);
    let mut names = racers.each_ref().map(|racer| racer.addr().to_string());
    for racer in &racers {
        // Each `/nick` leaves at once, so the two really arrive together.
        racer.stream().set_nodelay(true).expect("TCP_NODELAY");
    }
    for round in 0..ROUNDS {
        // Odd rounds spell the name in different cases: uniqueness ignores case.
        let wanted = format!("racer{round}");
        let attempts = if round % 2 == 0 {
            [wanted.clone(), wanted.clone()]
        } else {
            [wanted.clone(), wanted.to_ascii_uppercase()]
        };
        let start = Barrier::new(racers.len());
        thread::scope(|scope| {
            for (racer, attempt) in racers.iter_mut().zip(&attempts) {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    racer.send_line(&format!("/nick {attempt}"));
                });
            }
        });

        // Both hear one rename; the loser then hears why it lost.
        let heard = racers.each_mut().map(|racer| racer.read_line());
        assert_eq!(
            heard[0], heard[1],
            "round {round}: the two heard different renames"
        );
        let winner = (0..2)
            .find(|&i| heard[0] == renamed(&names[i], &attempts[i]))
            .unwrap_or_else(|| panic!("round {round}: not a rename of a racer: {:?}", heard[0]));
        let loser = 1 - winner;
        racers[loser].expect_line(&format!("* error: nickname {} is taken", attempts[loser]));
        names[winner].clone_from(&attempts[winner]);

        // And nothing else: no second rename went out.
        for (racer, name) in racers.iter_mut().zip(&names) {
            racer.send_line("/nick");
            racer.expect_line(&format!("* you are {name}"));
        }
    }
}

#[test]
fn the_words_that_start_notices_cannot_be_taken_as_nicknames() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client, mut other] = room(&server);
    for reserved in [
        "server", "SERVER", "Server", "error", "welcome", "online", "you",
    ] {
        client.send_line(&format!("/nick {reserved}"));
        let refusal = client.read_line();
        assert!(
            refusal.starts_with("* error: ") && refusal.contains(reserved),
            "/nick {reserved} answered {refusal:?}"
        );
    }
    client.send_line("/nick");
    client.expect_line(&format!("* you are {}", client.addr()));
    // Nobody heard of a rename.
    expect_nothing_more(&mut client, &mut [&mut other]);
}

// --- /list, /pm, /me, /quit, /help, unknown commands, // ---

#[test]
fn list_names_every_member_in_the_order_they_joined() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut first, mut second, mut third] = room(&server);
    take_nick(&mut second, &mut [&mut first, &mut third], "bob");
    first.send_line("/list");
    first.expect_line(&format!(
        "* online (3): {}, bob, {}",
        first.addr(),
        third.addr()
    ));

    third.send_line("/quit");
    third.read_to_close();
    first.expect_line(&format!("* {} left (2 online)", third.addr()));
    second.expect_line(&format!("* {} left (2 online)", third.addr()));
    second.send_line("/list");
    second.expect_line(&format!("* online (2): {}, bob", first.addr()));
    // The answer went to the one who asked.
    expect_nothing_more(&mut second, &mut [&mut first]);
}

#[test]
fn a_long_list_comes_in_short_lines_that_name_every_member_once() {
    const MEMBERS: usize = 300;
    /// What a client may expect of a notice, far under any --max-line.
    const LINE_MAX: usize = 512;
    // Joins unannounced, so nobody has 300 notices to read first.
    let server = Server::V4Async.start(&["--max-clients", "400", "--announce-limit", "0"]);
    let members: Vec<Client> = (0..MEMBERS)
        .map(|i| {
            let mut member = server.connect();
            member.expect_line(&welcome(member.addr(), i + 1));
            member
        })
        .collect();
    let mut asker = members.into_iter();
    let mut first = asker.next().expect("a member");
    let others: Vec<Client> = asker.collect();

    first.send_line("/list");
    let head = format!("* online ({MEMBERS}): ");
    let mut listed = Vec::new();
    while listed.len() < MEMBERS {
        let line = first.read_line();
        assert!(
            line.len() <= LINE_MAX,
            "a /list line of {} bytes",
            line.len()
        );
        let names = line
            .strip_prefix(&head)
            .unwrap_or_else(|| panic!("a /list line that does not start {head:?}: {line:?}"));
        listed.extend(names.split(", ").map(str::to_owned));
    }
    let expected: Vec<String> = std::iter::once(&first)
        .chain(&others)
        .map(|member| member.addr().to_string())
        .collect();
    assert_eq!(
        listed, expected,
        "every member once, in the order they joined"
    );
    // And the answer is over: the next line is the answer to the next command.
    first.send_line("/nick");
    first.expect_line(&format!("* you are {}", first.addr()));
}

#[test]
fn pm_reaches_only_its_target_whose_name_ignores_case() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut alice, mut bob, mut bystander] = room(&server);
    take_nick(&mut alice, &mut [&mut bob, &mut bystander], "alice");
    take_nick(&mut bob, &mut [&mut alice, &mut bystander], "bob");
    alice.send_line("/pm BOB psst");
    bob.expect_line("alice (private): psst");
    expect_nothing_more(&mut bob, &mut [&mut alice, &mut bystander]);
}

#[test]
fn pm_to_an_unknown_name_tells_the_sender() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut sender, mut other] = room(&server);
    sender.send_line("/pm nobody are you there");
    sender.expect_line("* error: no such user nobody");
    expect_nothing_more(&mut sender, &mut [&mut other]);
}

#[test]
fn me_is_relayed_to_the_others_as_an_action() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut alice, mut other] = room(&server);
    take_nick(&mut alice, &mut [&mut other], "alice");
    alice.send_line("/me waves");
    other.expect_line("* alice waves");
    expect_nothing_more(&mut other, &mut [&mut alice]);
}

#[test]
fn me_that_would_read_as_a_notice_is_refused_and_reaches_nobody() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut alice, mut other] = room(&server);
    take_nick(&mut alice, &mut [&mut other], "alice");
    for forgery in [
        "left (1 online)",
        "joined (3 online)",
        "is now carol",
        "LEFT (1 online)",
        "is   now carol",
        // Invisible characters would make these read exactly as the notices above.
        "left\u{200b} (1 online)",
        "\u{2060}joined (3 online)",
        "is\u{feff} now carol",
    ] {
        alice.send_line(&format!("/me {forgery}"));
        let refusal = alice.read_line();
        assert!(
            refusal.starts_with("* error: "),
            "/me {forgery:?} answered {refusal:?}"
        );
    }
    // A /me that merely starts like one is an action as usual.
    alice.send_line("/me leftover pizza");
    other.expect_line("* alice leftover pizza");

    // None of the refused ones reached the history either.
    let mut newcomer = server.connect();
    newcomer.expect_line(&welcome(newcomer.addr(), 3));
    newcomer.expect_line("* alice leftover pizza");
    for member in [&mut alice, &mut other] {
        member.expect_line(&joined(newcomer.addr(), 3));
    }
    expect_nothing_more(&mut other, &mut [&mut newcomer, &mut alice]);
}

#[test]
fn quit_closes_the_connection_and_the_others_hear_the_reason() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut alice, mut bob, mut stayer] = room(&server);
    take_nick(&mut alice, &mut [&mut bob, &mut stayer], "alice");
    take_nick(&mut bob, &mut [&mut alice, &mut stayer], "bob");

    alice.send_line("/quit off to lunch");
    alice.read_to_close();
    let left = bob.read_line();
    assert!(
        left.starts_with("* alice left (2 online)") && left.contains("off to lunch"),
        "bob heard {left:?}"
    );
    stayer.expect_line(&left);

    bob.send_line("/quit");
    bob.read_to_close();
    stayer.expect_line("* bob left (1 online)");
}

#[test]
fn help_lists_every_command() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client, mut other] = room(&server);
    client.send_line("/help");
    // `/nick` alone answers one known line: everything before it is the help.
    client.send_line("/nick");
    let you_are = format!("* you are {}", client.addr());
    let mut help = Vec::new();
    loop {
        let line = client.read_line();
        if line == you_are {
            break;
        }
        help.push(line);
    }
    assert!(!help.is_empty(), "/help answered nothing");
    assert!(
        help.iter().all(|line| line.starts_with("* ")),
        "help lines are notices: {help:?}"
    );
    let text = help.join("\n");
    for command in ["/nick", "/list", "/pm", "/me", "/quit", "/help"] {
        assert!(
            text.contains(command),
            "/help does not mention {command}: {help:?}"
        );
    }
    expect_nothing_more(&mut client, &mut [&mut other]);
}

#[test]
fn unknown_command_gets_an_error_pointing_to_help() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client, mut other] = room(&server);
    client.send_line("/dance wildly");
    client.expect_line("* error: unknown command /dance (try /help)");
    expect_nothing_more(&mut client, &mut [&mut other]);
}

#[test]
fn double_slash_sends_chat_text_starting_with_a_slash() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut client, mut other] = room(&server);
    client.send_line("//nick is not a command here");
    other.expect_line(&chat_line(client.addr(), "/nick is not a command here"));
    expect_nothing_more(&mut other, &mut [&mut client]);
}

// --- rate limit ---

#[test]
fn a_flood_is_cut_to_the_burst_with_one_slow_down_notice() {
    let server = Server::V4Async.start(&[]);
    let [mut flooder, mut listener, mut bystander] = room(&server);
    flooder.send(flood(FLOOD_LINES).as_bytes());

    // A full bucket lets the first burst through, in order.
    for i in 0..DEFAULT_BURST {
        listener.expect_line(&chat_line(flooder.addr(), &format!("flood {i}")));
    }
    flooder.expect_line("* error: slow down");

    // Tokens come back at 10 a second, so a line or two more may pass while the server works
    // through the flood; the bystander's marker ends the count.
    bystander.send_line(MARKER);
    let marker = chat_line(bystander.addr(), MARKER);
    let flooded = format!("{} says: flood ", flooder.addr());
    let mut passed = DEFAULT_BURST;
    loop {
        let line = listener.read_line();
        if line == marker {
            break;
        }
        assert!(line.starts_with(&flooded), "unexpected {line:?}");
        passed += 1;
    }
    assert!(
        (DEFAULT_BURST..=DEFAULT_BURST + 2).contains(&passed),
        "{passed} of {FLOOD_LINES} flood lines passed; expected the burst of {DEFAULT_BURST}"
    );
    // One notice for the whole flood: the next thing the flooder hears is the marker.
    flooder.expect_line(&marker);
}

#[test]
fn rate_zero_lets_a_flood_through() {
    let server = Server::V4Async.start(&UNTHROTTLED);
    let [mut flooder, mut listener] = room(&server);
    flooder.send(flood(FLOOD_LINES).as_bytes());
    for i in 0..FLOOD_LINES {
        listener.expect_line(&chat_line(flooder.addr(), &format!("flood {i}")));
    }
    expect_nothing_more(&mut listener, &mut [&mut flooder]);
}

#[test]
fn commands_count_toward_the_rate_limit() {
    // One line a second, bursts of two: the server would have to stall a whole second for
    // a token to come back during this test.
    let server = Server::V4Async.start(&["--rate", "1"]);
    let [mut sender, mut listener, mut bystander] = room(&server);
    sender.send(b"/nick\n/list\nthis line is over the limit\n");
    sender.expect_line(&format!("* you are {}", sender.addr()));
    sender.expect_line(&format!(
        "* online (3): {}, {}, {}",
        sender.addr(),
        listener.addr(),
        bystander.addr()
    ));
    sender.expect_line("* error: slow down");
    expect_nothing_more(&mut bystander, &mut [&mut listener, &mut sender]);
}

// --- idle timeout ---

#[test]
fn idle_timeout_disconnects_a_silent_client_but_not_a_talking_one() {
    /// How often the talker speaks: well inside the one-second timeout.
    const TALK_EVERY: Duration = Duration::from_millis(250);
    /// How long the talker keeps it up: past the moment the silent one is cut off.
    const TALKS: u32 = 6;
    let idle_timeout = Duration::from_secs(1);

    let server = Server::V4Async.start(&["--idle-timeout", "1", "--rate", "0"]);
    // The server starts its clock for the silent client after this, when it accepts it.
    let began = Instant::now();
    let [mut silent, talker] = room(&server);
    let silent_name = silent.addr();
    let talking = thread::spawn(move || {
        let mut talker = talker;
        for _ in 0..TALKS {
            // Pacing a person who types, not waiting for the server.
            thread::sleep(TALK_EVERY);
            talker.send_line("still here");
        }
        talker
    });

    let last_lines = silent.read_to_close();
    let silent_for = began.elapsed();
    // The talker's lines reach the silent client too (listening is not talking); among them
    // comes the notice that says why the connection closed.
    assert!(
        last_lines
            .iter()
            .any(|line| line.starts_with("* error: ") && line.contains("idle")),
        "no idle notice before the close; the silent client read {last_lines:?}"
    );
    assert!(
        silent_for >= idle_timeout,
        "cut off after {silent_for:?}, before the timeout"
    );

    let mut talker = talking.join().expect("talker thread");
    talker.expect_line(&format!("* {silent_name} left (1 online)"));
    talker.send_line("/nick");
    talker.expect_line(&format!("* you are {}", talker.addr()));
}

#[test]
fn a_partial_line_does_not_keep_a_client_alive() {
    idle_despite(b"a");
}

#[test]
fn blank_lines_do_not_keep_a_client_alive() {
    idle_despite(b" \t\r\n");
}

#[test]
fn telnet_commands_do_not_keep_a_client_alive() {
    // IAC NOP, as telnet sends it to keep a connection open.
    idle_despite(b"\xff\xf1");
}

/// With `--idle-timeout 1`, a client that sends `noise` every 300 ms, but never a line with
/// something in it, is disconnected as idle all the same.
fn idle_despite(noise: &'static [u8]) {
    /// Well inside the one-second timeout: noise that counted would keep the client forever.
    const NOISE_EVERY: Duration = Duration::from_millis(300);
    let server = Server::V4Async.start(&["--idle-timeout", "1", "--rate", "0"]);
    let [mut idler] = room(&server);
    let mut noisy = idler.stream().try_clone().expect("clone the stream");
    // Pacing a client that keeps up appearances, not waiting for the server: it stops once
    // the server has closed the connection (or the test has ended).
    thread::spawn(move || loop {
        thread::sleep(NOISE_EVERY);
        if noisy.write_all(noise).is_err() {
            break;
        }
    });
    let last_lines = idler.read_to_close();
    assert!(
        last_lines
            .iter()
            .any(|line| line == "* error: idle for 1 s, disconnected"),
        "no idle notice before the close; the client read {last_lines:?}"
    );
}

#[test]
fn a_line_dropped_by_the_rate_limit_still_counts_as_speaking() {
    /// Well inside the timeout below.
    const SPEAK_EVERY: Duration = Duration::from_millis(300);
    /// Long enough for three warnings, which come at least a second apart.
    const SPEAK_FOR: Duration = Duration::from_secs(4);
    /// The server warns at most once a second: a third warning comes two seconds or more
    /// after the first dropped line, so after the timeout had the dropped lines not counted.
    const WARNINGS: usize = 3;
    // A line every 10 s with bursts of one: after the first, every line here is dropped.
    let server = Server::V4Async.start(&["--idle-timeout", "2", "--rate", "0.1"]);
    let [mut speaker] = room(&server);
    let began = Instant::now();
    while began.elapsed() < SPEAK_FOR {
        speaker.send_line("said, though maybe dropped");
        thread::sleep(SPEAK_EVERY);
    }
    for _ in 0..WARNINGS {
        speaker.expect_line("* error: slow down");
    }
}

// --- shutdown ---

#[test]
fn sigterm_says_goodbye_to_every_client_and_exits_0_within_2_seconds() {
    let mut server = Server::V4Async.start(&UNTHROTTLED);
    let [mut first, mut second] = room(&server);
    let asked = Instant::now();
    let status = server.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(2), "took {took:?} to exit");
    for client in [&mut first, &mut second] {
        assert_eq!(client.read_to_close(), ["* server shutting down"]);
    }
}

#[test]
fn sighup_shuts_down_like_sigterm() {
    let mut server = Server::V4Async.start(&UNTHROTTLED);
    let [mut first, mut second] = room(&server);
    let asked = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let status = server.wait_exit();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(2), "took {took:?} to exit");
    for client in [&mut first, &mut second] {
        assert_eq!(client.read_to_close(), ["* server shutting down"]);
    }
}

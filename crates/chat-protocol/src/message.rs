//! The exact text of everything a server sends, written once.
//!
//! Two kinds of line go to a client: chat lines (`alice says: hi`) and notices, which start with
//! `* ` and whose first word says what they are (`* error: ...`, `* bob joined (3 online)`). The
//! functions here return a line without its ending; [`CRLF`] is added on the wire, because that
//! is what telnet expects.

use std::fmt::Write as _;

use crate::command::{BadNick, NICK_MAX};

/// Every server line ends with this.
pub const CRLF: &str = "\r\n";

/// `alice says: hi`: how a line from `name` reaches the others (v1 and v2 echo it to the sender).
pub fn chat_line(name: &str, text: &str) -> String {
    format!("{name}{SAYS}{text}")
}

/// What stands between a chat line's name and its text, for both ways of building one.
const SAYS: &str = " says: ";

/// Appends `name says: TEXT\r\n` to `out`, sanitising `raw` on the way, and says whether the
/// line had anything left to say. The relay path of the servers formats a whole read's worth of
/// lines into one buffer with this: one allocation per chunk, not one per line.
pub fn push_chat_line(out: &mut String, name: &str, raw: &[u8]) -> bool {
    let start = out.len();
    out.push_str(name);
    out.push_str(SAYS);
    if crate::sanitize::sanitize_into(raw, out) {
        out.push_str(CRLF);
        true
    } else {
        out.truncate(start);
        false
    }
}

/// `* 127.0.0.1:52344 joined (3 online)`.
pub fn joined(name: &str, online: usize) -> String {
    format!("* {name} joined ({online} online)")
}

/// `* alice left (2 online)`, or with the reason given to `/quit`:
/// `* alice left (2 online): off to lunch`.
pub fn left(name: &str, online: usize, reason: Option<&str>) -> String {
    let mut line = format!("* {name} left ({online} online)");
    if let Some(reason) = reason {
        let _ = write!(line, ": {reason}");
    }
    line
}

/// `* welcome 127.0.0.1:52344, 3 online - type /help for commands`: v4's first line to a client.
pub fn welcome(name: &str, online: usize) -> String {
    format!("* welcome {name}, {online} online - type /help for commands")
}

/// `* server full (1024 clients)`: sent to a connection beyond `--max-clients`, then closed.
pub fn server_full(max_clients: usize) -> String {
    format!("* server full ({max_clients} clients)")
}

/// `* error: line too long (max 1024 bytes)`: the line was dropped, the connection stays.
pub fn line_too_long(max_line: usize) -> String {
    format!("* error: line too long (max {max_line} bytes)")
}

/// The last thing a client that stopped reading is sent, if its socket still takes it.
pub const TOO_SLOW: &str = "* error: too slow, disconnected";

/// Sent to every client when the server is asked to stop.
pub const SHUTTING_DOWN: &str = "* server shutting down";

/// v5-cluster: this node lost its link to the rest of the cluster (SPEC 11).
pub const CLUSTER_LINK_DOWN: &str = "* server cluster link down: only users on this node hear you";

/// v5-cluster: the link is back (SPEC 11).
pub const CLUSTER_LINK_UP: &str = "* server cluster link up";

/// v5-cluster: a nickname cannot be claimed across the cluster while its link is down.
pub const CLUSTER_NICK_UNAVAILABLE: &str =
    "* error: nicknames are claimed across the cluster, and its link is down: try again soon";

/// `* alice is now bob`: everyone, the renamed client included, sees a rename.
pub fn renamed(old: &str, new: &str) -> String {
    format!("* {old} is now {new}")
}

/// `* you are alice`: the answer to `/nick` alone.
pub fn you_are(name: &str) -> String {
    format!("* you are {name}")
}

/// Longest line of a `/list` answer, in bytes: far under any `--max-line` a client expects,
/// and under the 1024 of the original protocol.
pub const ONLINE_LINE_MAX: usize = 512;

/// `* online (3): alice, bob, 127.0.0.1:52344`: the answer to `/list`. A long list is split
/// into several lines of at most [`ONLINE_LINE_MAX`] bytes, each starting `* online (N): `
/// and naming the next members, so a reader collects lines until it has N names.
pub fn online_list<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> Vec<String> {
    let head = format!("* online ({}): ", names.len());
    let mut lines = Vec::new();
    let mut line = head.clone();
    for name in names {
        let fresh = line.len() == head.len();
        if !fresh && line.len() + ", ".len() + name.len() > ONLINE_LINE_MAX {
            lines.push(std::mem::replace(&mut line, head.clone()));
        } else if !fresh {
            line.push_str(", ");
        }
        line.push_str(name);
    }
    lines.push(line);
    lines
}

/// At most how many bytes of chat lines `input` bytes of a client's stream can become for one
/// receiver, when the sender is named with `name_len` bytes. `input` counts every byte of the
/// lines, so it includes an unfinished line the framer already holds.
///
/// A line is at least one byte of text and its `\n` (an empty line is dropped), and sanitising
/// can turn one invalid byte into U+FFFD's three: so at most `(input + 1) / 2` lines, each
/// `NAME says: ` plus `\r\n` around a text of at most three times its bytes. A stream of `a\n`
/// from `127.0.0.1:52344` grows twelve-fold, which is why a room must not read from senders
/// faster than its receivers take the bytes.
pub fn relayed_bound(name_len: usize, input: usize) -> usize {
    let lines = input.div_ceil(2);
    let per_line = name_len + SAYS.len() + CRLF.len();
    input
        .saturating_mul(3)
        .saturating_add(lines.saturating_mul(per_line))
}

/// The most a server may read from a sender named with `name_len` bytes, whose framer already
/// holds `held` bytes, so that what the read becomes fits in `free` bytes of every receiver's
/// queue ([`relayed_bound`]); at most `chunk`. Zero: it must not read now.
pub fn readable_within(name_len: usize, held: usize, free: usize, chunk: usize) -> usize {
    // relayed_bound grows by at least 3 per byte, so a first guess by division is close; step
    // down from it until the bound fits.
    let per_two_bytes = 6 + name_len + SAYS.len() + CRLF.len();
    let mut total = (free.saturating_mul(2) / per_two_bytes).min(held.saturating_add(chunk));
    while total > held && relayed_bound(name_len, total) > free {
        total -= 1;
    }
    total.saturating_sub(held).min(chunk)
}

/// `alice (private): psst`: what the target of `/pm` receives.
pub fn private(sender: &str, text: &str) -> String {
    format!("{sender} (private): {text}")
}

/// `* alice waves`: how `/me waves` is relayed.
pub fn action(name: &str, text: &str) -> String {
    format!("* {name} {text}")
}

/// `* error: unknown command /dance (try /help)`.
pub fn unknown_command(word: &str) -> String {
    format!("* error: unknown command {word} (try /help)")
}

/// `* error: usage: /pm NAME TEXT`: a command given without what it needs.
pub fn usage(usage: &str) -> String {
    format!("* error: usage: {usage}")
}

/// `* error: no such user bob`: `/pm` to a name nobody has.
pub fn no_such_user(name: &str) -> String {
    format!("* error: no such user {name}")
}

/// v5-cluster: `/pm` to a name nobody on this node has, while the link to the other nodes is
/// down or too slow to ask: the name may well be elsewhere, so "no such user" alone would lie.
pub fn no_such_user_here(name: &str) -> String {
    format!(
        "* error: no such user {name} on this node, and the cluster link is down: try again soon"
    )
}

/// `* error: nickname alice is taken`: someone has it, in some case.
pub fn nick_taken(name: &str) -> String {
    format!("* error: nickname {name} is taken")
}

/// Why `/nick NAME` was refused, as a sentence.
pub fn bad_nick(name: &str, why: BadNick) -> String {
    match why {
        BadNick::Empty => usage(crate::command::NICK_USAGE),
        BadNick::TooLong => {
            format!("* error: nickname {name} is too long (at most {NICK_MAX} characters)")
        }
        BadNick::BadCharacter(c) => {
            format!("* error: nickname {name} has {c:?}; use only letters A-Z a-z, digits, _ and -")
        }
        BadNick::Reserved => {
            format!("* error: nickname {name} is reserved: server notices start with it")
        }
    }
}

/// The answer to a `/me` whose text would read as a notice about its sender.
pub const ME_READS_AS_NOTICE: &str =
    "* error: /me cannot start with joined, left or is now: it would read as a server notice";

/// `* error: too many connections from your address (max 64)`: `--max-per-ip` refused a
/// connection, which is then closed.
pub fn too_many_from_address(max_per_ip: usize) -> String {
    format!("* error: too many connections from your address (max {max_per_ip})")
}

/// Sent, at most once a second, to a client over its rate limit; its lines are dropped.
pub const SLOW_DOWN: &str = "* error: slow down";

/// `* error: idle for 300 s, disconnected`: the last line to a client silent too long.
pub fn idle_timeout(secs: u64) -> String {
    format!("* error: idle for {secs} s, disconnected")
}

/// The answer to `/help`, one notice per line.
pub const HELP: &[&str] = &[
    "* commands:",
    "*   /nick NAME     take a nickname (1-16 of A-Z a-z 0-9 _ -)",
    "*   /nick          show your name",
    "*   /list          who is online",
    "*   /pm NAME TEXT  a private message to NAME",
    "*   /me TEXT       an action: * you TEXT",
    "*   /quit [TEXT]   leave, with an optional reason",
    "*   /help          this list",
    "*   //TEXT         send a line that starts with /",
];

/// The line plus [`CRLF`], as bytes ready for a socket.
pub fn wire(line: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(line.len() + CRLF.len());
    bytes.extend_from_slice(line.as_bytes());
    bytes.extend_from_slice(CRLF.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_lines_name_the_sender() {
        assert_eq!(
            chat_line("127.0.0.1:52344", "hi"),
            "127.0.0.1:52344 says: hi"
        );
        assert_eq!(chat_line("[::1]:52344", "hi"), "[::1]:52344 says: hi");
    }

    #[test]
    fn push_chat_line_sanitises_and_ends_with_crlf() {
        let mut out = String::new();
        assert!(push_chat_line(&mut out, "bob", b"\x1b[31mred "));
        assert!(!push_chat_line(&mut out, "bob", b" \x07 "));
        assert!(push_chat_line(&mut out, "bob", b"two"));
        assert_eq!(out, "bob says: [31mred\r\nbob says: two\r\n");
    }

    #[test]
    fn notices_read_as_the_spec_writes_them() {
        assert_eq!(
            joined("127.0.0.1:52344", 3),
            "* 127.0.0.1:52344 joined (3 online)"
        );
        assert_eq!(left("alice", 2, None), "* alice left (2 online)");
        assert_eq!(
            left("alice", 2, Some("lunch")),
            "* alice left (2 online): lunch"
        );
        assert_eq!(
            welcome("127.0.0.1:52344", 3),
            "* welcome 127.0.0.1:52344, 3 online - type /help for commands"
        );
        assert_eq!(server_full(1024), "* server full (1024 clients)");
        assert_eq!(
            line_too_long(1024),
            "* error: line too long (max 1024 bytes)"
        );
        assert_eq!(TOO_SLOW, "* error: too slow, disconnected");
        assert_eq!(SHUTTING_DOWN, "* server shutting down");
    }

    #[test]
    fn every_notice_starts_with_a_star() {
        for notice in [
            joined("a", 1),
            left("a", 0, None),
            server_full(1),
            line_too_long(1),
        ] {
            assert!(notice.starts_with("* "), "{notice}");
        }
    }

    #[test]
    fn command_answers_read_as_the_spec_writes_them() {
        assert_eq!(
            renamed("127.0.0.1:5", "alice"),
            "* 127.0.0.1:5 is now alice"
        );
        assert_eq!(you_are("alice"), "* you are alice");
        assert_eq!(
            online_list(["alice", "bob"].into_iter()),
            ["* online (2): alice, bob"]
        );
        assert_eq!(
            too_many_from_address(64),
            "* error: too many connections from your address (max 64)"
        );
        assert!(ME_READS_AS_NOTICE.starts_with("* error: "));
        assert!(bad_nick("server", BadNick::Reserved).starts_with("* error: "));
        assert_eq!(private("alice", "psst"), "alice (private): psst");
        assert_eq!(action("alice", "waves"), "* alice waves");
        assert_eq!(
            unknown_command("/dance"),
            "* error: unknown command /dance (try /help)"
        );
        assert_eq!(no_such_user("bob"), "* error: no such user bob");
        assert!(no_such_user_here("bob").starts_with(&no_such_user("bob")));
        assert_eq!(SLOW_DOWN, "* error: slow down");
        assert!(bad_nick("a.b", BadNick::BadCharacter('.')).starts_with("* error: "));
        assert!(HELP.iter().all(|line| line.starts_with("* ")));
    }

    #[test]
    fn a_long_list_is_split_into_short_lines() {
        let names: Vec<String> = (0..1000).map(|i| format!("user{i:04}")).collect();
        let lines = online_list(names.iter().map(String::as_str));
        assert!(lines.len() > 10);
        let mut listed = Vec::new();
        for line in &lines {
            assert!(line.len() <= ONLINE_LINE_MAX, "{} bytes", line.len());
            let rest = line
                .strip_prefix("* online (1000): ")
                .expect("every line says N");
            listed.extend(rest.split(", ").map(str::to_owned));
        }
        assert_eq!(listed, names, "every name once, in order");
        assert_eq!(online_list(std::iter::empty()), ["* online (0): "]);
    }

    #[test]
    fn relayed_bound_holds_for_the_worst_streams() {
        let name = "127.0.0.1:52344";
        for stream in [
            b"a\n".repeat(500),
            b"\x80\n".repeat(500),
            b"\x80".repeat(999),
            b"hello world\r\n".repeat(70),
        ] {
            let mut out = String::new();
            let mut framer = crate::LineFramer::new(4096);
            let mut on_frame = |frame: crate::Frame<'_>| {
                if let crate::Frame::Line(raw) = frame {
                    push_chat_line(&mut out, name, raw);
                }
            };
            framer.push(&stream, &mut on_frame);
            framer.finish(&mut on_frame);
            assert!(out.len() <= relayed_bound(name.len(), stream.len()));
        }
        // "a\n" from an IPv4 address: about twelve-fold.
        assert_eq!(relayed_bound(name.len(), 2), 3 * 2 + 15 + 9);
    }

    #[test]
    fn readable_within_reads_what_fits_and_no_more() {
        let name_len = 15;
        for free in [0, 10, 100, 1000, 65_536, 262_144, 10_000_000] {
            for held in [0, 1, 500, 1024] {
                let n = readable_within(name_len, held, free, 16 * 1024);
                assert!(n <= 16 * 1024);
                if n > 0 {
                    assert!(relayed_bound(name_len, held + n) <= free);
                }
                if n < 16 * 1024 {
                    assert!(
                        relayed_bound(name_len, held + n + 1) > free,
                        "{free} {held} {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn wire_adds_crlf() {
        assert_eq!(wire("* hi"), b"* hi\r\n");
    }
}

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

/// `* alice is now bob`: everyone, the renamed client included, sees a rename.
pub fn renamed(old: &str, new: &str) -> String {
    format!("* {old} is now {new}")
}

/// `* you are alice`: the answer to `/nick` alone.
pub fn you_are(name: &str) -> String {
    format!("* you are {name}")
}

/// `* online (3): alice, bob, 127.0.0.1:52344`: the answer to `/list`.
pub fn online_list<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let mut line = format!("* online ({}): ", names.len());
    for (i, name) in names.enumerate() {
        if i > 0 {
            line.push_str(", ");
        }
        line.push_str(name);
    }
    line
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
    }
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
            "* online (2): alice, bob"
        );
        assert_eq!(private("alice", "psst"), "alice (private): psst");
        assert_eq!(action("alice", "waves"), "* alice waves");
        assert_eq!(
            unknown_command("/dance"),
            "* error: unknown command /dance (try /help)"
        );
        assert_eq!(no_such_user("bob"), "* error: no such user bob");
        assert_eq!(SLOW_DOWN, "* error: slow down");
        assert!(bad_nick("a.b", BadNick::BadCharacter('.')).starts_with("* error: "));
        assert!(HELP.iter().all(|line| line.starts_with("* ")));
    }

    #[test]
    fn wire_adds_crlf() {
        assert_eq!(wire("* hi"), b"* hi\r\n");
    }
}

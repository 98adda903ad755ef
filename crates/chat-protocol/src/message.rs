//! The exact text of everything a server sends, written once.
//!
//! Two kinds of line go to a client: chat lines (`alice says: hi`) and notices, which start with
//! `* ` and whose first word says what they are (`* error: ...`, `* bob joined (3 online)`). The
//! functions here return a line without its ending; [`CRLF`] is added on the wire, because that
//! is what telnet expects.

use std::fmt::Write as _;

/// Every server line ends with this.
pub const CRLF: &str = "\r\n";

/// `alice says: hi`: how a line from `name` reaches the others (v1 and v2 echo it to the sender).
pub fn chat_line(name: &str, text: &str) -> String {
    format!("{name} says: {text}")
}

/// Appends `name says: TEXT\r\n` to `out`, sanitising `raw` on the way, and says whether the
/// line had anything left to say. The relay path of the servers formats a whole read's worth of
/// lines into one buffer with this: one allocation per chunk, not one per line.
pub fn push_chat_line(out: &mut String, name: &str, raw: &[u8]) -> bool {
    let start = out.len();
    out.push_str(name);
    out.push_str(" says: ");
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
    fn wire_adds_crlf() {
        assert_eq!(wire("* hi"), b"* hi\r\n");
    }
}

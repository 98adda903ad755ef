//! The token each benchmark line carries, and how a receiver finds it in whatever the server
//! made of the line.
//!
//! A sender writes the bare token as its chat text; a server turns it into
//! `127.0.0.1:52344 says: #b3f9a.0002.000004d2.0000075bcd15`, or any other format: the
//! receiver does not parse the server's line, it looks for the token anywhere in it. So the
//! same load generator measures any line-based chat server.
//!
//! ```text
//!  #  b  3f9a . 0002 . 000004d2 . 0000075bcd15
//!  |  |  |      |      |          |
//!  |  |  |      |      |          +-- when it was (or was scheduled to be) sent: nanoseconds
//!  |  |  |      |      |              since this chat-bench process started, 12 hex digits
//!  |  |  |      |      +-- sequence number within that sender, 8 hex digits
//!  |  |  |      +-- the sender (client index), 4 hex digits
//!  |  |  +-- this run's tag: lines left over from another run (v4's history) never count
//!  |  +-- kind: `b` a measured line, `p` a probe that proves a client is in the room
//!  +-- marker: the receiver jumps from `#` to `#` (memchr), never line by line
//! ```
//!
//! Fixed width, lowercase hex and no characters a server sanitises away: parsing is a bounds
//! check and a few word-sized operations per field, with no allocation, and a token can never
//! span two lines because it contains no `\n`.

use std::fmt;

/// The first byte of every token.
pub const MARKER: u8 = b'#';

/// Bytes in a token: marker, kind, 4-digit tag, then `.sender.seq.nanos`.
pub const TOKEN_LEN: usize = 2 + TAG_DIGITS + 1 + SENDER_DIGITS + 1 + SEQ_DIGITS + 1 + NANOS_DIGITS;

const TAG_DIGITS: usize = 4;
const SENDER_DIGITS: usize = 4;
const SEQ_DIGITS: usize = 8;
/// 12 hex digits of nanoseconds last 78 hours, far longer than any run.
const NANOS_DIGITS: usize = 12;

/// Largest timestamp a token can carry.
pub const NANOS_MAX: u64 = (1 << (4 * NANOS_DIGITS)) - 1;

/// Most clients (and so senders) one run may have: the sender field has 4 hex digits.
pub const CLIENTS_MAX: usize = 1 << (4 * SENDER_DIGITS);

const SEPARATOR: u8 = b'.';
const HEX: &[u8; 16] = b"0123456789abcdef";

/// What a line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A measured line: counted, checked for loss and order, its latency recorded.
    Data,
    /// A probe: seen by a client, it proves that client is in the room (or echoed).
    Probe,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Data => b'b',
            Kind::Probe => b'p',
        }
    }
}

/// A token's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    /// The client that sent it.
    pub sender: u16,
    /// Its position among that sender's lines of this kind, from 0.
    pub seq: u32,
    /// Nanoseconds since the process's epoch when it was sent, or for paced lines, when it was
    /// scheduled to be sent.
    pub sent_nanos: u64,
}

/// The tag of one run, as the four hex digits it is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunTag([u8; TAG_DIGITS]);

impl RunTag {
    pub fn new(value: u16) -> RunTag {
        let mut digits = [0; TAG_DIGITS];
        write_hex(&mut digits, u64::from(value));
        RunTag(digits)
    }
}

impl fmt::Display for RunTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).unwrap_or("????"))
    }
}

/// Appends the token's text (without any line ending) to `out`.
pub fn write_token(out: &mut Vec<u8>, tag: RunTag, token: Token) {
    let start = out.len();
    out.resize(start + TOKEN_LEN, SEPARATOR);
    let text = &mut out[start..];
    text[0] = MARKER;
    text[1] = token.kind.byte();
    let mut at = 2;
    text[at..at + TAG_DIGITS].copy_from_slice(&tag.0);
    at += TAG_DIGITS + 1;
    write_hex(&mut text[at..at + SENDER_DIGITS], u64::from(token.sender));
    at += SENDER_DIGITS + 1;
    write_hex(&mut text[at..at + SEQ_DIGITS], u64::from(token.seq));
    at += SEQ_DIGITS + 1;
    write_hex(&mut text[at..], token.sent_nanos.min(NANOS_MAX));
}

/// Writes `value` as lowercase hex filling `digits`, most significant digit first.
fn write_hex(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Eight copies of `byte`, one per lane of a u64.
const fn splat(byte: u8) -> u64 {
    0x0101_0101_0101_0101 * byte as u64
}

/// Per lane, 0x80 where the lane's byte is at least `floor`. Lanes must be below 0x80, so
/// that no sum carries into the next lane.
const fn at_least(lanes: u64, floor: u8) -> u64 {
    lanes.wrapping_add(splat(0x80 - floor)) & splat(0x80)
}

/// Reads up to 8 lowercase hex digits (most significant first) 8 at a time in one u64 (SWAR):
/// a handful of instructions instead of a table look-up and a branch per digit, which matters
/// at twenty million tokens a second. `None` if any byte is not a lowercase hex digit.
#[inline]
fn read_hex(digits: &[u8]) -> Option<u64> {
    debug_assert!(digits.len() <= 8);
    let mut bytes = [b'0'; 8];
    bytes[8 - digits.len()..].copy_from_slice(digits);
    let lanes = u64::from_le_bytes(bytes);
    if lanes & splat(0x80) != 0 {
        return None;
    }
    let digit = at_least(lanes, b'0') & !at_least(lanes, b'9' + 1);
    let letter = at_least(lanes, b'a') & !at_least(lanes, b'f' + 1);
    if digit | letter != splat(0x80) {
        return None;
    }
    // '0'..'9' are 0x30..0x39 and 'a'..'f' 0x61..0x66: the low nibble, plus 9 for letters.
    let nibbles = (lanes & splat(0x0f)) + (letter >> 7) * 9;
    // Lane 0 holds the most significant digit: fold pairs of lanes, then pairs of pairs.
    let pairs = ((nibbles << 4) | (nibbles >> 8)) & 0x00ff_00ff_00ff_00ff;
    let quads = ((pairs << 8) | (pairs >> 16)) & 0x0000_ffff_0000_ffff;
    Some(((quads << 16) | (quads >> 32)) & 0xffff_ffff)
}

/// Reads a fixed-width hex field of up to 16 digits.
#[inline]
fn read_hex_field(digits: &[u8]) -> Option<u64> {
    if digits.len() <= 8 {
        return read_hex(digits);
    }
    let (high, low) = digits.split_at(digits.len() - 8);
    Some((read_hex(high)? << 32) | read_hex(low)?)
}

/// Parses the token that starts at `text[0]` if it is one of this run's.
#[inline]
pub fn parse_token(text: &[u8], tag: RunTag) -> Option<Token> {
    let text = text.get(..TOKEN_LEN)?;
    if text[0] != MARKER {
        return None;
    }
    let kind = match text[1] {
        b'b' => Kind::Data,
        b'p' => Kind::Probe,
        _ => return None,
    };
    let mut at = 2;
    if text[at..at + TAG_DIGITS] != tag.0 {
        return None;
    }
    at += TAG_DIGITS;
    let mut field = |digits: usize| -> Option<u64> {
        if text[at] != SEPARATOR {
            return None;
        }
        let value = read_hex_field(&text[at + 1..at + 1 + digits])?;
        at += 1 + digits;
        Some(value)
    };
    let sender = field(SENDER_DIGITS)?;
    let seq = field(SEQ_DIGITS)?;
    let sent_nanos = field(NANOS_DIGITS)?;
    Some(Token {
        kind,
        sender: u16::try_from(sender).ok()?,
        seq: u32::try_from(seq).ok()?,
        sent_nanos,
    })
}

/// Calls `found` for every token of this run in `text`, wherever it sits in its line. `text`
/// should end at a line boundary: a token cut off at the end is not seen (the receiver keeps
/// the unfinished line for its next read).
#[inline]
pub fn for_each_token(text: &[u8], tag: RunTag, mut found: impl FnMut(Token)) {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(MARKER, &text[from..]) {
        let at = from + offset;
        match parse_token(&text[at..], tag) {
            Some(token) => {
                found(token);
                // A token holds no marker: the next one starts after it.
                from = at + TOKEN_LEN;
            }
            None => from = at + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u16 = 0x3f9a;

    fn text(token: Token) -> String {
        let mut out = Vec::new();
        write_token(&mut out, RunTag::new(TAG), token);
        String::from_utf8(out).unwrap()
    }

    fn all_tokens(line: &str) -> Vec<Token> {
        let mut tokens = Vec::new();
        for_each_token(line.as_bytes(), RunTag::new(TAG), |t| tokens.push(t));
        tokens
    }

    const SAMPLE: Token = Token {
        kind: Kind::Data,
        sender: 2,
        seq: 1234,
        sent_nanos: 123_456_789_012,
    };

    #[test]
    fn token_text_is_fixed_width_lowercase_hex() {
        assert_eq!(text(SAMPLE), "#b3f9a.0002.000004d2.001cbe991a14");
        assert_eq!(text(SAMPLE).len(), TOKEN_LEN);
    }

    #[test]
    fn token_round_trips_at_the_limits() {
        for token in [
            SAMPLE,
            Token {
                kind: Kind::Probe,
                sender: u16::MAX,
                seq: u32::MAX,
                sent_nanos: NANOS_MAX,
            },
            Token {
                kind: Kind::Data,
                sender: 0,
                seq: 0,
                sent_nanos: 0,
            },
        ] {
            let parsed = parse_token(text(token).as_bytes(), RunTag::new(TAG));
            assert_eq!(parsed, Some(token));
        }
    }

    #[test]
    fn timestamps_beyond_the_field_are_clamped_not_wrapped() {
        let token = Token {
            sent_nanos: u64::MAX,
            ..SAMPLE
        };
        let parsed = parse_token(text(token).as_bytes(), RunTag::new(TAG)).unwrap();
        assert_eq!(parsed.sent_nanos, NANOS_MAX);
    }

    #[test]
    fn token_is_found_anywhere_in_a_line() {
        let token = text(SAMPLE);
        for line in [
            format!("127.0.0.1:52344 says: {token}\r\n"),
            format!("<alice> {token}\r\n"),
            format!("{token}\n"),
            format!("[12:00] bob #general: hello {token} (edited)\r\n"),
        ] {
            assert_eq!(all_tokens(&line), vec![SAMPLE], "in {line:?}");
        }
    }

    #[test]
    fn every_token_in_a_chunk_is_found_in_order() {
        let mut chunk = String::new();
        let mut expected = Vec::new();
        for seq in 0..100 {
            let token = Token { seq, ..SAMPLE };
            chunk.push_str(&format!("1.2.3.4:5 says: {}\r\n", text(token)));
            expected.push(token);
        }
        chunk.push_str("* 127.0.0.1:40000 joined (3 online)\r\n");
        assert_eq!(all_tokens(&chunk), expected);
    }

    #[test]
    fn other_runs_and_damaged_tokens_are_ignored() {
        let good = text(SAMPLE);
        let other_run = {
            let mut out = Vec::new();
            write_token(&mut out, RunTag::new(TAG + 1), SAMPLE);
            String::from_utf8(out).unwrap()
        };
        let cut = &good[..TOKEN_LEN - 1];
        let upper = good.to_uppercase().replacen("#B", "#b", 1);
        let wrong_kind = good.replacen("#b", "#x", 1);
        let wrong_separator = good.replacen('.', ":", 1);
        for line in [
            other_run.as_str(),
            cut,
            &upper,
            &wrong_kind,
            &wrong_separator,
            "# not a token at all",
            "#",
            "",
        ] {
            assert_eq!(all_tokens(line), vec![], "in {line:?}");
        }
    }

    #[test]
    fn a_stray_marker_before_a_token_does_not_hide_it() {
        let line = format!("#1 fan ##{}\r\n", text(SAMPLE));
        assert_eq!(all_tokens(&line), vec![SAMPLE]);
    }

    #[test]
    fn hex_fields_accept_exactly_lowercase_hex_digits() {
        assert_eq!(read_hex_field(b"0"), Some(0));
        assert_eq!(read_hex_field(b"09af"), Some(0x09af));
        assert_eq!(read_hex_field(b"deadbeef"), Some(0xdead_beef));
        assert_eq!(read_hex_field(b"0123456789ab"), Some(0x0123_4567_89ab));
        assert_eq!(read_hex_field(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b"0/"[..],
            b"0:",
            b"0`",
            b"0g",
            b"0A",
            b"0F",
            b"0 ",
            b"0\xe9",
            b"0\x80",
            b"0\xff",
        ] {
            assert_eq!(read_hex_field(bad), None, "{bad:?}");
        }
        for byte in 0..=255u8 {
            let valid = byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
            assert_eq!(read_hex_field(&[byte]).is_some(), valid, "byte {byte:#x}");
        }
    }

    #[test]
    fn run_tag_prints_as_its_digits() {
        assert_eq!(RunTag::new(TAG).to_string(), "3f9a");
        assert_eq!(RunTag::new(1).to_string(), "0001");
    }
}

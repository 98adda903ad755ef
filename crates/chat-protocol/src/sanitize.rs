//! What a line may contain before anyone else sees it.
//!
//! A chat server copies one user's bytes onto other users' terminals, so it must not copy
//! anything a terminal would obey: an ANSI escape can clear a screen or move a cursor, a BEL rings
//! a bell. The rules, in order:
//!
//! 1. Telnet commands (`0xFF` IAC and the option bytes after it) are dropped: telnet sends them
//!    when it connects, and they are not text.
//! 2. Invalid UTF-8 becomes U+FFFD.
//! 3. Control characters other than TAB are removed: C0, DEL and C1. Removing ESC disarms every
//!    ANSI escape sequence; what is left of it (`[2J`) is harmless text.
//! 4. Unicode bidirectional controls (U+202A-U+202E, U+2066-U+2069) are removed: an
//!    unmatched RIGHT-TO-LEFT OVERRIDE would make the rest of the line, and in some terminals
//!    the rest of the screen, read backwards ("Trojan Source").
//! 5. Trailing whitespace is trimmed. A line that is then empty is no line at all.

use std::borrow::Cow;

/// Telnet's "interpret as command" byte: the next byte is a command, not data.
const IAC: u8 = 0xFF;
/// Subnegotiation begin: option bytes follow until `IAC SE`.
const SB: u8 = 250;
/// Subnegotiation end.
const SE: u8 = 240;
/// WILL, WONT, DO and DONT (251-254) each take one option byte.
const OPTION_COMMANDS: std::ops::RangeInclusive<u8> = 251..=254;

/// Cleans one framed line; `None` when nothing printable is left.
pub fn sanitize(line: &[u8]) -> Option<String> {
    let mut text = String::new();
    sanitize_into(line, &mut text).then_some(text)
}

/// Appends the cleaned line to `out` and says whether anything was left of it. Lets a server
/// format many lines into one buffer without a `String` per line.
pub fn sanitize_into(line: &[u8], out: &mut String) -> bool {
    let without_telnet = strip_telnet_commands(line);
    let text = String::from_utf8_lossy(&without_telnet);
    let start = out.len();
    if text.chars().any(is_forbidden) {
        out.extend(text.chars().filter(|&c| !is_forbidden(c)));
    } else {
        out.push_str(&text);
    }
    let kept = out[start..].trim_end().len();
    out.truncate(start + kept);
    kept > 0
}

/// Every `Cc` character except TAB (C0 `\0`-`\x1f`, DEL, C1 `\u{80}`-`\u{9f}`), and every
/// bidirectional embedding, override or isolate.
pub fn is_forbidden(c: char) -> bool {
    (c.is_control() && c != '\t') || is_bidi_control(c)
}

/// LRE, RLE, PDF, LRO, RLO (U+202A-U+202E) and LRI, RLI, FSI, PDI (U+2066-U+2069): the
/// characters that change the direction in which the text after them is displayed.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn strip_telnet_commands(line: &[u8]) -> Cow<'_, [u8]> {
    if !line.contains(&IAC) {
        return Cow::Borrowed(line);
    }
    let mut data = Vec::with_capacity(line.len());
    let mut bytes = line.iter().copied();
    while let Some(byte) = bytes.next() {
        if byte != IAC {
            data.push(byte);
            continue;
        }
        match bytes.next() {
            Some(SB) => {
                // Skip the option's parameters up to and including `IAC SE`.
                let mut previous = 0;
                for byte in bytes.by_ref() {
                    if previous == IAC && byte == SE {
                        break;
                    }
                    previous = byte;
                }
            }
            Some(command) if OPTION_COMMANDS.contains(&command) => {
                bytes.next();
            }
            // `IAC IAC` is an escaped 0xFF data byte, which is never valid UTF-8 in a line of
            // text, and every other command is a single byte: drop them all.
            _ => {}
        }
    }
    Cow::Owned(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn clean(line: &[u8]) -> Option<String> {
        sanitize(line)
    }

    #[test]
    fn plain_text_passes_unchanged() {
        assert_eq!(clean(b"hello, world").as_deref(), Some("hello, world"));
        assert_eq!(
            clean("h\u{e9}llo \u{1f44b}".as_bytes()).as_deref(),
            Some("h\u{e9}llo \u{1f44b}")
        );
    }

    #[test]
    fn tabs_and_leading_spaces_stay() {
        assert_eq!(clean(b"  a\tb").as_deref(), Some("  a\tb"));
    }

    #[test]
    fn trailing_whitespace_is_trimmed() {
        assert_eq!(clean(b"hi \t  ").as_deref(), Some("hi"));
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(clean(b""), None);
        assert_eq!(clean(b"   \t"), None);
        assert_eq!(clean(b"\x1b\x07\r"), None);
    }

    #[test]
    fn escape_sequences_are_disarmed() {
        assert_eq!(
            clean(b"\x1b[2Jgone\x1b[31m").as_deref(),
            Some("[2Jgone[31m")
        );
        assert_eq!(clean(b"ring\x07 bell").as_deref(), Some("ring bell"));
        assert_eq!(clean(b"back\x08space\x7f").as_deref(), Some("backspace"));
        assert_eq!(clean("c1\u{9b}31m".as_bytes()).as_deref(), Some("c131m"));
        assert_eq!(clean(b"nul\0byte").as_deref(), Some("nulbyte"));
    }

    #[test]
    fn invalid_utf8_becomes_the_replacement_character() {
        assert_eq!(
            clean(b"bad \xc3\x28 byte").as_deref(),
            Some("bad \u{fffd}( byte")
        );
        assert_eq!(clean(b"\xe2\x82").as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn telnet_commands_are_dropped() {
        // What telnet sends on connect: IAC DO SUPPRESS-GO-AHEAD, IAC WILL TERMINAL-TYPE, ...
        assert_eq!(clean(b"\xff\xfd\x03\xff\xfb\x18hi").as_deref(), Some("hi"));
        // A subnegotiation with its parameters (window size 80x24).
        assert_eq!(
            clean(b"a\xff\xfa\x1f\x00\x50\x00\x18\xff\xf0b").as_deref(),
            Some("ab")
        );
        // Interrupt process, and an escaped 0xFF.
        assert_eq!(clean(b"x\xff\xf4y\xff\xffz").as_deref(), Some("xyz"));
        // A command cut off at the end of the line.
        assert_eq!(clean(b"end\xff").as_deref(), Some("end"));
        assert_eq!(clean(b"end\xff\xfb").as_deref(), Some("end"));
    }

    #[test]
    fn bidirectional_controls_are_removed() {
        assert_eq!(
            clean("abc\u{202e}fed".as_bytes()).as_deref(),
            Some("abcfed")
        );
        for c in [
            '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{2066}', '\u{2067}', '\u{2068}',
            '\u{2069}',
        ] {
            assert_eq!(
                clean(format!("a{c}b").as_bytes()).as_deref(),
                Some("ab"),
                "{c:?}"
            );
        }
        // Neighbours that only mark direction, without changing what follows, stay.
        assert_eq!(
            clean("a\u{200f}b".as_bytes()).as_deref(),
            Some("a\u{200f}b")
        );
        assert_eq!(clean("\u{202e}".as_bytes()), None);
    }

    #[test]
    fn sanitize_into_appends_to_what_is_there() {
        let mut out = String::from("alice says: ");
        assert!(sanitize_into(b"hi\x1b  ", &mut out));
        assert_eq!(out, "alice says: hi");
        assert!(!sanitize_into(b"  ", &mut out));
        assert_eq!(out, "alice says: hi");
    }

    proptest! {
        #[test]
        fn output_never_holds_a_control_character(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Some(text) = sanitize(&bytes) {
                prop_assert!(!text.chars().any(is_forbidden), "{:?}", text);
                prop_assert!(!text.is_empty());
                prop_assert_eq!(text.trim_end(), text.as_str());
            }
        }

        #[test]
        fn printable_text_is_kept_as_is(text in "[ -~\u{a0}-\u{2029}\u{202f}-\u{2065}\u{206a}-\u{10ffff}]{0,80}") {
            let expected = text.trim_end();
            let cleaned = sanitize(text.as_bytes());
            prop_assert_eq!(cleaned.as_deref(), (!expected.is_empty()).then_some(expected));
        }
    }
}

//! `command::parse` on what a server would parse: arbitrary bytes, sanitised; and `check_nick`.
//!
//! Properties (SPEC 5, v4's commands):
//! - `parse` never panics on a sanitised line;
//! - a line that does not start with `/` is `Chat` of the whole line, and one that starts with
//!   `//` is `Chat` of the line without its first `/`;
//! - a name in `Nick(Some(name))` is never empty and holds no whitespace: `/nick two words` is
//!   a usage error, whatever the space between the words;
//! - `check_nick` accepts exactly the names of 1 to `NICK_MAX` (16) characters from
//!   `A-Za-z0-9_-` that are not one of `RESERVED_NICKS` in any case, for the name `/nick`
//!   gives and for every word of the line.

#![no_main]

use chat_protocol::command::{check_nick, parse, Command, NICK_MAX, RESERVED_NICKS};
use chat_protocol::sanitize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Some(line) = sanitize(bytes) else {
        return;
    };
    let command = parse(&line);
    match command {
        _ if !line.starts_with('/') => assert_eq!(command, Command::Chat(&line)),
        _ if line.starts_with("//") => assert_eq!(command, Command::Chat(&line[1..])),
        Command::Nick(Some(name)) => {
            assert!(!name.is_empty());
            assert!(!name.contains(char::is_whitespace), "{name:?}");
            assert_eq!(check_nick(name).is_ok(), is_valid_nick(name), "{name:?}");
        }
        Command::Unknown(word) => assert!(word.starts_with('/') && line.starts_with(word)),
        _ => {}
    }
    for word in line.split_whitespace().chain([line.as_str()]) {
        assert_eq!(check_nick(word).is_ok(), is_valid_nick(word), "{word:?}");
    }
});

/// The nickname rule written out plainly.
fn is_valid_nick(name: &str) -> bool {
    (1..=NICK_MAX).contains(&name.chars().count())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !RESERVED_NICKS
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved))
}

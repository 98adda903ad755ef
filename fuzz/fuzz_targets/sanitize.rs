//! `sanitize` on arbitrary bytes: telnet commands, invalid UTF-8, escapes, bidi controls.
//!
//! Properties (SPEC 3, sanitising):
//! - the output holds no character for which `is_forbidden` is true (control characters other
//!   than TAB, Unicode bidirectional controls);
//! - it has no trailing whitespace and is never empty when it is `Some`;
//! - sanitising it again gives it back unchanged (idempotent): what a server relays is already
//!   clean, so a second server or a log reader sees the same text;
//! - `sanitize_into` appends exactly that text after what the buffer held, and says whether it
//!   did.

#![no_main]

use chat_protocol::sanitize::{is_forbidden, sanitize, sanitize_into};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let clean = sanitize(line);
    if let Some(text) = &clean {
        assert!(!text.chars().any(is_forbidden), "{text:?}");
        assert_eq!(text.trim_end(), text, "trailing whitespace");
        assert!(!text.is_empty());
        assert_eq!(
            sanitize(text.as_bytes()).as_ref(),
            Some(text),
            "not idempotent"
        );
    }

    let prefix = "alice says: ";
    let mut out = String::from(prefix);
    let kept = sanitize_into(line, &mut out);
    assert_eq!(kept, clean.is_some());
    assert_eq!(&out[prefix.len()..], clean.as_deref().unwrap_or(""));
});

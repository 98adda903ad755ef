//! `parse_addr` on arbitrary text.
//!
//! Properties (SPEC 2, `--addr`):
//! - it never panics;
//! - an address it accepts, printed with `Display` and parsed again, is the same address, so the
//!   `listening on` line a server prints can be pasted into the client's `--addr`;
//! - a refusal is one sentence that names the input as given.
//!
//! Host names are skipped: they go to the system resolver, which is slow, depends on the
//! network and would make the fuzzer's runs unrepeatable.

#![no_main]

use chat_protocol::parse_addr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(input) = std::str::from_utf8(bytes) else {
        return;
    };
    if asks_the_resolver(input) {
        return;
    }
    match parse_addr(input) {
        Ok(addr) => assert_eq!(parse_addr(&addr.to_string()), Ok(addr), "{input:?}"),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid address \"{input}\": ")),
                "{message}"
            );
        }
    }
});

/// Whether `parse_addr` would look the host up: `NAME:PORT` with a name other than
/// `localhost` that is not all digits and dots (the inverse of the checks before its lookup).
fn asks_the_resolver(input: &str) -> bool {
    let Some((host, port)) = input.trim().rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.eq_ignore_ascii_case("localhost")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
}

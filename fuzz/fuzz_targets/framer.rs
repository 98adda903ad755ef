//! `LineFramer` on an arbitrary stream, with an arbitrary `max_line`, cut into arbitrary reads.
//!
//! Properties (SPEC 3, framing):
//! - every `Frame::Line` holds no `\n` and is at most `max_line` bytes: the one `\r` just before
//!   the `\n` is dropped before the length is judged, so a telnet line of exactly the limit
//!   passes (a line may still end in `\r` when it ended in `\r\r\n`);
//! - the frames are what the rule gives when written out plainly: split at `\n`, drop one `\r`,
//!   longer than `max_line` is `TooLong`, a non-empty last line without `\n` counts at `finish`;
//! - the fuzzed reads give the same frames as one read, `finish` included: framing never
//!   depends on `recv` boundaries;
//! - after every `push`, `buffered()` is at most `max_line + 1` (one line plus the `\r` that may
//!   end it, as `framing.rs` documents), and 0 after `finish`.
//!
//! Input: byte 0 picks `max_line`, byte 1 how many reads, then one byte per read length, then
//! the stream; what the read lengths do not cover is the last read.

#![no_main]

use chat_protocol::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;

/// A frame, owned, so that two runs can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Line(Vec<u8>),
    TooLong,
}

fuzz_target!(|data: &[u8]| {
    let Some((&[limit, reads], rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let max_line = match limit {
        // `LineFramer::new` takes any `usize`, so the largest ones must work too.
        0xfc..=0xff => usize::MAX - usize::from(0xff - limit),
        _ => usize::from(limit % 65),
    };
    let (lengths, stream) = rest.split_at(usize::from(reads % 17).min(rest.len()));

    let mut chunks = Vec::new();
    let mut left = stream;
    for &length in lengths {
        let (chunk, after) = left.split_at(usize::from(length).min(left.len()));
        chunks.push(chunk);
        left = after;
    }
    chunks.push(left);

    let expected = plain_rule(max_line, stream);
    assert_eq!(frame(max_line, &[stream]), expected, "one read");
    assert_eq!(frame(max_line, &chunks), expected, "reads {chunks:?}");
});

/// Frames `chunks` in order, checking the per-frame and memory properties on the way.
fn frame(max_line: usize, chunks: &[&[u8]]) -> Vec<Event> {
    let mut framer = LineFramer::new(max_line);
    let mut events = Vec::new();
    let mut record = |frame: Frame<'_>| {
        events.push(match frame {
            Frame::Line(line) => {
                assert!(line.len() <= max_line, "line of {} bytes", line.len());
                assert!(!line.contains(&b'\n'));
                Event::Line(line.to_vec())
            }
            Frame::TooLong => Event::TooLong,
        })
    };
    for chunk in chunks {
        framer.push(chunk, &mut record);
        assert!(framer.buffered() <= max_line.saturating_add(1));
    }
    framer.finish(&mut record);
    assert_eq!(framer.buffered(), 0);
    events
}

/// SPEC 3's framing rule, with the whole stream in hand and no memory limit.
fn plain_rule(max_line: usize, stream: &[u8]) -> Vec<Event> {
    let mut lines: Vec<&[u8]> = stream.split(|&byte| byte == b'\n').collect();
    let last = lines.pop().filter(|last| !last.is_empty());
    lines
        .into_iter()
        .chain(last)
        .map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > max_line {
                Event::TooLong
            } else {
                Event::Line(line.to_vec())
            }
        })
        .collect()
}

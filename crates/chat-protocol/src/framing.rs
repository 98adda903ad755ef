//! Cutting a byte stream into lines, whatever the TCP segments look like.
//!
//! TCP delivers a stream, not messages: one `read` may return half a line or fifty lines. A
//! [`LineFramer`] is fed whatever each read returned and calls back once per complete line. It
//! never blocks and never does I/O, so the blocking reader of v1, the poll loops of v2 and v3
//! and the tokio tasks of v4 all drive the same framer.
//!
//! A line longer than the limit is not an error that ends the stream (tokio-util's `LinesCodec`
//! works that way and strands the lines behind it). The framer reports [`Frame::TooLong`] once,
//! as soon as the limit is crossed, then drops bytes until the next `\n` without keeping them:
//! a client streaming megabytes with no newline costs one line's worth of memory.

/// Default `--max-line`, in bytes, not counting the `\n` or `\r\n` that ends a line. 1024 is the
/// `MAXSIZE_MSG` of the Python original.
pub const MAX_LINE_DEFAULT: usize = 1024;

/// What the framer found in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// One complete line: no `\n`, and no `\r` just before it. Not yet sanitised.
    Line(&'a [u8]),
    /// A line crossed `max_line`; its bytes up to the next `\n` are being dropped.
    TooLong,
}

/// Turns chunks of bytes into [`Frame`]s. One per connection.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line: usize,
    /// The start of a line whose `\n` has not arrived yet. Holds at most `max_line` bytes, plus
    /// one `\r` that may turn out to end the line. Empty (and unallocated) between lines, so an
    /// idle connection costs nothing here.
    partial: Vec<u8>,
    /// True from the moment a line crosses the limit until its `\n`.
    discarding: bool,
}

impl LineFramer {
    /// A framer that accepts lines of up to `max_line` bytes (without their ending).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            partial: Vec::new(),
            discarding: false,
        }
    }

    /// The limit this framer enforces.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes held for an unfinished line: never more than `max_line + 1`.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds one chunk as `read` returned it; calls `on_frame` for every line it completes, in
    /// order. Lines wholly inside `chunk` are handed out without copying.
    pub fn push(&mut self, chunk: &[u8], mut on_frame: impl FnMut(Frame<'_>)) {
        let mut rest = chunk;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            let (segment, after) = (&rest[..newline], &rest[newline + 1..]);
            rest = after;
            if self.discarding {
                // The `\n` ending an overlong line: its error was already reported.
                self.discarding = false;
                continue;
            }
            if self.partial.is_empty() {
                self.emit(segment, &mut on_frame);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(segment);
                self.emit(&line, &mut on_frame);
            }
        }
        if self.discarding || rest.is_empty() {
            return;
        }
        let held = self.partial.len() + rest.len();
        let ends_with_cr = rest.last() == Some(&b'\r');
        // Saturating: `new` takes any `usize`, and `usize::MAX + 1` would overflow.
        let with_cr = self.max_line.saturating_add(1);
        if held > with_cr || (held == with_cr && !ends_with_cr) {
            self.partial = Vec::new();
            self.discarding = true;
            on_frame(Frame::TooLong);
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// The peer closed the connection: a last line without `\n` is still a line.
    pub fn finish(&mut self, mut on_frame: impl FnMut(Frame<'_>)) {
        let line = std::mem::take(&mut self.partial);
        if !self.discarding && !line.is_empty() {
            self.emit(&line, &mut on_frame);
        }
        self.discarding = false;
    }

    fn emit(&self, line: &[u8], on_frame: &mut impl FnMut(Frame<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.max_line {
            on_frame(Frame::TooLong);
        } else {
            on_frame(Frame::Line(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a framer makes of a stream, owned, so tests can compare runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Event {
        Line(Vec<u8>),
        TooLong,
    }

    fn record(events: &mut Vec<Event>) -> impl FnMut(Frame<'_>) + '_ {
        |frame| {
            events.push(match frame {
                Frame::Line(line) => Event::Line(line.to_vec()),
                Frame::TooLong => Event::TooLong,
            })
        }
    }

    fn frame_chunks(max_line: usize, chunks: &[&[u8]]) -> Vec<Event> {
        let mut framer = LineFramer::new(max_line);
        let mut events = Vec::new();
        for chunk in chunks {
            framer.push(chunk, record(&mut events));
        }
        framer.finish(record(&mut events));
        events
    }

    fn line(text: &str) -> Event {
        Event::Line(text.as_bytes().to_vec())
    }

    #[test]
    fn one_chunk_may_hold_many_lines() {
        assert_eq!(
            frame_chunks(10, &[b"a\nb\r\nc\n"]),
            [line("a"), line("b"), line("c")]
        );
    }

    #[test]
    fn one_line_may_span_many_chunks() {
        assert_eq!(
            frame_chunks(10, &[b"he", b"ll", b"o\r", b"\n"]),
            [line("hello")]
        );
    }

    #[test]
    fn only_a_cr_right_before_the_newline_is_dropped() {
        assert_eq!(frame_chunks(10, &[b"a\rb\r\r\n"]), [line("a\rb\r")]);
    }

    #[test]
    fn empty_lines_are_reported_for_the_caller_to_skip() {
        assert_eq!(frame_chunks(10, &[b"\n\r\n"]), [line(""), line("")]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_with_either_ending() {
        assert_eq!(frame_chunks(5, &[b"12345\n"]), [line("12345")]);
        assert_eq!(frame_chunks(5, &[b"12345\r\n"]), [line("12345")]);
        assert_eq!(frame_chunks(5, &[b"123", b"45\r", b"\n"]), [line("12345")]);
    }

    #[test]
    fn a_line_one_byte_over_is_too_long_and_the_next_line_survives() {
        assert_eq!(
            frame_chunks(5, &[b"123456\nok\n"]),
            [Event::TooLong, line("ok")]
        );
        assert_eq!(
            frame_chunks(5, &[b"12345", b"6", b"\nok\n"]),
            [Event::TooLong, line("ok")]
        );
        assert_eq!(
            frame_chunks(5, &[b"12345\r", b"x\nok\n"]),
            [Event::TooLong, line("ok")]
        );
    }

    #[test]
    fn too_long_is_reported_once_before_the_newline_arrives() {
        let mut framer = LineFramer::new(4);
        let mut events = Vec::new();
        framer.push(b"abcdefgh", record(&mut events));
        assert_eq!(events, [Event::TooLong]);
        framer.push(b"ijkl", record(&mut events));
        assert_eq!(events, [Event::TooLong], "reported only once");
        assert_eq!(framer.buffered(), 0, "the overlong bytes are not kept");
        framer.push(b"mn\nyes\n", record(&mut events));
        assert_eq!(events, [Event::TooLong, line("yes")]);
    }

    #[test]
    fn a_last_line_without_newline_is_delivered_at_close() {
        assert_eq!(frame_chunks(10, &[b"a\nhi"]), [line("a"), line("hi")]);
        assert_eq!(frame_chunks(10, &[b"hi\r"]), [line("hi")]);
    }

    #[test]
    fn an_overlong_line_cut_off_by_close_is_not_delivered() {
        assert_eq!(frame_chunks(3, &[b"abcdef"]), [Event::TooLong]);
    }

    #[test]
    fn megabytes_without_newline_hold_at_most_one_line() {
        let mut framer = LineFramer::new(1024);
        let chunk = vec![b'x'; 64 * 1024];
        let mut too_long = 0;
        for _ in 0..1024 {
            framer.push(&chunk, |frame| {
                assert_eq!(frame, Frame::TooLong);
                too_long += 1;
            });
            assert!(framer.buffered() <= 1025);
        }
        assert_eq!(too_long, 1);
    }

    #[test]
    fn the_largest_max_line_frames_lines_across_reads() {
        // Found by `cargo fuzz run framer`: `max_line + 1` overflowed (a panic in debug builds;
        // in release every unfinished read counted as too long).
        assert_eq!(
            frame_chunks(usize::MAX, &[b"a\r", b"\r\nb", b"c"]),
            [line("a\r"), line("bc")]
        );
    }

    /// Splits `bytes` at the given cut points (taken modulo its length).
    fn split_at_cuts<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&bytes[start..point]);
            start = point;
        }
        chunks.push(&bytes[start..]);
        chunks
    }

    /// Streams made mostly of the bytes that matter to framing.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => Just(b'a'),
                2 => Just(b'\n'),
                2 => Just(b'\r'),
                1 => any::<u8>(),
            ],
            0..200,
        )
    }

    proptest! {
        #[test]
        fn any_split_of_a_stream_yields_the_same_frames(
            bytes in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
            max_line in 0usize..12,
        ) {
            let whole = frame_chunks(max_line, &[&bytes]);
            let split = frame_chunks(max_line, &split_at_cuts(&bytes, &cuts));
            prop_assert_eq!(whole, split);
        }

        #[test]
        fn lines_are_within_the_limit_and_free_of_newlines(
            bytes in stream(),
            max_line in 0usize..12,
        ) {
            for event in frame_chunks(max_line, &[&bytes]) {
                if let Event::Line(line) = event {
                    prop_assert!(line.len() <= max_line);
                    prop_assert!(!line.contains(&b'\n'));
                }
            }
        }

        #[test]
        fn memory_never_exceeds_the_limit(
            bytes in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
            max_line in 0usize..12,
        ) {
            let mut framer = LineFramer::new(max_line);
            for chunk in split_at_cuts(&bytes, &cuts) {
                framer.push(chunk, |_| {});
                // One line's bytes, plus the `\r` that may yet end it.
                prop_assert!(framer.buffered() <= max_line + 1);
            }
        }
    }
}

//! The last chat lines, replayed to each newcomer after its welcome.
//!
//! Bounded two ways. `--history` says how many lines a newcomer sees; a byte budget says how
//! much they may weigh, because lines can be long (up to `--max-line`, and sanitising can
//! triple that) and a replay is queued for the newcomer all at once. The budget is at most half
//! of a client's `--max-queue`, so the replay leaves the other half for the live chat that
//! arrives while the newcomer reads it: a newcomer that reads is never disconnected as too
//! slow by its own welcome. The byte budget also bounds the server's memory whatever
//! `--history` says.
//!
//! Each line is kept as its own shared chunk, exactly as it was relayed: a replay pushes the
//! same chunks into every newcomer's queue without copying them.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::outbox::Chunk;

/// Most bytes the history keeps, whatever `--max-queue` allows: ten thousand lines of
/// ordinary chat (the most `--history` allows), and already far more scrollback than anyone
/// reads on joining.
pub const MAX_BYTES: usize = 1024 * 1024;

/// How many bytes of history to keep for clients whose queues hold `max_queue` bytes: half a
/// queue, so a replay always fits with room to spare, and never more than [`MAX_BYTES`].
pub fn budget(max_queue: usize) -> usize {
    (max_queue / 2).min(MAX_BYTES)
}

/// The most recent relayed lines, oldest first, within both bounds.
#[derive(Debug)]
pub struct History {
    /// Each line with its CRLF, as relayed.
    lines: VecDeque<Chunk>,
    /// Bytes in `lines`.
    bytes: usize,
    /// `--history`.
    max_lines: usize,
    /// See [`budget`].
    max_bytes: usize,
}

impl History {
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Keeps `line` as the newest and forgets the oldest lines beyond either bound. A line
    /// heavier than the whole budget leaves the history empty: the replay is always the most
    /// recent lines, with no gap.
    pub fn record(&mut self, line: &str) {
        if self.max_lines == 0 {
            return;
        }
        self.bytes += line.len();
        self.lines.push_back(Arc::from(line.as_bytes()));
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            let Some(oldest) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= oldest.len();
        }
    }

    /// Records each line of `lines` (a relayed chunk: lines ending in `line_end`), oldest
    /// first. Of a chunk longer than `--history`, only the lines that could stay are looked at:
    /// a flood of short lines costs no allocation per line it would forget at once.
    pub fn record_all(&mut self, lines: &str, line_end: &str) {
        let forgotten_at_once = lines
            .matches(line_end)
            .count()
            .saturating_sub(self.max_lines);
        for line in lines.split_inclusive(line_end).skip(forgotten_at_once) {
            self.record(line);
        }
    }

    /// The lines to replay, oldest first.
    pub fn lines(&self) -> impl Iterator<Item = &Chunk> {
        self.lines.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(history: &History) -> Vec<String> {
        history
            .lines()
            .map(|line| String::from_utf8(line.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn keeps_the_last_lines_oldest_first() {
        let mut history = History::new(2, MAX_BYTES);
        for line in ["one\r\n", "two\r\n", "three\r\n"] {
            history.record(line);
        }
        assert_eq!(kept(&history), ["two\r\n", "three\r\n"]);
    }

    #[test]
    fn keeps_no_more_bytes_than_its_budget() {
        let mut history = History::new(1000, 25);
        for i in 0..100 {
            history.record(&format!("line {i:04}\r\n"));
        }
        // Eleven bytes a line: two fit in 25, a third would not.
        assert_eq!(kept(&history), ["line 0098\r\n", "line 0099\r\n"]);
        assert_eq!(history.bytes, 22);
    }

    #[test]
    fn a_line_heavier_than_the_budget_leaves_nothing_rather_than_a_gap() {
        let mut history = History::new(10, 20);
        history.record("short\r\n");
        history.record(&format!("{}\r\n", "x".repeat(30)));
        assert!(kept(&history).is_empty());
        assert_eq!(history.bytes, 0);
        history.record("next\r\n");
        assert_eq!(kept(&history), ["next\r\n"]);
    }

    #[test]
    fn a_chunk_of_many_lines_keeps_its_last_ones() {
        let mut history = History::new(2, MAX_BYTES);
        history.record("before\r\n");
        history.record_all("a\r\nb\r\nc\r\n", "\r\n");
        assert_eq!(kept(&history), ["b\r\n", "c\r\n"]);
        history.record_all("d\r\n", "\r\n");
        assert_eq!(kept(&history), ["c\r\n", "d\r\n"]);
    }

    #[test]
    fn zero_lines_keeps_nothing() {
        let mut history = History::new(0, MAX_BYTES);
        history.record("hi\r\n");
        assert!(kept(&history).is_empty());
    }

    #[test]
    fn the_budget_is_half_a_queue_and_at_most_the_cap() {
        assert_eq!(budget(256 * 1024), 128 * 1024);
        assert_eq!(budget(1), 0);
        assert_eq!(budget(1024 * 1024 * 1024), MAX_BYTES);
    }
}

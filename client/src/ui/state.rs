//! Everything the terminal UI shows, as plain data: no terminal, no I/O, no drawing.
//!
//! The loop in [`super`] feeds it (a key, a pasted block, a server line) and [`super::draw`]
//! reads it, so every rule of the UI (what a line is, where the cursor goes, how far back the
//! scroll reaches, what Up recalls) is tested here with ordinary unit tests.
//!
//! Widths are display columns, not `char`s or bytes: `é` is one column, `漢` and most emoji
//! two, a combining accent none. The cursor sits after the display width of the graphemes
//! before it, and moves and deletes by grapheme, so it never lands inside an emoji.

use std::collections::VecDeque;
use std::ops::Range;

use chat_protocol::sanitize::is_forbidden;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

/// Lines the scrollback keeps: hours of a busy class, a few MiB at most. Older lines go first.
pub const SCROLLBACK_LINES: usize = 10_000;

/// Bytes of text the scrollback keeps, whatever the line count: a server that sends 10 000
/// lines of a MiB each must not cost us 10 GiB.
pub const SCROLLBACK_BYTES: usize = 8 * 1024 * 1024;

/// Entries input history keeps for Up/Down.
pub const HISTORY_ENTRIES: usize = 500;

/// Longest input line, in bytes: far above a server's `--max-line` (which answers with an
/// error), it only bounds what a runaway paste can make us hold.
pub const INPUT_BYTES: usize = 64 * 1024;

/// Rows the mouse wheel scrolls per notch, as most terminals and pagers do.
pub const WHEEL_ROWS: usize = 3;

/// How a newline inside the input (from a pasted block) is shown: one column, visibly a break.
pub const NEWLINE_SHOWN: char = '⏎';

/// What kind of line an entry of the conversation is; [`super::draw`] styles by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `NAME says: TEXT`, or any line from a server that is no notice.
    Chat,
    /// `NAME (private): TEXT` (v4's `/pm`): only we received it.
    Private,
    /// `* ...`: joins, leaves, renames, answers.
    Notice,
    /// `* error: ...`.
    Error,
    /// A line we sent, as we sent it.
    Own,
}

/// One line of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub text: String,
    /// Bytes at the start of `text` that name a sender (`alice` in `alice says: hi`), which
    /// are drawn in that name's colour; 0 when the line names nobody.
    pub name_len: usize,
}

impl Entry {
    /// A line the server sent, already sanitised, classified by how it starts (SPEC 3, 5:
    /// chat lines, private lines, notices, errors).
    pub fn received(text: &str) -> Entry {
        // A TAB is one character but up to eight columns, which a terminal decides: a space
        // keeps the layout ours.
        let text = text.replace('\t', " ");
        if text.starts_with("* error:") {
            return Entry {
                kind: Kind::Error,
                text,
                name_len: 0,
            };
        }
        if text.starts_with("* ") {
            return Entry {
                kind: Kind::Notice,
                text,
                name_len: 0,
            };
        }
        // Names (nicknames and addresses) hold no space, so the first space ends the name.
        let name_len = text.find(' ').unwrap_or(0);
        let after = &text[name_len..];
        let (kind, name_len) = if name_len > 0 && after.starts_with(" (private): ") {
            (Kind::Private, name_len)
        } else if name_len > 0 && after.starts_with(" says: ") {
            (Kind::Chat, name_len)
        } else {
            (Kind::Chat, 0)
        };
        Entry {
            kind,
            text,
            name_len,
        }
    }

    /// A line we sent, shown as `> TEXT`.
    pub fn own(line: &str) -> Entry {
        Entry {
            kind: Kind::Own,
            text: format!("> {line}"),
            name_len: 0,
        }
    }
}

/// The conversation: received and sent lines, oldest first, capped in lines and bytes.
#[derive(Debug, Default)]
pub struct Scrollback {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl Scrollback {
    pub fn push(&mut self, entry: Entry) {
        self.bytes += entry.text.len();
        self.entries.push_back(entry);
        while self.entries.len() > SCROLLBACK_LINES
            || (self.bytes > SCROLLBACK_BYTES && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.text.len();
            }
        }
    }

    pub fn entries(&self) -> &VecDeque<Entry> {
        &self.entries
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Cuts `text` into rows of at most `width` columns: at the last space that fits where there
/// is one, else at a grapheme boundary. Returns byte ranges of `text`; a row's trailing space
/// is part of it. A grapheme wider than the row gets a row of its own.
pub fn wrap(text: &str, width: usize) -> Vec<Range<usize>> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut start = 0;
    let mut columns = 0;
    // Where the row could end at a space, and the columns from there to here.
    let mut last_space: Option<(usize, usize)> = None;
    for (at, grapheme) in text.grapheme_indices(true) {
        let w = grapheme.width();
        if columns + w > width && at > start {
            match last_space {
                Some((end, after)) if end > start => {
                    rows.push(start..end);
                    start = end;
                    columns = after;
                }
                _ => {
                    rows.push(start..at);
                    start = at;
                    columns = 0;
                }
            }
            last_space = None;
        }
        columns += w;
        if grapheme == " " {
            last_space = Some((at + 1, 0));
        } else if let Some((_, after)) = last_space.as_mut() {
            *after += w;
        }
    }
    if start < text.len() || rows.is_empty() {
        rows.push(start..text.len());
    }
    rows
}

/// The line being typed, and the cursor in it (a byte offset, always on a grapheme boundary).
#[derive(Debug, Default)]
pub struct Input {
    text: String,
    cursor: usize,
    /// The first column shown when the line is wider than the screen; kept between frames so
    /// the view moves only when the cursor would leave it.
    scrolled: usize,
}

impl Input {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Inserts typed or pasted text at the cursor. Control characters are dropped (a paste can
    /// hold escapes too), a TAB becomes a space, line breaks (`\n`, `\r\n`, `\r`) are kept as
    /// `\n`: a pasted block stays one block until it is sent. Stops at [`INPUT_BYTES`].
    pub fn insert(&mut self, typed: &str) {
        let mut clean = String::with_capacity(typed.len());
        let mut chars = typed.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    if chars.peek() != Some(&'\n') {
                        clean.push('\n');
                    }
                }
                '\n' => clean.push('\n'),
                '\t' => clean.push(' '),
                c if is_forbidden(c) => {}
                c => clean.push(c),
            }
        }
        let room = INPUT_BYTES.saturating_sub(self.text.len());
        if clean.len() > room {
            let mut end = room;
            while !clean.is_char_boundary(end) {
                end -= 1;
            }
            clean.truncate(end);
        }
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    /// Replaces the whole line (history recall), cursor at the end.
    pub fn set(&mut self, text: &str) {
        self.text = text.to_owned();
        self.cursor = self.text.len();
    }

    /// Empties the line and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        self.scrolled = 0;
        std::mem::take(&mut self.text)
    }

    fn previous_boundary(&self) -> usize {
        self.text[..self.cursor]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(at, _)| at)
    }

    fn next_boundary(&self) -> usize {
        self.text[self.cursor..]
            .graphemes(true)
            .next()
            .map_or(self.cursor, |g| self.cursor + g.len())
    }

    pub fn left(&mut self) {
        self.cursor = self.previous_boundary();
    }

    pub fn right(&mut self) {
        self.cursor = self.next_boundary();
    }

    pub fn home(&mut self) {
        self.cursor = 0;
    }

    pub fn end(&mut self) {
        self.cursor = self.text.len();
    }

    /// Deletes the grapheme before the cursor.
    pub fn backspace(&mut self) {
        let from = self.previous_boundary();
        self.text.replace_range(from..self.cursor, "");
        self.cursor = from;
    }

    /// Deletes the grapheme under the cursor.
    pub fn delete(&mut self) {
        let to = self.next_boundary();
        self.text.replace_range(self.cursor..to, "");
    }

    /// Ctrl-W: deletes back to the start of the word before the cursor.
    pub fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let kept = before.trim_end_matches(' ');
        let from = kept.rfind([' ', '\n']).map_or(0, |space| space + 1);
        self.text.replace_range(from..self.cursor, "");
        self.cursor = from;
    }

    /// Ctrl-U: deletes everything before the cursor.
    pub fn delete_to_start(&mut self) {
        self.text.replace_range(..self.cursor, "");
        self.cursor = 0;
    }

    /// Ctrl-K: deletes everything from the cursor on.
    pub fn delete_to_end(&mut self) {
        self.text.truncate(self.cursor);
    }

    /// The line as drawn: a newline (from a paste) shows as [`NEWLINE_SHOWN`].
    pub fn shown(&self) -> String {
        self.text.replace('\n', &NEWLINE_SHOWN.to_string())
    }

    /// The cursor's column in the whole line: the display width of what is before it.
    pub fn cursor_column(&self) -> usize {
        shown_width(&self.text[..self.cursor])
    }

    /// The first column to show in a field `width` columns wide so that the cursor is in it,
    /// moving the view only when the cursor would leave it.
    pub fn view_start(&mut self, width: usize) -> usize {
        let width = width.max(1);
        let cursor = self.cursor_column();
        if cursor < self.scrolled {
            self.scrolled = cursor;
        } else if cursor >= self.scrolled + width {
            self.scrolled = cursor + 1 - width;
        }
        // Deleting may leave room on the right that the start should fill again.
        let total = shown_width(&self.text);
        if total < self.scrolled + width {
            self.scrolled = self.scrolled.min((total + 1).saturating_sub(width));
        }
        self.scrolled
    }
}

/// Display width of input text, a newline counting as the one column of [`NEWLINE_SHOWN`].
fn shown_width(text: &str) -> usize {
    text.split('\n').map(UnicodeWidthStr::width).sum::<usize>() + text.matches('\n').count()
}

/// Lines sent before, for Up and Down, with the line being typed kept aside while browsing.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<String>,
    /// The entry shown, while browsing.
    at: Option<usize>,
    /// What was typed before Up was first pressed, given back by Down past the newest entry.
    draft: String,
}

impl History {
    pub fn remember(&mut self, line: &str) {
        self.at = None;
        if self.entries.back().map(String::as_str) == Some(line) {
            return;
        }
        self.entries.push_back(line.to_owned());
        if self.entries.len() > HISTORY_ENTRIES {
            self.entries.pop_front();
        }
    }

    /// The entry before the one shown (or the newest), keeping `typed` as the draft.
    pub fn older(&mut self, typed: &str) -> Option<&str> {
        let at = match self.at {
            None => {
                self.draft = typed.to_owned();
                self.entries.len().checked_sub(1)?
            }
            Some(at) => at.saturating_sub(1),
        };
        self.at = Some(at);
        self.entries.get(at).map(String::as_str)
    }

    /// The entry after the one shown; past the newest, the draft. `None` when not browsing.
    pub fn newer(&mut self) -> Option<&str> {
        let at = self.at? + 1;
        if at < self.entries.len() {
            self.at = Some(at);
            self.entries.get(at).map(String::as_str)
        } else {
            self.at = None;
            Some(&self.draft)
        }
    }
}

/// What the status line says.
#[derive(Debug)]
pub struct Status {
    /// The server's address as dialled.
    pub addr: String,
    pub tls: bool,
    /// What the server calls us: our address from v4's welcome, our nickname once `/nick`
    /// succeeded. `None` on servers that never say (v1-v3).
    pub me: Option<String>,
}

impl Status {
    /// Learns who we are from what the server says to us: the welcome, a rename of us, or the
    /// answer to `/nick` alone (SPEC 5).
    fn observe(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("* welcome ") {
            if let Some((name, _)) = rest.split_once(", ") {
                self.me = Some(name.to_owned());
            }
        } else if let Some(name) = line.strip_prefix("* you are ") {
            self.me = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("* ") {
            if let (Some(me), Some((old, new))) = (&self.me, rest.split_once(" is now ")) {
                // Names are compared ignoring ASCII case, as the server does.
                if old.eq_ignore_ascii_case(me) && !new.contains(' ') {
                    self.me = Some(new.to_owned());
                }
            }
        }
    }
}

/// What Enter hands to the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Lines to send, in order (a pasted block is several).
    pub lines: Vec<String>,
    /// The last line was `/quit`: leave once it is sent.
    pub quit: bool,
}

/// The whole UI state.
#[derive(Debug)]
pub struct State {
    pub scrollback: Scrollback,
    pub input: Input,
    pub history: History,
    pub status: Status,
    /// Rows scrolled back from the newest line; 0 follows the conversation.
    scroll: usize,
    /// Columns and rows of the conversation area at the last frame, for paging and for keeping
    /// a scrolled-back view still while lines arrive.
    view: (usize, usize),
}

impl State {
    pub fn new(addr: String, tls: bool) -> State {
        State {
            scrollback: Scrollback::default(),
            input: Input::default(),
            history: History::default(),
            status: Status {
                addr,
                tls,
                me: None,
            },
            scroll: 0,
            view: (80, 24),
        }
    }

    /// A line from the server, sanitised.
    pub fn received(&mut self, line: &str) {
        self.status.observe(line);
        self.add(Entry::received(line));
    }

    fn add(&mut self, entry: Entry) {
        if self.scroll > 0 {
            // Someone reading back keeps seeing the same lines while new ones arrive below.
            self.scroll += wrap(&entry.text, self.view.0).len();
        }
        self.scrollback.push(entry);
        if self.scroll > 0 {
            self.scroll = self.clamped(self.scroll);
        }
    }

    /// Enter: what to send, or `None` when there is nothing to send. Blank lines of a pasted
    /// block are skipped (a server ignores them); lines after a `/quit` are not sent.
    pub fn submit(&mut self) -> Option<Submitted> {
        let typed = self.input.take();
        if typed.trim().is_empty() {
            return None;
        }
        self.history.remember(&typed);
        let mut lines = Vec::new();
        let mut quit = false;
        for line in typed.split('\n') {
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            self.add(Entry::own(line));
            lines.push(line.to_owned());
            if is_quit(line) {
                quit = true;
                break;
            }
        }
        // Sending is what brings the view back to the conversation, as in most chat clients.
        self.scroll = 0;
        Some(Submitted { lines, quit })
    }

    /// Up: the previous line sent.
    pub fn history_older(&mut self) {
        if let Some(line) = self.history.older(self.input.text()) {
            let line = line.to_owned();
            self.input.set(&line);
        }
    }

    /// Down: the next line sent, then back to what was being typed.
    pub fn history_newer(&mut self) {
        if let Some(line) = self.history.newer() {
            let line = line.to_owned();
            self.input.set(&line);
        }
    }

    /// The conversation area is `width` columns by `height` rows now.
    pub fn set_view(&mut self, width: usize, height: usize) {
        self.view = (width.max(1), height.max(1));
        self.scroll = self.clamped(self.scroll);
    }

    pub fn scroll(&self) -> usize {
        self.scroll
    }

    /// PageUp: a screen back, keeping one row of the last screen for context.
    pub fn page_up(&mut self) {
        self.scroll_up(self.view.1.saturating_sub(1).max(1));
    }

    /// PageDown: a screen forward.
    pub fn page_down(&mut self) {
        self.scroll_down(self.view.1.saturating_sub(1).max(1));
    }

    pub fn scroll_up(&mut self, rows: usize) {
        self.scroll = self.clamped(self.scroll + rows);
    }

    pub fn scroll_down(&mut self, rows: usize) {
        self.scroll = self.scroll.saturating_sub(rows);
    }

    /// `wanted`, or less if the scrollback does not reach that far: the view can go back to
    /// the first screen, no further. Wraps only as many lines as it must.
    fn clamped(&self, wanted: usize) -> usize {
        let (width, height) = self.view;
        let mut rows = 0;
        for entry in self.scrollback.entries().iter().rev() {
            rows += wrap(&entry.text, width).len();
            if rows >= wanted + height {
                return wanted;
            }
        }
        rows.saturating_sub(height)
    }
}

/// `/quit` and `/quit REASON`: the command ends with the line, or at a space (SPEC 5; command
/// words ignore case).
fn is_quit(line: &str) -> bool {
    let word = line.split(' ').next().unwrap_or("");
    word.eq_ignore_ascii_case("/quit")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_lines_are_classified_by_how_they_start() {
        let chat = Entry::received("alice says: hi (private): no");
        assert_eq!((chat.kind, chat.name_len), (Kind::Chat, 5));
        let private = Entry::received("bob (private): lunch?");
        assert_eq!((private.kind, private.name_len), (Kind::Private, 3));
        assert_eq!(
            Entry::received("* bob joined (2 online)").kind,
            Kind::Notice
        );
        assert_eq!(Entry::received("* error: slow down").kind, Kind::Error);
        let echo = Entry::received("127.0.0.1:5000 says: hi");
        assert_eq!((echo.kind, echo.name_len), (Kind::Chat, 14));
        let other = Entry::received("hello there");
        assert_eq!((other.kind, other.name_len), (Kind::Chat, 0));
    }

    #[test]
    fn a_tab_is_shown_as_a_space() {
        assert_eq!(Entry::received("a\tb").text, "a b");
    }

    #[test]
    fn scrollback_is_capped_in_lines() {
        let mut scrollback = Scrollback::default();
        for n in 0..SCROLLBACK_LINES + 10 {
            scrollback.push(Entry::received(&n.to_string()));
        }
        assert_eq!(scrollback.entries().len(), SCROLLBACK_LINES);
        assert_eq!(scrollback.entries()[0].text, "10");
    }

    #[test]
    fn scrollback_is_capped_in_bytes() {
        let mut scrollback = Scrollback::default();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..20 {
            scrollback.push(Entry::received(&big));
        }
        assert!(scrollback.bytes() <= SCROLLBACK_BYTES);
        assert_eq!(
            scrollback.bytes(),
            scrollback
                .entries()
                .iter()
                .map(|e| e.text.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn wrap_breaks_at_spaces_and_inside_long_words() {
        let text = "hello world abcdefghij";
        let rows: Vec<&str> = wrap(text, 8).into_iter().map(|r| &text[r]).collect();
        assert_eq!(rows, ["hello ", "world ", "abcdefgh", "ij"]);
    }

    #[test]
    fn wrap_counts_columns_not_chars() {
        let text = "漢字漢字漢";
        let rows: Vec<&str> = wrap(text, 4).into_iter().map(|r| &text[r]).collect();
        assert_eq!(rows, ["漢字", "漢字", "漢"]);
        // A two-column grapheme on a one-column screen still shows, alone.
        assert_eq!(wrap("漢", 1), vec![0..3]);
        assert_eq!(wrap("", 10), vec![0..0]);
    }

    #[test]
    fn cursor_column_is_the_display_width_before_it() {
        let mut input = Input::default();
        input.insert("a漢👍🏽é");
        assert_eq!(input.cursor_column(), 1 + 2 + 2 + 1);
        input.left();
        assert_eq!(input.cursor_column(), 5);
        // The skin-tone emoji is one grapheme: one step over it, one backspace deletes it.
        input.left();
        assert_eq!(input.cursor_column(), 3);
        input.right();
        input.backspace();
        assert_eq!(input.text(), "a漢é");
        assert_eq!(input.cursor_column(), 3);
    }

    #[test]
    fn editing_keys_work_on_words_and_ends() {
        let mut input = Input::default();
        input.insert("one two  three");
        input.delete_word();
        assert_eq!(input.text(), "one two  ");
        input.home();
        input.delete();
        assert_eq!(input.text(), "ne two  ");
        input.right();
        input.delete_to_end();
        assert_eq!(input.text(), "n");
        input.end();
        input.insert("x");
        input.left();
        input.delete_to_start();
        assert_eq!(input.text(), "x");
    }

    #[test]
    fn pasted_text_loses_control_characters_and_keeps_its_lines() {
        let mut input = Input::default();
        input.insert("a\x1b[2Jb\r\nc\rd\te\u{202e}");
        assert_eq!(input.text(), "a[2Jb\nc\nd e");
        assert_eq!(input.shown(), "a[2Jb⏎c⏎d e");
        assert_eq!(input.cursor_column(), input.shown().width());
    }

    #[test]
    fn input_is_capped() {
        let mut input = Input::default();
        input.insert(&"é".repeat(INPUT_BYTES));
        assert!(input.text().len() <= INPUT_BYTES);
        input.insert("more");
        assert!(input.text().len() <= INPUT_BYTES);
    }

    #[test]
    fn the_input_view_follows_the_cursor() {
        let mut input = Input::default();
        input.insert("0123456789");
        assert_eq!(input.view_start(4), 7);
        input.home();
        assert_eq!(input.view_start(4), 0);
        input.end();
        input.left();
        input.left();
        assert_eq!(
            input.view_start(4),
            5,
            "moves only as far as the cursor needs"
        );
        input.take();
        assert_eq!(input.view_start(4), 0);
    }

    #[test]
    fn submit_sends_each_line_of_a_paste_and_shows_them() {
        let mut state = State::new("127.0.0.1:8080".into(), false);
        state.input.insert("first\n\n  \nsecond  ");
        let sent = state.submit().unwrap();
        assert_eq!(sent.lines, ["first", "second"]);
        assert!(!sent.quit);
        let shown: Vec<&str> = state
            .scrollback
            .entries()
            .iter()
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(shown, ["> first", "> second"]);
        assert!(state.input.text().is_empty());
        assert_eq!(state.submit(), None, "an empty line sends nothing");
    }

    #[test]
    fn quit_is_sent_then_leaves() {
        let mut state = State::new("x".into(), false);
        state.input.insert("/QUIT see you\nnot sent");
        let sent = state.submit().unwrap();
        assert_eq!(sent.lines, ["/QUIT see you"]);
        assert!(sent.quit);
        state.input.insert("/quitter");
        assert!(!state.submit().unwrap().quit);
    }

    #[test]
    fn history_recalls_sent_lines_and_gives_back_the_draft() {
        let mut state = State::new("x".into(), false);
        for line in ["one", "two", "two"] {
            state.input.insert(line);
            state.submit();
        }
        state.input.insert("dra");
        state.history_older();
        assert_eq!(state.input.text(), "two");
        state.history_older();
        assert_eq!(state.input.text(), "one", "a repeated line is kept once");
        state.history_older();
        assert_eq!(state.input.text(), "one");
        state.history_newer();
        assert_eq!(state.input.text(), "two");
        state.history_newer();
        assert_eq!(state.input.text(), "dra");
        state.history_newer();
        assert_eq!(state.input.text(), "dra");
    }

    #[test]
    fn status_learns_who_we_are() {
        let mut state = State::new("x".into(), false);
        state.received("* welcome 127.0.0.1:5000, 2 online - type /help for commands");
        assert_eq!(state.status.me.as_deref(), Some("127.0.0.1:5000"));
        state.received("* bob is now carol");
        assert_eq!(state.status.me.as_deref(), Some("127.0.0.1:5000"));
        state.received("* 127.0.0.1:5000 is now alice");
        assert_eq!(state.status.me.as_deref(), Some("alice"));
        state.received("* ALICE is now Al");
        assert_eq!(state.status.me.as_deref(), Some("Al"));
        state.received("* you are Al2");
        assert_eq!(state.status.me.as_deref(), Some("Al2"));
    }

    #[test]
    fn scrolling_back_is_bounded_and_stays_put_while_lines_arrive() {
        let mut state = State::new("x".into(), false);
        state.set_view(20, 5);
        for n in 0..12 {
            state.received(&format!("line {n}"));
        }
        state.page_up();
        assert_eq!(state.scroll(), 4);
        state.page_up();
        state.page_up();
        assert_eq!(state.scroll(), 12 - 5, "never past the first screen");
        state.page_down();
        assert_eq!(state.scroll(), 3);
        state.received("a line long enough to take two rows");
        assert_eq!(state.scroll(), 5, "the view keeps showing the same lines");
        state.scroll_down(WHEEL_ROWS * 10);
        assert_eq!(state.scroll(), 0);
        state.received("new");
        assert_eq!(state.scroll(), 0, "at the bottom, the view follows");
    }

    #[test]
    fn sending_returns_to_the_newest_line() {
        let mut state = State::new("x".into(), false);
        state.set_view(20, 2);
        for n in 0..10 {
            state.received(&format!("line {n}"));
        }
        state.page_up();
        state.input.insert("hi");
        state.submit();
        assert_eq!(state.scroll(), 0);
    }
}

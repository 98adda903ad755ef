//! How [`State`] looks: the conversation above, a status line, the input line at the bottom.
//!
//! ```text
//! ┌───────────────────────────────────────────┐
//! │* welcome 127.0.0.1:52350, 2 online - ...  │ conversation: newest at the bottom, wrapped,
//! │alice says: hi all                         │ scrolled back with PageUp / the wheel
//! │> hello                                    │
//! │ 127.0.0.1:8080 · plain · connected · ...  │ status line
//! │> typing here_                             │ input line: the cursor is the terminal's
//! └───────────────────────────────────────────┘
//! ```
//!
//! Drawing is a pure function of the state (plus the input's remembered horizontal scroll), so
//! it is tested with ratatui's `TestBackend`: no terminal needed.

use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::state::{wrap, Entry, Kind, State};

/// What stands before the input line.
const PROMPT: &str = "> ";

/// Colours a name can get: readable on dark and light backgrounds (no black, white or grey,
/// which one of them would hide, and no red, which is for errors).
const NAME_COLOURS: [Color; 10] = [
    Color::Green,
    Color::Yellow,
    Color::Blue,
    Color::Magenta,
    Color::Cyan,
    Color::LightGreen,
    Color::LightYellow,
    Color::LightBlue,
    Color::LightMagenta,
    Color::LightCyan,
];

/// One colour per name, the same in every client and every run: an FNV-1a hash of the name,
/// ignoring ASCII case as the server does when it compares names.
pub fn name_colour(name: &str) -> Color {
    const FNV_OFFSET: u32 = 0x811c_9dc5;
    const FNV_PRIME: u32 = 0x0100_0193;
    let hash = name.bytes().fold(FNV_OFFSET, |hash, byte| {
        (hash ^ u32::from(byte.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
    });
    NAME_COLOURS[hash as usize % NAME_COLOURS.len()]
}

/// Draws the whole screen, and tells `state` how big the conversation area is now.
pub fn draw(frame: &mut Frame<'_>, state: &mut State) {
    let [conversation, status, input] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    state.set_view(conversation.width.into(), conversation.height.into());
    draw_conversation(frame, conversation, state);
    draw_status(frame, status, state);
    draw_input(frame, input, state);
}

/// The rows that fit, newest at the bottom, `state.scroll()` rows back.
fn draw_conversation(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let (width, height) = (usize::from(area.width), usize::from(area.height));
    if width == 0 || height == 0 {
        return;
    }
    let wanted = height + state.scroll();
    // Walk back from the newest line, wrapping only what may be shown.
    let mut rows: Vec<Line<'_>> = Vec::with_capacity(wanted);
    for entry in state.scrollback.entries().iter().rev() {
        let wrapped = wrap(&entry.text, width);
        for range in wrapped.into_iter().rev() {
            rows.push(styled_row(entry, range));
        }
        if rows.len() >= wanted {
            break;
        }
    }
    let shown: Vec<Line<'_>> = rows
        .into_iter()
        .skip(state.scroll())
        .take(height)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    // Fewer rows than the area: they sit at the bottom, next to the input, as in a chat.
    let top = area.y + area.height - shown.len() as u16;
    let area = Rect::new(area.x, top, area.width, shown.len() as u16);
    frame.render_widget(Paragraph::new(shown), area);
}

/// One row of an entry: the part of the sender's name it holds in the name's colour, the rest
/// in the style of the entry's kind.
fn styled_row(entry: &Entry, range: std::ops::Range<usize>) -> Line<'_> {
    let text = &entry.text;
    let body = match entry.kind {
        Kind::Chat => Style::new(),
        Kind::Private => Style::new()
            .fg(Color::LightMagenta)
            .add_modifier(Modifier::BOLD),
        Kind::Notice => Style::new().add_modifier(Modifier::DIM),
        Kind::Error => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Kind::Own => Style::new().add_modifier(Modifier::BOLD),
    };
    let name_end = entry.name_len.clamp(range.start, range.end);
    let mut spans = Vec::with_capacity(2);
    if range.start < name_end {
        let name = &text[..entry.name_len];
        let style = Style::new()
            .fg(name_colour(name))
            .add_modifier(Modifier::BOLD);
        spans.push(Span::styled(&text[range.start..name_end], style));
    }
    if name_end < range.end {
        spans.push(Span::styled(&text[name_end..range.end], body));
    }
    Line::from(spans)
}

/// ` 127.0.0.1:8080 · TLS · connected · you are alice`, and how far back the view is.
fn draw_status(frame: &mut Frame<'_>, area: Rect, state: &State) {
    let status = &state.status;
    let bar = Style::new().add_modifier(Modifier::REVERSED);
    let mut spans = vec![
        Span::raw(format!(" {} · ", status.addr)),
        Span::raw(if status.tls { "TLS" } else { "plain" }),
        Span::raw(" · "),
        // Always, while this screen is up: when the connection ends, so does the UI, and the
        // last lines are printed on the normal screen (`ui::run`).
        Span::styled("connected", Style::new().fg(Color::Green)),
    ];
    if let Some(me) = &status.me {
        spans.push(Span::raw(format!(" · you are {me}")));
    }
    if state.scroll() > 0 {
        spans.push(Span::raw(format!(
            " · {} rows back (PageDown)",
            state.scroll()
        )));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)).style(bar), area);
}

/// The prompt and the part of the input around the cursor; the terminal's cursor goes where
/// the next character will be: after the display width of the graphemes before it.
fn draw_input(frame: &mut Frame<'_>, area: Rect, state: &mut State) {
    let prompt_width = PROMPT.width() as u16;
    if area.width <= prompt_width || area.height == 0 {
        return;
    }
    let field = usize::from(area.width - prompt_width);
    let start = state.input.view_start(field);
    let shown = state.input.shown();
    // Graphemes that lie wholly within [start, start + field) columns.
    let mut visible = String::new();
    let mut column = 0;
    for grapheme in shown.graphemes(true) {
        let width = grapheme.width();
        if column >= start && column + width <= start + field {
            visible.push_str(grapheme);
        } else if column < start && column + width > start {
            // A wide grapheme cut by the left edge: its visible half is a blank.
            visible.push(' ');
        }
        column += width;
        if column >= start + field {
            break;
        }
    }
    let line = Line::from(vec![
        Span::styled(PROMPT, Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(visible),
    ]);
    frame.render_widget(Paragraph::new(line), area);
    let cursor = (state.input.cursor_column() - start) as u16;
    frame.set_cursor_position(Position::new(area.x + prompt_width + cursor, area.y));
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::Terminal;

    use super::*;

    fn render(state: &mut State, width: u16, height: u16) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| draw(frame, state)).unwrap();
        terminal
    }

    fn rows(buffer: &Buffer) -> Vec<String> {
        let area = buffer.area;
        (0..area.height)
            .map(|y| {
                let mut row = String::new();
                let mut x = 0;
                while x < area.width {
                    let symbol = buffer[(x, y)].symbol();
                    row.push_str(symbol);
                    // A wide character covers the next cell too.
                    x += symbol.width().max(1) as u16;
                }
                row.trim_end().to_owned()
            })
            .collect()
    }

    #[test]
    fn lines_sit_above_the_status_and_the_input() {
        let mut state = State::new("127.0.0.1:8080".into(), false);
        state.received("* welcome 127.0.0.1:5000, 2 online - type /help");
        state.received("alice says: hi");
        state.input.insert("typing");
        let mut terminal = render(&mut state, 50, 6);
        assert_eq!(
            rows(terminal.backend().buffer()),
            [
                "",
                "",
                "* welcome 127.0.0.1:5000, 2 online - type /help",
                "alice says: hi",
                " 127.0.0.1:8080 · plain · connected · you are 127.",
                "> typing",
            ]
        );
        terminal
            .backend_mut()
            .assert_cursor_position(Position::new(8, 5));
    }

    #[test]
    fn long_lines_wrap_and_the_newest_row_is_last() {
        let mut state = State::new("x".into(), true);
        state.received("bob says: a long line that wraps");
        let terminal = render(&mut state, 14, 5);
        assert_eq!(
            rows(terminal.backend().buffer()),
            [
                "bob says: a",
                "long line",
                "that wraps",
                " x · TLS · con",
                ">"
            ]
        );
    }

    #[test]
    fn the_cursor_is_after_the_display_width_of_wide_text() {
        let mut state = State::new("x".into(), false);
        state.input.insert("漢字👍 ok");
        state.input.left();
        state.input.left();
        let mut terminal = render(&mut state, 30, 3);
        assert_eq!(rows(terminal.backend().buffer())[2], "> 漢字👍 ok");
        // "> " + 漢 (2) + 字 (2) + 👍 (2) + " " (1)
        terminal
            .backend_mut()
            .assert_cursor_position(Position::new(9, 2));
    }

    #[test]
    fn a_long_input_scrolls_to_keep_the_cursor_in_view() {
        let mut state = State::new("x".into(), false);
        state.input.insert("abcdefghijklmnop");
        let mut terminal = render(&mut state, 10, 3);
        assert_eq!(rows(terminal.backend().buffer())[2], "> jklmnop");
        terminal
            .backend_mut()
            .assert_cursor_position(Position::new(9, 2));
    }

    #[test]
    fn kinds_of_line_are_styled_apart() {
        let mut state = State::new("x".into(), false);
        state.received("* bob joined (2 online)");
        state.received("* error: slow down");
        state.received("bob (private): psst");
        state.received("bob says: hi");
        state.input.insert("mine");
        state.submit();
        let terminal = render(&mut state, 30, 7);
        let buffer = terminal.backend().buffer();
        assert!(buffer[(0, 0)].modifier.contains(Modifier::DIM));
        assert_eq!(buffer[(0, 1)].fg, Color::Red);
        assert_eq!(buffer[(0, 2)].fg, name_colour("bob"));
        assert_eq!(buffer[(5, 2)].fg, Color::LightMagenta);
        assert_eq!(buffer[(0, 3)].fg, name_colour("bob"));
        assert_eq!(buffer[(5, 3)].fg, Color::Reset);
        assert!(buffer[(2, 4)].modifier.contains(Modifier::BOLD));
        assert_eq!(rows(buffer)[4], "> mine");
    }

    #[test]
    fn a_name_keeps_its_colour_whatever_its_case() {
        assert_eq!(name_colour("Alice"), name_colour("alice"));
        let colours: std::collections::HashSet<_> = ["alice", "bob", "carol", "dave", "eve"]
            .iter()
            .map(|name| name_colour(name))
            .collect();
        assert!(colours.len() > 1, "names do not all share one colour");
    }

    #[test]
    fn scrolling_back_shows_older_lines_and_says_so() {
        let mut state = State::new("x".into(), false);
        for n in 0..10 {
            state.received(&format!("line {n}"));
        }
        render(&mut state, 60, 5);
        state.page_up();
        let terminal = render(&mut state, 60, 5);
        let shown = rows(terminal.backend().buffer());
        assert_eq!(shown[..3], ["line 5", "line 6", "line 7"]);
        assert!(shown[3].ends_with("2 rows back (PageDown)"), "{shown:?}");
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        let mut state = State::new("x".into(), false);
        state.received("hello");
        state.input.insert("漢字");
        for (width, height) in [(0, 0), (1, 1), (2, 2), (3, 1), (1, 5)] {
            render(&mut state, width, height);
        }
    }
}

//! The terminal UI (SPEC 10): the conversation above, the line you type below, and nothing
//! that arrives ever lands in the middle of what you are typing.
//!
//! # One owner for the screen
//!
//! Line mode prints a server line the moment it arrives, wherever the terminal's cursor is,
//! which is in the middle of the line being typed. Here nothing prints on its own: every
//! source only reports, and one loop owns the state and draws the whole screen from it.
//!
//! ```text
//!  terminal events thread: keys, paste, mouse, resize --+
//!  server reader task: frame, sanitise each line -------+--> the UI loop: update State,
//!  signals: SIGTERM, SIGHUP, SIGINT --------------------+    redraw at most every FRAME
//!                                                               |
//!  server <-- writer task <-- typed lines (channel) <-----------+
//! ```
//!
//! - [`state`] is what is shown, as plain data: the scrollback (capped in lines and bytes),
//!   the input line with its cursor, input history, the scroll position, the status. It is
//!   unit tested without a terminal.
//! - [`draw`] turns the state into ratatui widgets; tested with ratatui's `TestBackend`.
//! - [`terminal`] puts the terminal in raw mode, on the alternate screen, with bracketed
//!   paste and the mouse, and restores it on every way out.
//!
//! # Redraws are paced, keys come first
//!
//! The loop marks the screen dirty on every change and draws at most once every [`FRAME`]. A
//! burst of thousands of server lines is a burst of cheap state updates (taken
//! [`LINES_PER_TURN`] at a time) and one redraw per frame. Between batches the loop looks at
//! the keyboard first, then at the frame that is due, then at the server: typing is never kept
//! waiting and the screen keeps up, whatever the room does.
//!
//! # Leaving
//!
//! Ctrl-C and Ctrl-D (raw mode delivers them as keys, not as a signal or end of input),
//! `/quit` (sent first, so the server announces the reason), SIGTERM, SIGHUP and SIGINT all
//! leave the same way: the writer sends what was typed and half-closes, the terminal is
//! restored, the process exits 0. When the server closes the connection, the client leaves
//! too, and prints the last lines of the conversation on the normal screen, so the reason
//! (`* server shutting down`, `* error: too slow, disconnected`) is still there to read.
//!
//! # A pasted block
//!
//! With bracketed paste, a pasted block arrives as one event. It goes into the input line,
//! its line breaks shown as `⏎`, so it can be read and edited; Enter sends each of its lines,
//! in order, and shows each as sent. Nothing is sent by pasting alone.

mod draw;
mod state;
mod terminal;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context};
use chat_protocol::{sanitize, Frame, LineFramer};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind,
};
use ratatui::Terminal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use self::state::{State, Submitted, WHEEL_ROWS};
use self::terminal::TerminalModes;
use crate::line::send_typed_lines;
use crate::{Connection, MAX_SERVER_LINE, READ_CHUNK, TYPED_LINES_QUEUED};

/// Shortest time between two redraws: 60 frames a second, as smooth as a terminal shows, and
/// a cap on what a flood of lines can cost in drawing.
const FRAME: Duration = Duration::from_micros(1_000_000 / 60);

/// Server lines the loop takes in one turn before it looks at the keyboard again.
const LINES_PER_TURN: usize = 256;

/// Server lines read but not yet shown. When the loop falls behind, the reader waits, so TCP
/// slows the server instead of our memory growing.
const SERVER_LINES_QUEUED: usize = 1024;

/// Terminal events read but not yet handled: a fast typist, or a burst of mouse reports.
const TERMINAL_EVENTS_QUEUED: usize = 256;

/// How long leaving waits for the writer to send the last typed lines (a `/quit REASON`) and
/// half-close, before the process exits anyway.
const LEAVE_GRACE: Duration = Duration::from_secs(1);

/// Conversation lines printed on the normal screen when the server closed the connection.
const LINES_KEPT_ON_CLOSE: usize = 5;

/// What the server reader reports.
#[derive(Debug)]
enum FromServer {
    Line(String),
    /// A line longer than [`MAX_SERVER_LINE`] was skipped.
    TooLong,
    /// The server closed the connection.
    Closed,
    /// The connection broke (a reset).
    Lost(io::Error),
}

/// Why the loop ended.
#[derive(Debug)]
enum Ending {
    /// Ctrl-C, Ctrl-D, `/quit`, or a signal.
    Left,
    Closed,
    Lost(io::Error),
}

/// Runs the UI over an open connection until the user leaves or the connection ends.
pub async fn run(server: Box<dyn Connection>, addr: SocketAddr, tls: bool) -> anyhow::Result<()> {
    let (from_server, to_server) = tokio::io::split(server);
    let (typed, typed_rx) = mpsc::channel(TYPED_LINES_QUEUED);
    let writer = tokio::spawn(send_typed_lines(typed_rx, to_server));
    let (lines_tx, mut lines) = mpsc::channel(SERVER_LINES_QUEUED);
    tokio::spawn(read_server_lines(from_server, lines_tx));
    let mut signals = Signals::new().context("cannot listen for signals")?;

    let modes = TerminalModes::enter().context("cannot set up the terminal")?;
    let mut screen =
        Terminal::new(CrosstermBackend::new(io::stdout())).context("cannot set up the terminal")?;
    // Starts crossterm's event reader here, before the first frame: it is what catches
    // SIGWINCH, and a resize before it exists would be lost (the signal is ignored by default).
    event::poll(Duration::ZERO).context("cannot read the terminal")?;
    let (events_tx, mut events) = mpsc::channel(TERMINAL_EVENTS_QUEUED);
    // Never joined: it is blocked reading the terminal when we leave, and ends with the process.
    std::thread::spawn(move || read_terminal_events(events_tx));

    let mut state = State::new(addr.to_string(), tls);
    let mut dirty = true;
    let mut next_frame = Instant::now();
    let ending = loop {
        tokio::select! {
            // In this order: leaving, keys, the frame, server lines. Whatever the server sends,
            // typing is never kept waiting and the screen keeps up.
            biased;
            _ = signals.recv() => break Ending::Left,
            event = events.recv() => match event {
                Some(Ok(event)) => match on_event(&mut state, event) {
                    Step::Nothing => {}
                    Step::Redraw => dirty = true,
                    Step::Clear => {
                        let _ = screen.clear();
                        dirty = true;
                    }
                    Step::Send(submitted) => {
                        dirty = true;
                        if send(&typed, submitted).await {
                            break Ending::Left;
                        }
                    }
                    Step::Leave => break Ending::Left,
                },
                // The terminal is gone (closed window: SIGHUP usually comes first).
                Some(Err(_)) | None => break Ending::Left,
            },
            // Before the server's lines: a flood that is always ready must not keep the screen
            // from being redrawn.
            _ = tokio::time::sleep_until(next_frame), if dirty => {
                screen
                    .draw(|frame| draw::draw(frame, &mut state))
                    .context("cannot draw on the terminal")?;
                dirty = false;
                next_frame = Instant::now() + FRAME;
            },
            first = lines.recv() => {
                dirty = true;
                if let Some(ending) = take_lines(&mut state, first, &mut lines) {
                    break ending;
                }
            },
        }
    };

    // The writer sends what is queued, then half-closes: the server reads end of file.
    drop(typed);
    if matches!(ending, Ending::Left) {
        let _ = tokio::time::timeout(LEAVE_GRACE, writer).await;
    }
    drop(screen);
    drop(modes);
    match ending {
        Ending::Left => Ok(()),
        Ending::Closed => {
            let entries = state.scrollback.entries();
            for entry in entries
                .iter()
                .skip(entries.len().saturating_sub(LINES_KEPT_ON_CLOSE))
            {
                println!("{}", entry.text);
            }
            println!("the server at {addr} closed the connection");
            Ok(())
        }
        Ending::Lost(error) => Err(anyhow!("lost the connection to {addr}: {error}")),
    }
}

/// Shows `first` and what else the reader has ready, at most [`LINES_PER_TURN`]; the end of
/// the connection if the reader reports it.
fn take_lines(
    state: &mut State,
    first: Option<FromServer>,
    lines: &mut mpsc::Receiver<FromServer>,
) -> Option<Ending> {
    let mut next = first;
    for _ in 0..LINES_PER_TURN {
        match next {
            Some(FromServer::Line(line)) => state.received(&line),
            Some(FromServer::TooLong) => state.received(&format!(
                "* error: (client) skipped a server line longer than {MAX_SERVER_LINE} bytes"
            )),
            Some(FromServer::Closed) | None => return Some(Ending::Closed),
            Some(FromServer::Lost(error)) => return Some(Ending::Lost(error)),
        }
        next = Some(lines.try_recv().ok()?);
    }
    None
}

/// Queues each submitted line for the writer; true when the user asked to leave (`/quit`) or
/// the connection is gone.
async fn send(typed: &mpsc::Sender<Vec<u8>>, submitted: Submitted) -> bool {
    for line in submitted.lines {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if typed.send(bytes).await.is_err() {
            return true;
        }
    }
    submitted.quit
}

/// What a terminal event asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    Redraw,
    /// Ctrl-L: repaint every cell, for a screen something else wrote on.
    Clear,
    Send(Submitted),
    Leave,
}

/// The keys (and paste, mouse, resize) of the UI; a pure function of the state and the event.
fn on_event(state: &mut State, event: Event) -> Step {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => on_key(state, key),
        Event::Paste(text) => {
            state.input.insert(&text);
            Step::Redraw
        }
        Event::Mouse(mouse) => match mouse.kind {
            MouseEventKind::ScrollUp => {
                state.scroll_up(WHEEL_ROWS);
                Step::Redraw
            }
            MouseEventKind::ScrollDown => {
                state.scroll_down(WHEEL_ROWS);
                Step::Redraw
            }
            _ => Step::Nothing,
        },
        Event::Resize(..) => Step::Redraw,
        _ => Step::Nothing,
    }
}

fn on_key(state: &mut State, key: KeyEvent) -> Step {
    let control = key.modifiers.contains(KeyModifiers::CONTROL);
    match key.code {
        KeyCode::Char('c' | 'd') if control => return Step::Leave,
        KeyCode::Char('l') if control => return Step::Clear,
        KeyCode::Char('a') if control => state.input.home(),
        KeyCode::Char('e') if control => state.input.end(),
        KeyCode::Char('w') if control => state.input.delete_word(),
        KeyCode::Char('u') if control => state.input.delete_to_start(),
        KeyCode::Char('k') if control => state.input.delete_to_end(),
        KeyCode::Char(_) if control => return Step::Nothing,
        KeyCode::Char(c) => state.input.insert(c.encode_utf8(&mut [0; 4])),
        KeyCode::Enter => {
            return match state.submit() {
                Some(submitted) => Step::Send(submitted),
                None => Step::Redraw,
            }
        }
        KeyCode::Backspace => state.input.backspace(),
        KeyCode::Delete => state.input.delete(),
        KeyCode::Left => state.input.left(),
        KeyCode::Right => state.input.right(),
        KeyCode::Home => state.input.home(),
        KeyCode::End => state.input.end(),
        KeyCode::Up => state.history_older(),
        KeyCode::Down => state.history_newer(),
        KeyCode::PageUp => state.page_up(),
        KeyCode::PageDown => state.page_down(),
        _ => return Step::Nothing,
    }
    Step::Redraw
}

/// The terminal events thread: every event to the loop, until the loop is gone or the
/// terminal fails.
fn read_terminal_events(events: mpsc::Sender<io::Result<Event>>) {
    loop {
        let event = event::read();
        let failed = event.is_err();
        if events.blocking_send(event).is_err() || failed {
            return;
        }
    }
}

/// The server reader task: frames and sanitises each line (again: this may be someone else's
/// server) and reports it, waiting while the loop is behind.
async fn read_server_lines(
    mut from_server: impl AsyncRead + Unpin,
    lines: mpsc::Sender<FromServer>,
) {
    let mut framer = LineFramer::new(MAX_SERVER_LINE);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut framed = Vec::new();
    let ending = loop {
        let received = match from_server.read(&mut chunk).await {
            Ok(0) => break FromServer::Closed,
            Ok(received) => received,
            // A TLS server that closes without its close_notify: the chat is over all the
            // same, and nothing it sent is lost.
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => break FromServer::Closed,
            Err(error) => break FromServer::Lost(error),
        };
        framer.push(&chunk[..received], |frame| framed.push(report(frame)));
        for report in framed.drain(..).flatten() {
            if lines.send(report).await.is_err() {
                return;
            }
        }
    };
    // A last line without its `\r\n` is still a line.
    framer.finish(|frame| framed.push(report(frame)));
    for report in framed.drain(..).flatten().chain([ending]) {
        if lines.send(report).await.is_err() {
            return;
        }
    }
}

/// A framed line as the loop gets it; `None` for a line with nothing printable left.
fn report(frame: Frame<'_>) -> Option<FromServer> {
    match frame {
        Frame::Line(line) => sanitize(line).map(FromServer::Line),
        Frame::TooLong => Some(FromServer::TooLong),
    }
}

/// The signals that end the UI. Raw mode makes Ctrl-C a key, but `kill -INT` still sends
/// SIGINT; all three must leave through the loop, so that the terminal is restored.
struct Signals {
    terminate: Signal,
    hangup: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.hangup.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signals")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> Event {
        Event::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn control(c: char) -> Event {
        Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn typed(state: &mut State, text: &str) {
        for c in text.chars() {
            on_event(state, key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn control_c_and_control_d_leave_even_with_text_typed() {
        let mut state = State::new("x".into(), false);
        typed(&mut state, "half a line");
        assert_eq!(on_event(&mut state, control('c')), Step::Leave);
        assert_eq!(on_event(&mut state, control('d')), Step::Leave);
    }

    #[test]
    fn enter_sends_the_typed_line() {
        let mut state = State::new("x".into(), false);
        typed(&mut state, "hello");
        assert_eq!(
            on_event(&mut state, key(KeyCode::Enter)),
            Step::Send(Submitted {
                lines: vec!["hello".into()],
                quit: false
            })
        );
        assert_eq!(on_event(&mut state, key(KeyCode::Enter)), Step::Redraw);
    }

    #[test]
    fn a_paste_is_one_event_that_sends_nothing_by_itself() {
        let mut state = State::new("x".into(), false);
        assert_eq!(
            on_event(&mut state, Event::Paste("one\ntwo\n".into())),
            Step::Redraw
        );
        assert_eq!(state.input.text(), "one\ntwo\n");
        let Step::Send(sent) = on_event(&mut state, key(KeyCode::Enter)) else {
            panic!("Enter sends the paste");
        };
        assert_eq!(sent.lines, ["one", "two"]);
    }

    #[test]
    fn control_keys_do_not_type_letters() {
        let mut state = State::new("x".into(), false);
        typed(&mut state, "ab");
        on_event(&mut state, control('x'));
        assert_eq!(state.input.text(), "ab");
        on_event(&mut state, control('a'));
        typed(&mut state, ">");
        assert_eq!(state.input.text(), ">ab");
    }

    #[test]
    fn key_releases_are_not_typed_twice() {
        let mut state = State::new("x".into(), false);
        let mut release = KeyEvent::new(KeyCode::Char('a'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(on_event(&mut state, Event::Key(release)), Step::Nothing);
        assert!(state.input.text().is_empty());
    }
}

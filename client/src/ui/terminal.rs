//! The terminal's modes while the UI runs, and the promise to give them back on every exit.
//!
//! The UI puts the terminal in raw mode (keys arrive one by one, unechoed; Ctrl-C is a key),
//! on the alternate screen (the shell's screen comes back untouched afterwards), with
//! bracketed paste (a pasted block arrives as one event, not as typed keys and Enters) and
//! mouse reports (the wheel scrolls). A terminal left like that is unusable: no echo, no line
//! editing, no scrollback. So the modes are undone
//!
//! - by [`TerminalModes`]'s `Drop`: every return, error or not, from the UI;
//! - by a panic hook, before the panic message is printed (a message printed in raw mode on
//!   the alternate screen would be lost);
//! - on SIGTERM, SIGHUP and SIGINT by the UI loop, which leaves as if asked to (see
//!   [`super`]), so the `Drop` runs.
//!
//! [`restore`] runs at most once, whichever comes first.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use ratatui::crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};

/// True while the terminal is in the UI's modes.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal in the UI's modes; dropping it restores them.
#[derive(Debug)]
pub struct TerminalModes {
    _private: (),
}

impl TerminalModes {
    pub fn enter() -> io::Result<TerminalModes> {
        install_panic_hook();
        // Set first: if a step below fails, the steps before it are undone by `restore`.
        ACTIVE.store(true, Ordering::SeqCst);
        let modes = TerminalModes { _private: () };
        enable_raw_mode()?;
        execute!(
            io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste,
            EnableMouseCapture
        )?;
        Ok(modes)
    }
}

impl Drop for TerminalModes {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the UI's modes, in the reverse order, if still in them. Errors are ignored: there is
/// nobody left to tell, and the other steps should still be tried.
pub fn restore() {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return;
    }
    let mut out = io::stdout();
    let _ = execute!(
        out,
        DisableMouseCapture,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        cursor::Show
    );
    let _ = disable_raw_mode();
    let _ = out.flush();
}

/// Restores the terminal before the default hook prints the panic, so it prints on the
/// normal screen, in a terminal that works again.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

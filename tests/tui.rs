//! SPEC 10: the terminal client, run in a real pseudo-terminal against a real v4.
//!
//! The client runs on the slave side of a pty (portable-pty), exactly as in a terminal window;
//! everything it writes to the master side is fed to a terminal emulator's parser (vt100), so
//! a test reads the screen a person would see, and the modes the terminal is left in. Every
//! wait polls that screen until a condition holds or the deadline passes.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, CommandBuilder, MasterPty, PtySize, SlavePty};
use sock_chat_tests::{binary, Client, Running, Server};

/// Longer than the other tests' deadline: the client draws through a terminal, and the machine
/// is busy. A passing test never waits for it.
const SCREEN_DEADLINE: Duration = Duration::from_secs(30);

const ROWS: u16 = 24;
const COLUMNS: u16 = 80;

/// The client in a pseudo-terminal, and the screen it has drawn so far.
struct TerminalClient {
    master: Box<dyn MasterPty + Send>,
    /// Kept open, so that the terminal's modes outlive the client and can be checked.
    _slave: Box<dyn SlavePty + Send>,
    keyboard: Box<dyn Write + Send>,
    output: Receiver<Vec<u8>>,
    exited: Receiver<portable_pty::ExitStatus>,
    /// Set once the exit was seen; until then, dropping kills the client.
    has_exited: bool,
    pid: u32,
    screen: vt100::Parser,
}

impl TerminalClient {
    fn spawn(args: &[&str]) -> TerminalClient {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLUMNS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("open a pseudo-terminal");
        let mut command = CommandBuilder::new(binary("client"));
        command.args(args);
        command.env("TERM", "xterm-256color");
        let mut child = pair.slave.spawn_command(command).expect("spawn client");
        let pid = child.process_id().expect("client pid");
        let (exit_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exit_tx.send(status);
            }
        });
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let (output_tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(read @ 1..) = reader.read(&mut chunk) {
                if output_tx.send(chunk[..read].to_vec()).is_err() {
                    break;
                }
            }
        });
        TerminalClient {
            keyboard: pair.master.take_writer().expect("pty writer"),
            master: pair.master,
            _slave: pair.slave,
            output,
            exited,
            has_exited: false,
            pid,
            screen: vt100::Parser::new(ROWS, COLUMNS, 0),
        }
    }

    /// Presses keys: text as typed, `\r` for Enter, `\x03` for Ctrl-C.
    fn press(&mut self, keys: &str) {
        self.keyboard.write_all(keys.as_bytes()).expect("type");
        self.keyboard.flush().expect("type");
    }

    /// Feeds what the client draws to the screen until `holds` is true of it.
    fn wait_for(&mut self, what: &str, holds: impl Fn(&vt100::Screen) -> bool) {
        let start = Instant::now();
        while !holds(self.screen.screen()) {
            let left = SCREEN_DEADLINE.saturating_sub(start.elapsed());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.screen.process(&bytes),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "the screen never showed {what}; it shows:\n{}",
                    self.screen.screen().contents()
                ),
            }
        }
    }

    /// Waits until some row of the screen is `row`.
    fn wait_for_row(&mut self, row: &str) {
        self.wait_for(&format!("the row {row:?}"), |screen| {
            rows(screen).iter().any(|shown| shown == row)
        });
    }

    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let status = self
            .exited
            .recv_timeout(SCREEN_DEADLINE)
            .expect("the client did not exit");
        self.has_exited = true;
        status
    }

    /// Waits for the terminal to be back as the shell left it: the normal screen, no
    /// bracketed paste, no mouse reports, the cursor shown, and (checked on the pty itself)
    /// line editing and echo on again.
    fn expect_terminal_restored(&mut self) {
        self.wait_for("the terminal restored", |screen| {
            !screen.alternate_screen()
                && !screen.bracketed_paste()
                && screen.mouse_protocol_mode() == vt100::MouseProtocolMode::None
                && !screen.hide_cursor()
        });
        let termios = self.master.get_termios().expect("the pty's termios");
        let local = format!("{:?}", termios.local_flags);
        assert!(
            local.contains("ICANON") && local.contains("ECHO"),
            "the terminal is still in raw mode: {local}"
        );
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }
}

impl Drop for TerminalClient {
    fn drop(&mut self) {
        if !self.has_exited && self.exited.try_recv().is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The screen's rows, trailing blanks trimmed.
fn rows(screen: &vt100::Screen) -> Vec<String> {
    screen
        .rows(0, COLUMNS)
        .map(|row| row.trim_end().to_owned())
        .collect()
}

/// The input line: the bottom row.
fn input_row(screen: &vt100::Screen) -> String {
    rows(screen).pop().unwrap_or_default()
}

/// v4 with a TCP user named bob, and the client in a terminal, named alice, in the room.
fn alice_and_bob() -> (Running, Client, TerminalClient) {
    let server = Server::V4Async.start(&[]);
    let mut bob = server.connect();
    bob.read_until(|line| line.starts_with("* welcome "));
    bob.send_line("/nick bob");
    bob.read_until(|line| line.ends_with(" is now bob"));
    let mut alice = TerminalClient::spawn(&[&server.addr.to_string(), "--nick", "alice"]);
    alice.wait_for("alice's name in the status line", |screen| {
        rows(screen)[usize::from(ROWS) - 2].contains("you are alice")
    });
    // Bob has seen the rename: alice is in the room under her name.
    bob.read_until(|line| line.ends_with(" is now alice"));
    (server, bob, alice)
}

#[test]
fn a_line_that_arrives_while_you_type_never_breaks_the_input() {
    let (_server, mut bob, mut alice) = alice_and_bob();

    alice.press("typing a long");
    alice.wait_for("the half-typed line", |screen| {
        input_row(screen) == "> typing a long"
    });
    bob.send_line("hello from bob");
    alice.wait_for_row("bob says: hello from bob");
    let shown = rows(alice.screen.screen());
    assert_eq!(
        shown.last().unwrap(),
        "> typing a long",
        "the input is intact: {shown:#?}"
    );
    let bobs_row = shown
        .iter()
        .position(|row| row == "bob says: hello from bob");
    assert!(bobs_row < Some(shown.len() - 2), "bob's line is above");

    alice.press(" line\r");
    assert_eq!(
        bob.read_until(|line| line.contains(" says: ")),
        "alice says: typing a long line"
    );
    alice.wait_for_row("> typing a long line");
    alice.wait_for("an empty input line", |screen| input_row(screen) == ">");
}

#[test]
fn the_terminal_is_restored_when_the_server_goes_away() {
    let (mut server, _bob, mut alice) = alice_and_bob();
    assert!(alice.screen.screen().alternate_screen());

    server.terminate();
    assert!(alice.wait_exit().success());
    alice.expect_terminal_restored();
    // The reason is left on the normal screen.
    alice.wait_for_row("* server shutting down");
}

#[test]
fn control_c_leaves_and_restores_the_terminal() {
    let (_server, mut bob, mut alice) = alice_and_bob();
    alice.press("never sent");
    alice.press("\x03");
    assert!(alice.wait_exit().success());
    alice.expect_terminal_restored();
    // Bob sees alice leave, and nothing of the half-typed line.
    let left = bob.read_until(|line| line.contains(" left "));
    assert_eq!(left, "* alice left (1 online)");
}

#[test]
fn sigterm_leaves_and_restores_the_terminal() {
    let (_server, _bob, mut alice) = alice_and_bob();
    alice.signal("TERM");
    assert!(alice.wait_exit().success());
    alice.expect_terminal_restored();
}

#[test]
fn quit_is_sent_with_its_reason_and_leaves() {
    let (_server, mut bob, mut alice) = alice_and_bob();
    alice.press("/quit see you\r");
    assert!(alice.wait_exit().success());
    alice.expect_terminal_restored();
    assert_eq!(
        bob.read_until(|line| line.contains(" left ")),
        "* alice left (1 online): see you"
    );
}

#[test]
fn wide_characters_keep_the_cursor_after_the_text() {
    let (_server, mut bob, mut alice) = alice_and_bob();
    alice.press("漢字 👍");
    alice.wait_for("the wide text typed", |screen| {
        input_row(screen) == "> 漢字 👍"
    });
    // "> " + 漢 (2) + 字 (2) + " " (1) + 👍 (2): column 9.
    alice.wait_for("the cursor after the emoji", |screen| {
        screen.cursor_position() == (ROWS - 1, 9)
    });
    alice.press("\r");
    assert_eq!(
        bob.read_until(|line| line.contains(" says: ")),
        "alice says: 漢字 👍"
    );
}

#[test]
fn the_terminal_is_restored_when_the_server_is_killed() {
    let (server, _bob, mut alice) = alice_and_bob();
    let status = Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    alice.wait_exit();
    alice.expect_terminal_restored();
}

#[test]
fn sighup_leaves_and_restores_the_terminal() {
    let (_server, _bob, mut alice) = alice_and_bob();
    alice.signal("HUP");
    assert!(alice.wait_exit().success());
    alice.expect_terminal_restored();
}

#[test]
fn a_flood_of_lines_never_keeps_the_keyboard_waiting() {
    const FLOOD: usize = 3000;
    let server = Server::V4Async.start_unthrottled(&[]);
    let mut bob = server.connect();
    bob.read_until(|line| line.starts_with("* welcome "));
    bob.send_line("/nick bob");
    bob.read_until(|line| line.ends_with(" is now bob"));
    let mut alice = TerminalClient::spawn(&[&server.addr.to_string()]);
    alice.wait_for("the welcome", |screen| {
        rows(screen).iter().any(|row| row.starts_with("* welcome "))
    });
    bob.read_until(|line| line.contains(" joined "));

    let flood: String = (0..FLOOD).map(|n| format!("line {n}\n")).collect();
    bob.send(flood.as_bytes());
    alice.press("typed during the flood");
    let last = format!("bob says: line {}", FLOOD - 1);
    alice.wait_for("the end of the flood and the whole typed text", |screen| {
        rows(screen).contains(&last) && input_row(screen) == "> typed during the flood"
    });
}

#[test]
fn nothing_a_server_sends_can_move_the_cursor_or_change_the_terminal() {
    // A server that is not sock-chat's: it sends escapes, a bell and a bidi override.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let mut alice = TerminalClient::spawn(&[&addr]);
    let (mut server, _) = listener.accept().expect("the client connects");
    server
        .write_all(
            b"\x1b[2J\x1b[1;1Hevil\x07 \x1b[?1049l\x1b]0;title\x07\xe2\x80\xae says: gotcha\r\n",
        )
        .expect("send");
    let harmless = "[2J[1;1Hevil [?1049l]0;title says: gotcha";
    alice.wait_for(
        "the escapes as harmless text, the cursor in the input",
        |screen| {
            rows(screen).iter().any(|row| row == harmless)
                && screen.cursor_position() == (ROWS - 1, 2)
        },
    );
    assert!(
        alice.screen.screen().alternate_screen(),
        "still on the UI's screen"
    );
}

#[test]
fn a_resize_redraws_the_screen_at_the_new_size() {
    let (_server, _bob, mut alice) = alice_and_bob();
    let (rows_now, columns_now) = (ROWS + 6, COLUMNS / 2);
    alice
        .master
        .resize(PtySize {
            rows: rows_now,
            cols: columns_now,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("resize");
    alice.screen.screen_mut().set_size(rows_now, columns_now);
    alice.wait_for("the status line above the new bottom row", |screen| {
        let shown: Vec<String> = screen
            .rows(0, columns_now)
            .map(|row| row.trim_end().to_owned())
            .collect();
        shown[usize::from(rows_now) - 2].contains("connected")
    });
}

#[test]
fn tls_and_nick_work_in_the_terminal_ui() {
    let server = Server::V4Async.start(&["--tls-addr", "127.0.0.1:0", "--tls-self-signed"]);
    let tls = server.tls_listener();
    let mut bob = server.connect();
    bob.read_until(|line| line.starts_with("* welcome "));
    let tls_addr = tls.addr.to_string();
    let mut alice = TerminalClient::spawn(&[
        "--tls",
        &tls_addr,
        "--fingerprint",
        &tls.fingerprint,
        "--nick",
        "alice",
    ]);
    alice.wait_for("TLS and alice's name in the status line", |screen| {
        let status = &rows(screen)[usize::from(ROWS) - 2];
        status.contains(&format!("{tls_addr} · TLS · connected"))
            && status.contains("you are alice")
    });
    bob.read_until(|line| line.ends_with(" is now alice"));
    alice.press("over TLS\r");
    assert_eq!(
        bob.read_until(|line| line.contains(" says: ")),
        "alice says: over TLS"
    );
}

#[test]
fn plain_keeps_line_mode_in_a_terminal() {
    let server = Server::V4Async.start(&[]);
    let mut bob = server.connect();
    bob.read_until(|line| line.starts_with("* welcome "));
    let mut alice = TerminalClient::spawn(&["--plain", &server.addr.to_string()]);
    alice.wait_for("the welcome printed", |screen| {
        rows(screen)[0].starts_with("* welcome ")
    });
    assert!(!alice.screen.screen().alternate_screen());
    bob.read_until(|line| line.contains(" joined "));
    alice.press("a plain line\r");
    assert!(bob
        .read_until(|line| line.contains(" says: "))
        .ends_with(" says: a plain line"));
}

#[test]
fn the_screen_keeps_up_with_a_server_that_never_stops_sending() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    let mut alice = TerminalClient::spawn(&[&addr]);
    let (mut server, _) = listener.accept().expect("the client connects");
    // Sends until the client is gone.
    std::thread::spawn(move || {
        for n in 0.. {
            if server
                .write_all(format!("flood {n}\r\n").as_bytes())
                .is_err()
            {
                break;
            }
        }
    });
    alice.press("typed");
    alice.wait_for(
        "the flood and the typed text, while the flood goes on",
        |screen| {
            rows(screen).iter().any(|row| row.starts_with("flood "))
                && input_row(screen) == "> typed"
        },
    );
}

//! SPEC 6: the line-based client, run as a real process with piped stdin and stdout.
//!
//! Behaviours that need a room run against v4-async. The others run against a tiny server
//! inside the test (a `TcpListener`), which can do what no sock-chat server does on purpose:
//! report the exact bytes it received, or send control characters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sock_chat_tests::{binary, Server, DEADLINE};

/// The client binary, running, with a line-by-line view of what it prints.
#[derive(Debug)]
struct ClientProcess {
    child: Child,
    /// `None` once closed: the client sees end of input.
    stdin: Option<ChildStdin>,
    /// Printed lines as raw bytes, without their `\n`, so a stray `\r` or escape would show.
    stdout: Receiver<Vec<u8>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a client process ended.
#[derive(Debug)]
struct Exit {
    status: ExitStatus,
    /// Lines printed after the last one the test had already read.
    printed: Vec<String>,
    stderr: String,
}

impl ClientProcess {
    fn spawn(args: &[&str]) -> ClientProcess {
        let mut child = Command::new(binary("client"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let stdout = child.stdout.take().unwrap();
        let (lines, printed) = mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if line.ends_with(b"\n") {
                            line.pop();
                        }
                        if lines.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        ClientProcess {
            stdin: child.stdin.take(),
            child,
            stdout: printed,
            stderr: Some(stderr),
        }
    }

    /// Types a line, as a user at the keyboard would.
    fn type_line(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is still open");
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .expect("write to client stdin");
        stdin.flush().expect("flush client stdin");
    }

    /// Ctrl-D: the client sees end of input.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Skips printed lines until one satisfies `wanted` (welcome, join notices...).
    fn expect_printed(&self, wanted: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let line = printable(line);
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(error) => panic!("the client never printed the expected line: {error}"),
            }
        }
    }

    /// Waits (with the deadline) until the client closes its stdout, i.e. exits, and collects the
    /// rest of what it printed. Stdin is left as it is: a client must not need it closed.
    fn wait_exit(mut self) -> Exit {
        let start = Instant::now();
        let mut printed = Vec::new();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stdout.recv_timeout(left) {
                Ok(line) => printed.push(printable(line)),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the client did not exit within {DEADLINE:?}; printed {printed:?}")
                }
            }
        }
        let status = self.child.wait().expect("wait for the client");
        let stderr = self.stderr.take().unwrap().join().expect("stderr reader");
        Exit {
            status,
            printed,
            stderr,
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A printed line as text, after checking the terminal would obey nothing in it.
fn printable(line: Vec<u8>) -> String {
    let text = String::from_utf8(line).expect("the client prints UTF-8");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\t'),
        "the client printed a control character: {text:?}"
    );
    text
}

/// A one-connection server inside the test.
struct TestServer {
    listener: TcpListener,
}

impl TestServer {
    fn bind() -> TestServer {
        TestServer {
            listener: TcpListener::bind("127.0.0.1:0").expect("bind test server"),
        }
    }

    fn addr(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// The client's connection, with read and write deadlines. Panics if none comes in time.
    fn accept(&self) -> TcpStream {
        let listener = self.listener.try_clone().unwrap();
        let (accepted, connection) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = accepted.send(listener.accept());
        });
        let (stream, _) = connection
            .recv_timeout(DEADLINE)
            .expect("the client never connected")
            .expect("accept");
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream.set_write_timeout(Some(DEADLINE)).unwrap();
        stream
    }
}

/// Reads until the client half-closes or closes; panics at the deadline.
fn read_to_eof(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the client should half-close before the deadline");
    String::from_utf8(received).unwrap()
}

/// An address where nothing listens: a port the kernel just handed out and took back.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[test]
fn typed_lines_reach_others_through_v4_and_what_others_say_is_printed() {
    let server = Server::V4Async.start(&[]);
    let mut other = server.connect();
    // Both welcomes, in turn: each proves that one is in the room before anyone speaks.
    other.read_until(|line| line.starts_with("* welcome "));
    let mut client = ClientProcess::spawn(&[&server.addr.to_string()]);
    let welcome = client.expect_printed(|line| line.starts_with("* welcome "));
    // `* welcome 127.0.0.1:52344, 2 online - ...`: the name the others know the client by.
    let name = welcome["* welcome ".len()..].split(',').next().unwrap();

    client.type_line("hello from the client");
    let relayed = other.read_until(|line| line.contains(" says: "));
    assert_eq!(relayed, format!("{name} says: hello from the client"));

    other.send_line("hello from the other side");
    let printed = client.expect_printed(|line| line.contains(" says: "));
    assert_eq!(
        printed,
        format!("{} says: hello from the other side", other.addr())
    );
}

#[test]
fn end_of_stdin_half_closes_and_client_exits_once_server_closes() {
    let server = TestServer::bind();
    let mut client = ClientProcess::spawn(&[&server.addr()]);
    let mut connection = server.accept();

    client.type_line("first");
    client.type_line("last");
    client.close_stdin();
    // End of file on our side, yet the connection is still open for what we send next.
    assert_eq!(read_to_eof(&mut connection), "first\nlast\n");
    connection
        .write_all(b"sent after your end of input\r\n")
        .unwrap();
    drop(connection);

    let exit = client.wait_exit();
    assert!(exit.status.success(), "{exit:?}");
    assert_eq!(exit.printed, ["sent after your end of input"]);
    assert_eq!(exit.stderr, "");
}

#[test]
fn server_closing_first_ends_the_client_while_stdin_is_still_open() {
    let server = TestServer::bind();
    let client = ClientProcess::spawn(&[&server.addr()]);
    let mut connection = server.accept();
    connection
        .write_all(b"* server full (1 clients)\r\n")
        .unwrap();
    drop(connection);

    // Nobody closes the client's stdin: it must exit by itself.
    let exit = client.wait_exit();
    assert!(exit.status.success(), "{exit:?}");
    assert_eq!(exit.printed, ["* server full (1 clients)"]);
}

#[test]
fn refused_connection_exits_non_zero_naming_the_address_and_v4() {
    let addr = closed_port().to_string();
    let exit = ClientProcess::spawn(&[&addr]).wait_exit();

    assert!(!exit.status.success(), "{exit:?}");
    assert!(exit.printed.is_empty(), "{exit:?}");
    assert_eq!(
        exit.stderr.lines().count(),
        1,
        "one sentence: {:?}",
        exit.stderr
    );
    assert!(exit.stderr.contains(&addr), "{:?}", exit.stderr);
    assert!(
        exit.stderr.contains("cargo run -p v4-async"),
        "{:?}",
        exit.stderr
    );
}

#[test]
fn nick_is_sent_before_anything_typed() {
    let server = TestServer::bind();
    let mut client = ClientProcess::spawn(&[&server.addr(), "--nick", "alice"]);
    // Typed before the connection is even accepted: it still must not overtake the nick.
    client.type_line("hello");
    client.close_stdin();
    let mut connection = server.accept();

    assert_eq!(read_to_eof(&mut connection), "/nick alice\nhello\n");
}

#[test]
fn control_characters_from_a_hostile_server_are_not_printed() {
    let server = TestServer::bind();
    let client = ClientProcess::spawn(&[&server.addr()]);
    let mut connection = server.accept();
    connection
        .write_all(b"\x1b[2Jclear\x07 screen\r\n\x1b]0;title\x07\r\n\x07\x1b\r\n\xc2\x9b31mred\r\nend\x08\x7f")
        .unwrap();
    drop(connection);

    // `printable` has checked every line; here, that the text around the escapes survives,
    // a line left empty is not printed, and a last line without `\r\n` still is.
    let exit = client.wait_exit();
    assert!(exit.status.success(), "{exit:?}");
    assert_eq!(
        exit.printed,
        ["[2Jclear screen", "]0;title", "31mred", "end"]
    );
}

#[test]
fn reset_connection_exits_non_zero_with_one_sentence() {
    let server = TestServer::bind();
    let client = ClientProcess::spawn(&[&server.addr()]);
    let connection = server.accept();
    // SO_LINGER 0: close sends RST instead of FIN, as a crashed server's kernel might.
    socket2::SockRef::from(&connection)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(connection);

    let exit = client.wait_exit();
    assert!(!exit.status.success(), "{exit:?}");
    assert_eq!(
        exit.stderr.lines().count(),
        1,
        "one sentence: {:?}",
        exit.stderr
    );
    assert!(exit.stderr.contains(&server.addr()), "{:?}", exit.stderr);
}

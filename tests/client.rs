//! SPEC 6: the line-based client, run as a real process with piped stdin and stdout.
//!
//! Behaviours that need a room run against v4-async. The others run against a tiny server
//! inside the test (a `TcpListener`), which can do what no sock-chat server does on purpose:
//! report the exact bytes it received, or send control characters.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use sock_chat_tests::client_process::ClientProcess;
use sock_chat_tests::{Server, DEADLINE};

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

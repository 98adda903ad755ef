//! The web listener from the tests' side: its `web on` line read back, plain HTTP requests, and
//! a WebSocket client that reads one line per message with a deadline, like [`crate::Client`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tungstenite::handshake::client::generate_key;
use tungstenite::http::Request;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::{tcp_from, Running, DEADLINE};

impl Running {
    /// Waits for the `web on http://ADDR/` line and reads the address off it.
    pub fn web_addr(&self) -> SocketAddr {
        let line = self.expect_log("web on ");
        let url = line.split("web on ").nth(1).unwrap();
        let addr = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("no http://ADDR/ in {line:?}"));
        addr.parse().expect("address in the web on line")
    }
}

/// A free port on 127.0.0.1 for a web listener, for a server started with `RUST_LOG=warn`,
/// which does not log its `web on` line. (Another process could take the port in between;
/// the server would then fail to start, loudly.)
pub fn free_web_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    probe.local_addr().unwrap()
}

/// What a plain HTTP/1.1 `GET` got back.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` over a fresh connection that asks to be closed after the answer.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    let mut stream = TcpStream::connect(addr).expect("connect to the web listener");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the HTTP answer");
    let raw = String::from_utf8(raw).expect("a text answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("headers, then a body");
    let mut head = head.lines();
    let status = head
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("HTTP/1.1 CODE ...");
    let headers = head
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A browser's side of the WebSocket, reading with a deadline.
#[derive(Debug)]
pub struct WsClient {
    socket: WebSocket<TcpStream>,
}

/// How a WebSocket ended, seen from the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    /// The text messages that came first.
    pub lines: Vec<String>,
    /// The code of the server's close frame.
    pub code: CloseCode,
}

impl WsClient {
    /// Opens `ws://addr/ws` without an `Origin`, as a program does.
    pub fn connect(addr: SocketAddr) -> WsClient {
        Self::try_connect(addr, None).expect("WebSocket handshake")
    }

    /// Opens `ws://addr/ws` from the loopback address `source` (`127.0.0.2`, say).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> WsClient {
        Self::over(tcp_from(addr, source), addr, None).expect("WebSocket handshake")
    }

    /// Opens `ws://addr/ws` sending `origin` as the `Origin` header, if given; returns the
    /// handshake's error (a `403`, say) instead of panicking.
    pub fn try_connect(addr: SocketAddr, origin: Option<&str>) -> tungstenite::Result<WsClient> {
        Self::over(TcpStream::connect(addr)?, addr, origin)
    }

    fn over(
        tcp: TcpStream,
        addr: SocketAddr,
        origin: Option<&str>,
    ) -> tungstenite::Result<WsClient> {
        tcp.set_read_timeout(Some(DEADLINE))?;
        tcp.set_write_timeout(Some(DEADLINE))?;
        let mut request = Request::get(format!("ws://{addr}/ws"))
            .header("Host", addr.to_string())
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", generate_key());
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let request = request.body(()).unwrap();
        match tungstenite::client::client(request, tcp) {
            Ok((socket, _response)) => Ok(WsClient { socket }),
            Err(tungstenite::HandshakeError::Failure(error)) => Err(error),
            Err(tungstenite::HandshakeError::Interrupted(_)) => {
                panic!("the WebSocket handshake did not finish within {DEADLINE:?}")
            }
        }
    }

    /// Our own address, as the server names us.
    pub fn addr(&self) -> SocketAddr {
        self.socket.get_ref().local_addr().unwrap()
    }

    /// Sends one text message.
    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    /// Sends any message.
    pub fn send(&mut self, message: Message) {
        self.socket.send(message).expect("send a WebSocket message");
    }

    /// The next text message. Panics at the deadline, on a close, or on a binary message.
    pub fn read_line(&mut self) -> String {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => return text.as_str().to_owned(),
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a text message, got {other:?}"),
                Err(error) => panic!("no WebSocket message within {DEADLINE:?}: {error}"),
            }
        }
    }

    /// Reads messages until one satisfies `wanted`, skipping the others.
    pub fn read_until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.read_line();
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Reads until the server's close frame; returns it with the lines that came first.
    /// Panics if the connection ends without one.
    pub fn read_to_close(&mut self) -> Closed {
        let mut lines = Vec::new();
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => lines.push(text.as_str().to_owned()),
                Ok(Message::Close(Some(frame))) => {
                    return Closed {
                        lines,
                        code: frame.code,
                    }
                }
                Ok(Message::Close(None)) => panic!("a close frame without a code"),
                Ok(_) => {}
                Err(error) => panic!(
                    "the WebSocket ended without a close frame ({error}); read so far: {lines:?}"
                ),
            }
        }
    }

    /// Closes from our side, as a browser leaving the page does, and waits until the server
    /// has answered the close and ended the connection.
    pub fn close(mut self) {
        self.socket.close(None).expect("send a close frame");
        loop {
            match self.socket.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(error) => panic!("the close did not finish cleanly: {error}"),
            }
        }
    }

    /// The raw connection, to stop reading it or to close it abruptly.
    pub fn tcp(&self) -> &TcpStream {
        self.socket.get_ref()
    }

    /// Waits up to `within` for the server's ping, skipping text, and answers it with a pong
    /// at once, as a browser does.
    pub fn expect_ping(&mut self, within: Duration) {
        self.tcp().set_read_timeout(Some(within)).unwrap();
        loop {
            match self.socket.read() {
                Ok(Message::Ping(_)) => break,
                Ok(Message::Text(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a ping, got {other:?}"),
                Err(error) => panic!("no ping within {within:?}: {error}"),
            }
        }
        // tungstenite queued the pong when it read the ping; this sends it.
        self.socket.flush().expect("send the pong");
        self.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
    }
}

//! WebSocket clients for `run --ws` and `compare`'s WebSocket row: v4's web listener (SPEC 9)
//! measured with the same clients, lines and tokens as TCP.
//!
//! [`WsLines`] is the mirror of the server's `web::lines::WebSocketLines`: it makes a
//! WebSocket look like the byte stream of lines the load clients already read and write. A
//! received text message becomes its text and `\r\n`, as a TCP server sends lines; what a
//! client writes is cut at each `\n` into one text message per line.
//!
//! **Frames are read and written here, not by a WebSocket library.** chat-bench measures the
//! server, on the same machine: every delivery is one frame for a receiver to read, and a
//! general library's reader (a message object per frame, its own buffers, UTF-8 checked again)
//! cost the bench about as much CPU per delivery as the server spent on it, so the row measured
//! the bench as much as the server. What a client needs of RFC 6455 is small:
//!
//! ```text
//!   byte 0     FIN (0x80) | opcode: 0x1 text, 0x0 continuation, 0x8 close, 0x9 ping, 0xA pong
//!   byte 1     MASK (0x80) | length: 0..=125, or 126 + 2 bytes, or 127 + 8 bytes (big-endian)
//!   [4 bytes]  the masking key: frames to a server are masked, frames from it never are
//!   payload
//! ```
//!
//! A text frame's payload is handed on as it arrives, however long, and the line ends with
//! the frame whose FIN is set; a ping is answered with a pong, a close with a close and the end
//! of the stream; anything else from the server (a binary or masked frame) is an error. The
//! handshake is the one request and answer of RFC 6455 section 4, its key and expected answer
//! from tungstenite.

use std::hash::{BuildHasher as _, RandomState};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Bytes read from the connection at a time: hundreds of short frames, and room for the
/// server's whole handshake answer (a few short headers).
const READ_BUFFER: usize = 16 * 1024;

/// Frames owed to the server past which a write waits for the connection to take them, as a
/// TCP write waits for the socket's buffer.
const WRITE_BUFFER: usize = 16 * 1024;

/// The line end a TCP server sends, added after each message's text.
const LINE_END: &[u8] = b"\r\n";

/// Frame header bits and opcodes (RFC 6455 section 5.2).
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;
const OPCODE: u8 = 0x0f;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The longest payload of a length byte alone, and the markers of the 2- and 8-byte lengths.
const SHORT_LENGTH_MAX: u8 = 125;
const LENGTH_16: u8 = 126;
const LENGTH_64: u8 = 127;

/// What a close frame says when the client closes: done, normally.
const CLOSE_NORMAL: u16 = 1000;

/// A client's WebSocket to `ws://ADDR/ws`, as a byte stream of lines.
#[derive(Debug)]
pub struct WsLines {
    stream: TcpStream,
    /// Bytes read from the connection and not parsed yet: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Payload bytes of the text frame being read that have not been handed on yet.
    payload_left: u64,
    /// The text frame being read ends its message, so its line ends with it.
    final_frame: bool,
    /// How much of [`LINE_END`] is still owed after the line handed on.
    line_end_left: usize,
    /// The server closed: end of stream from here on.
    closed: bool,
    /// Whole frames on their way to the server, `out[sent..]` not written yet.
    out: Vec<u8>,
    sent: usize,
    /// The start of a line being written, until its `\n`.
    partial: Vec<u8>,
    /// The masking key of this client's frames (see [`push_frame`]).
    mask: [u8; 4],
}

impl WsLines {
    /// Opens the WebSocket over `tcp`, connected to the web listener at `addr` (no `Origin`:
    /// a program, not a page).
    pub async fn connect(mut tcp: TcpStream, addr: SocketAddr) -> io::Result<WsLines> {
        let key = generate_key();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut input = vec![0; READ_BUFFER].into_boxed_slice();
        let mut end = 0;
        // The answer's head; what follows it already is the first frames.
        let head_end = loop {
            if let Some(at) = memchr::memmem::find(&input[..end], b"\r\n\r\n") {
                break at + 4;
            }
            if end == input.len() {
                return Err(invalid("the handshake answer has no end"));
            }
            match tcp.read(&mut input[end..]).await? {
                0 => return Err(invalid("the server closed during the handshake")),
                n => end += n,
            }
        };
        check_answer(&input[..head_end], &derive_accept_key(key.as_bytes()))?;
        let mask = (RandomState::new().hash_one(&key) as u32).to_ne_bytes();
        Ok(WsLines {
            stream: tcp,
            input,
            start: head_end,
            end,
            payload_left: 0,
            final_frame: false,
            line_end_left: 0,
            closed: false,
            out: Vec::new(),
            sent: 0,
            partial: Vec::new(),
            mask,
        })
    }

    /// Takes the next frame from what was read: a text frame's header (its payload is handed
    /// on from [`AsyncRead::poll_read`] as it arrives) or a whole control frame, which is
    /// answered. False if more must be read first.
    fn take_frame(&mut self) -> io::Result<bool> {
        let bytes = &self.input[self.start..self.end];
        let Some(header) = Header::parse(bytes)? else {
            return Ok(false);
        };
        match header.opcode {
            TEXT | CONTINUATION => {
                self.start += header.size;
                self.payload_left = header.length;
                self.final_frame = header.fin;
                if header.length == 0 && header.fin {
                    self.line_end_left = LINE_END.len();
                }
            }
            CLOSE | PING | PONG => {
                if header.length > u64::from(SHORT_LENGTH_MAX) || !header.fin {
                    return Err(invalid("a control frame too long, or in pieces"));
                }
                let whole = header.size + header.length as usize;
                if bytes.len() < whole {
                    return Ok(false);
                }
                let payload = bytes[header.size..whole].to_vec();
                self.start += whole;
                match header.opcode {
                    PING => self.answer(PONG, &payload)?,
                    CLOSE => {
                        // The server's code back (RFC 6455 section 5.5.1), then end of stream.
                        let code = payload.get(..2).unwrap_or(&[]);
                        self.answer(CLOSE, code)?;
                        self.closed = true;
                    }
                    _ => {}
                }
            }
            _ => {
                return Err(invalid(
                    "a binary frame, or an unknown one, from the server",
                ))
            }
        }
        Ok(true)
    }

    /// Sends a pong or a close from the reading side, after the frames already owed, without
    /// waiting: the writing side's task may be waiting for the connection itself, and a wait
    /// registered here would take its place. What does not fit now goes out with the next
    /// write or answer.
    fn answer(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        push_frame(&mut self.out, opcode, payload, self.mask);
        while self.sent < self.out.len() {
            match self.stream.try_write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
        self.forget_sent();
        Ok(())
    }

    /// Writes the frames owed until all are written (ready) or the connection is full.
    fn poll_send_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            match ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.sent..]))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.sent += n,
            }
        }
        self.forget_sent();
        Poll::Ready(Ok(()))
    }

    fn forget_sent(&mut self) {
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
    }

    /// Hands on as much of the text being read, then of its line end, as `buf` has room for.
    fn hand_on(&mut self, buf: &mut ReadBuf<'_>) {
        let here = self.end - self.start;
        let n = (self.payload_left.min(here as u64) as usize).min(buf.remaining());
        if n > 0 {
            buf.put_slice(&self.input[self.start..self.start + n]);
            self.start += n;
            self.payload_left -= n as u64;
            if self.payload_left == 0 && self.final_frame {
                self.line_end_left = LINE_END.len();
            }
        }
        let n = self.line_end_left.min(buf.remaining());
        if n > 0 {
            let from = LINE_END.len() - self.line_end_left;
            buf.put_slice(&LINE_END[from..from + n]);
            self.line_end_left -= n;
        }
    }
}

/// A frame's header, as read from the server.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// The payload's length.
    length: u64,
    /// The header's own length: 2, 4 or 10 bytes.
    size: usize,
}

impl Header {
    /// The header at the start of `bytes`, if all of it is there.
    fn parse(bytes: &[u8]) -> io::Result<Option<Header>> {
        let [first, second, ref rest @ ..] = *bytes else {
            return Ok(None);
        };
        if second & MASKED != 0 {
            return Err(invalid("a masked frame from the server"));
        }
        let (length, size) = match second & !MASKED {
            LENGTH_16 => match rest.first_chunk::<2>() {
                Some(length) => (u64::from(u16::from_be_bytes(*length)), 4),
                None => return Ok(None),
            },
            LENGTH_64 => match rest.first_chunk::<8>() {
                Some(length) => (u64::from_be_bytes(*length), 10),
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        Ok(Some(Header {
            fin: first & FIN != 0,
            opcode: first & OPCODE,
            length,
            size,
        }))
    }
}

/// Appends a whole frame to the server to `out`: the payload's length in the shortest form,
/// and the payload masked as every frame from a client must be. One key per connection, not
/// per frame as RFC 6455 asks: masking protects proxies that could be fooled by what a page
/// sends, and between chat-bench and a server on the same machine there is none.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(FIN | opcode);
    match payload.len() {
        n if n <= usize::from(SHORT_LENGTH_MAX) => out.push(MASKED | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(MASKED | LENGTH_16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(MASKED | LENGTH_64);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// Checks the handshake answer: `101 Switching Protocols`, with the accept key that proves the
/// server read our key (RFC 6455 section 4.1).
fn check_answer(head: &[u8], accept: &str) -> io::Result<()> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101 ") {
        return Err(invalid(&format!("the server answered {status:?}, not 101")));
    }
    let accepted = lines
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if !accepted {
        return Err(invalid(
            "the server's Sec-WebSocket-Accept is not our key's",
        ));
    }
    Ok(())
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("WebSocket: {why}"))
}

impl AsyncRead for WsLines {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Every line already here, as far as `buf` has room, as a TCP read would.
        let start = buf.filled().len();
        loop {
            this.hand_on(buf);
            if buf.remaining() == 0 || this.closed {
                return Poll::Ready(Ok(()));
            }
            if this.payload_left == 0 && this.line_end_left == 0 && this.take_frame()? {
                continue;
            }
            // More must be read: to the start of the buffer first, whatever is left of it.
            this.input.copy_within(this.start..this.end, 0);
            this.end -= this.start;
            this.start = 0;
            let mut read = ReadBuf::new(&mut this.input[this.end..]);
            match Pin::new(&mut this.stream).poll_read(cx, &mut read) {
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => result?,
            }
            match read.filled().len() {
                0 => return Poll::Ready(Ok(())),
                n => this.end += n,
            }
        }
    }
}

impl AsyncWrite for WsLines {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if this.out.len() - this.sent >= WRITE_BUFFER {
            ready!(this.poll_send_out(cx))?;
        }
        for piece in data.split_inclusive(|&b| b == b'\n') {
            this.partial.extend_from_slice(piece);
            if let Some(line) = this.partial.strip_suffix(b"\n") {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                push_frame(&mut this.out, TEXT, line, this.mask);
                this.partial.clear();
            }
        }
        // As much as the connection takes now; the rest at the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_send_out(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_out(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    /// Our close frame, written: the server answers it with its own and closes.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            push_frame(&mut this.out, CLOSE, &CLOSE_NORMAL.to_be_bytes(), this.mask);
        }
        this.poll_send_out(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write as _;
    use std::net::TcpListener;

    use tokio::io::AsyncBufReadExt as _;
    use tungstenite::{Bytes, Message};

    #[test]
    fn a_header_has_a_2_4_or_10_byte_length_and_is_none_until_all_there() {
        let short = [FIN | TEXT, 5];
        let medium = [FIN | TEXT, LENGTH_16, 0x01, 0x00];
        let long = [TEXT, LENGTH_64, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00];
        let header = |fin, length, size| Header {
            fin,
            opcode: TEXT,
            length,
            size,
        };
        assert_eq!(Header::parse(&short).unwrap(), Some(header(true, 5, 2)));
        assert_eq!(Header::parse(&medium).unwrap(), Some(header(true, 256, 4)));
        assert_eq!(
            Header::parse(&long).unwrap(),
            Some(header(false, 65536, 10))
        );
        for whole in [&short[..], &medium, &long] {
            for cut in 0..whole.len() {
                assert_eq!(Header::parse(&whole[..cut]).unwrap(), None, "{cut}");
            }
        }
        assert!(Header::parse(&[FIN | TEXT, MASKED | 5]).is_err());
    }

    /// A server made with tungstenite sends what chat-bench must read: lines of every length
    /// form, one in pieces, a ping between them, then a close; it checks what the client sends
    /// back, masked: a line, the pong, the close.
    #[tokio::test]
    async fn lines_of_every_length_pings_and_a_close_read_as_tungstenite_sends_them() {
        let long = "x".repeat(70_000);
        let medium = "y".repeat(300);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = [long.clone(), medium.clone()];
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(tcp).unwrap();
            ws.send(Message::text("hello")).unwrap();
            ws.send(Message::Ping(Bytes::from_static(b"are you there")))
                .unwrap();
            for line in &sent {
                ws.send(Message::text(line.as_str())).unwrap();
            }
            let pieces = [(TEXT, false, "in "), (CONTINUATION, true, "pieces")];
            for (opcode, fin, text) in pieces {
                let mut frame = Vec::new();
                frame.push(if fin { FIN | opcode } else { opcode });
                frame.push(text.len() as u8);
                frame.extend_from_slice(text.as_bytes());
                ws.get_mut().write_all(&frame).unwrap();
            }
            let mut heard = Vec::new();
            while heard.len() < 2 {
                match ws.read().unwrap() {
                    Message::Text(text) => heard.push(text.to_string()),
                    Message::Pong(payload) => heard.push(format!("pong {payload:?}")),
                    other => panic!("unexpected {other:?}"),
                }
            }
            ws.close(None).unwrap();
            while ws.read().is_ok() {}
            heard
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let ws = WsLines::connect(tcp, addr).await.unwrap();
        let (reader, mut writer) = tokio::io::split(ws);
        let mut reader = tokio::io::BufReader::with_capacity(64, reader);
        let mut line = String::new();
        let mut read = Vec::new();
        for _ in 0..4 {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            read.push(line.clone());
        }
        assert_eq!(
            read,
            [
                "hello\r\n",
                &format!("{long}\r\n"),
                &format!("{medium}\r\n"),
                "in pieces\r\n"
            ]
        );
        writer.write_all(b"a line\r\n").await.unwrap();
        writer.flush().await.unwrap();
        line.clear();
        assert_eq!(
            reader.read_line(&mut line).await.unwrap(),
            0,
            "the close ends it"
        );
        let heard = server.join().unwrap();
        assert_eq!(heard, ["pong b\"are you there\"", "a line"]);
    }
}

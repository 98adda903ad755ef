//! WebSocket clients for `run --ws` and `compare`'s WebSocket row: v4's web listener (SPEC 9)
//! measured with the same clients, lines and tokens as TCP.
//!
//! [`WsLines`] is the mirror of the server's `web::lines::WebSocketLines`: it makes a
//! WebSocket look like the byte stream of lines the load clients already read and write. A
//! received text message becomes its text and `\r\n`, as a TCP server sends lines; what a
//! client writes is cut at each `\n` into one text message per line. Reading uses only the
//! WebSocket's `Stream` side and writing only its `Sink` side, which tokio-tungstenite lets two
//! tasks use at once (it wakes each for its own side).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// A client's WebSocket to `ws://ADDR/ws`, as a byte stream of lines.
#[derive(Debug)]
pub struct WsLines {
    socket: WebSocketStream<TcpStream>,
    /// The rest of the message being read, then its `\r\n`.
    incoming: Bytes,
    line_end_owed: bool,
    /// The start of a line being written, until its `\n`.
    partial: Vec<u8>,
}

impl WsLines {
    /// Opens the WebSocket over `tcp`, connected to the web listener at `addr` (no `Origin`:
    /// a program, not a page).
    pub async fn connect(tcp: TcpStream, addr: SocketAddr) -> io::Result<WsLines> {
        let (socket, _response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
            .await
            .map_err(io::Error::other)?;
        Ok(WsLines {
            socket,
            incoming: Bytes::new(),
            line_end_owed: false,
            partial: Vec::new(),
        })
    }
}

impl AsyncRead for WsLines {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Every message already here, as far as `buf` has room, as a TCP read would.
        let start = buf.filled().len();
        loop {
            if !this.incoming.is_empty() {
                let n = this.incoming.len().min(buf.remaining());
                buf.put_slice(&this.incoming.split_to(n));
            }
            if !this.incoming.is_empty() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.line_end_owed {
                this.line_end_owed = false;
                this.incoming = Bytes::from_static(b"\r\n");
                continue;
            }
            match Pin::new(&mut this.socket).poll_next(cx) {
                Poll::Pending if buf.filled().len() > start => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(Message::Text(text)))) => {
                    this.incoming = Bytes::from(text);
                    this.line_end_owed = true;
                }
                Poll::Ready(Some(Ok(Message::Close(_))) | None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(io::Error::other(error))),
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
        let mut taken = 0;
        for piece in data.split_inclusive(|&b| b == b'\n') {
            match Pin::new(&mut this.socket).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                Poll::Pending if taken == 0 => return Poll::Pending,
                Poll::Pending => break,
            }
            taken += piece.len();
            this.partial.extend_from_slice(piece);
            if !piece.ends_with(b"\n") {
                break;
            }
            let mut line = std::mem::take(&mut this.partial);
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
            let text = Utf8Bytes::try_from(line).map_err(io::Error::other)?;
            Pin::new(&mut this.socket)
                .start_send(Message::Text(text))
                .map_err(io::Error::other)?;
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}

//! The listeners: where connections come in, get a slot in the room, and become sessions.
//!
//! Every listener does the same three things, whatever it carries: accept, take a slot in the
//! room at once ([`Room::admit`]: `--max-clients` and `--max-per-ip` count a connection from
//! accept on, SPEC 2 and 13), and hand the connection's byte stream to a session
//! ([`crate::session::serve`]), or tell it why not ([`turn_away`]). Only what turns a TCP
//! connection into a byte stream differs:
//!
//! - plaintext (`--addr`): the TCP connection is the stream, and joins at once;
//! - TLS (`--tls-addr`, SPEC 8): a TLS handshake first, in a task of its own and within
//!   `--tls-handshake-timeout-ms`, holding its slot meanwhile, so a crowd of connections that
//!   never finish their handshake cannot take more than `--max-clients` descriptors. A failed
//!   or late handshake is one log line, and its socket is closed. A connection refused a slot
//!   still gets its handshake, so that its notice arrives over TLS, then a close_notify.
//!
//! A WebSocket listener (issue 11) will be one more of these, upgrading HTTP instead of
//! handshaking TLS; the room and the sessions stay as they are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::room::{Admission, Refusal, Room};
use crate::session;

/// How long an accept loop waits after an `accept` error (out of descriptors, say) before
/// trying again, instead of spinning on an error that will repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound TLS listener and the certificate it presents.
pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
    /// How long a handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The acceptor holds keys and has no Debug of its own: show where it listens.
        f.debug_struct("TlsListener")
            .field("listener", &self.listener)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// The next connection, with Nagle's delay off. An `accept` error never ends the server.
async fn next_connection(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((socket, addr)) => {
                // Chat lines are small and someone is waiting for each: send them now, not in
                // 40 ms.
                let _ = socket.set_nodelay(true);
                return (socket, addr);
            }
            Err(error) => {
                // Typically EMFILE: the clients we have still deserve service, so wait for
                // descriptors to free up instead of exiting or spinning.
                tracing::warn!("accept failed: {error}; retrying in {ACCEPT_BACKOFF:?}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accepts plaintext connections forever. Each joins the room here, in the order it came.
pub async fn accept_plain(listener: &TcpListener, room: &Arc<Room>) {
    loop {
        let (socket, addr) = next_connection(listener).await;
        match room.admit(addr.ip()) {
            Ok(admission) => {
                let joined = session::join(room, admission, addr);
                tokio::spawn(session::serve(Arc::clone(room), joined, socket));
            }
            Err(refusal) => {
                tokio::spawn(turn_away(socket, addr, refusal));
            }
        }
    }
}

/// Accepts TLS connections forever: each takes its slot here, then shakes hands in a task of
/// its own, so one slow handshake never holds up the next accept.
pub async fn accept_tls(tls: &TlsListener, room: &Arc<Room>) {
    loop {
        let (socket, addr) = next_connection(&tls.listener).await;
        let admission = room.admit(addr.ip());
        let handshake = tls.acceptor.accept(socket);
        let timeout = tls.handshake_timeout;
        let room = Arc::clone(room);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!("{addr}: TLS handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    tracing::warn!("{addr}: TLS handshake not done in {timeout:?}: closed");
                    return;
                }
            };
            welcome(room, admission, addr, stream).await;
        });
    }
}

/// Starts the session of a connection that has its byte stream, or turns it away.
async fn welcome<S>(
    room: Arc<Room>,
    admission: Result<Admission, Refusal>,
    addr: SocketAddr,
    stream: S,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match admission {
        Ok(admission) => {
            let joined = session::join(&room, admission, addr);
            session::serve(room, joined, stream).await;
        }
        Err(refusal) => turn_away(stream, addr, refusal).await,
    }
}

/// Tells a connection that may not join why, and closes it so that the notice arrives, with
/// [`session::close_with_notice`] (telnet speaks first, so there may well be unread input).
/// Spawned, so an accept loop never waits for it.
async fn turn_away<S>(stream: S, addr: SocketAddr, refusal: Refusal)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let notice = refusal.notice();
    tracing::warn!("turned {addr} away: {notice}");
    session::close_with_notice(stream, Vec::new(), notice).await;
}

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
//! Turning a connection away takes a moment (its notice, then a drain, see
//! [`session::close_with_notice`]; on TLS a handshake before that), so at most
//! [`TURNING_AWAY_MAX`] connections per listener are turned away at once. Beyond that a storm
//! of refused connections gets the short answer: the notice if the socket takes it at once
//! (plaintext only) and a close.
//!
//! The web listener ([`crate::web`]) is one more of these: it upgrades an HTTP request to a
//! WebSocket instead of handshaking TLS (or after it), takes the slot at the upgrade, and hands
//! the WebSocket, as a byte stream of lines, to [`welcome`]; the room and the sessions stay as
//! they are.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chat_protocol::message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::room::{Admission, Refusal, Room};
use crate::session;

/// How long an accept loop waits after an `accept` error (out of descriptors, say) before
/// trying again, instead of spinning on an error that will repeat.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Most connections one listener turns away at once with the full courtesy (a TLS handshake,
/// the notice, a drain). Each holds a descriptor for up to a second (plus its handshake on
/// TLS), so without a bound a storm of refused connections could take every descriptor the
/// process has; 256 is far more than a class ever sends at once.
pub(crate) const TURNING_AWAY_MAX: usize = 256;

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
pub(crate) async fn next_connection(listener: &TcpListener) -> (TcpStream, SocketAddr) {
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
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY_MAX));
    loop {
        let (socket, addr) = next_connection(listener).await;
        match room.admit(addr.ip()) {
            Ok(admission) => {
                let joined = session::join(room, admission, addr);
                tokio::spawn(session::serve(Arc::clone(room), joined, socket));
            }
            Err(refusal) => match Arc::clone(&turning_away).try_acquire_owned() {
                Ok(permit) => {
                    tokio::spawn(async move {
                        turn_away(socket, addr, refusal).await;
                        drop(permit);
                    });
                }
                Err(_) => turn_away_at_once(&socket, &refusal),
            },
        }
    }
}

/// The short answer to a refused connection while [`TURNING_AWAY_MAX`] are already being
/// turned away: the notice, if the fresh socket takes it at once, what the client already sent
/// read (so that the close is less likely a reset), and the close.
fn turn_away_at_once(socket: &TcpStream, refusal: &Refusal) {
    let _ = socket.try_write(&message::wire(&refusal.notice()));
    let _ = socket.try_read(&mut [0u8; 1024]);
}

/// Accepts TLS connections forever: each takes its slot here, then shakes hands in a task of
/// its own, so one slow handshake never holds up the next accept.
pub async fn accept_tls(tls: &TlsListener, room: &Arc<Room>) {
    let turning_away = Arc::new(Semaphore::new(TURNING_AWAY_MAX));
    loop {
        let (socket, addr) = next_connection(&tls.listener).await;
        let admission = room.admit(addr.ip());
        // A refused connection's handshake is part of turning it away: bounded like it.
        let permit: Option<OwnedSemaphorePermit> = match &admission {
            Ok(_) => None,
            Err(_) => match Arc::clone(&turning_away).try_acquire_owned() {
                Ok(permit) => Some(permit),
                // No notice is possible before a handshake: just close.
                Err(_) => continue,
            },
        };
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
            drop(permit);
        });
    }
}

/// Starts the session of a connection that has its byte stream, or turns it away: the same
/// for TCP, TLS and WebSocket ([`crate::web`]) connections.
pub(crate) async fn welcome<S>(
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

//! The web listener (SPEC 9): a chat page, and a WebSocket that makes a browser a member of
//! the room like any other.
//!
//! ```text
//! cargo run -p v4-async -- --web-addr 127.0.0.1:8090     # then http://127.0.0.1:8090/
//! ```
//!
//! `--web-addr` serves four things over HTTP/1.1 (HTTPS with the TLS certificate, when one is
//! configured):
//!
//! | route | answer |
//! |---|---|
//! | `GET /` (and `/app.js`, `/style.css`) | the chat page, embedded in the binary ([`page`]) |
//! | `GET /ws` | the WebSocket: one text message per line, both ways ([`lines`]) |
//! | `GET /healthz` | `200 ok`, for a probe |
//! | anything else | `404` |
//!
//! Every answer carries a Content-Security-Policy that lets the page load only its own script
//! and style and connect only to its own origin, and `X-Content-Type-Options: nosniff`.
//!
//! **A browser is a member like any other.** The WebSocket handler takes a slot in the room at
//! the handshake ([`Room::admit`]: `--max-clients`, `--max-per-ip`), wraps the WebSocket as a
//! byte stream of lines ([`lines::WebSocketLines`]) and hands it to the very session a TCP
//! connection gets ([`listeners::welcome`]). A browser that may not join gets the refusal
//! notice as a message, then a close frame. Unlike the pattern of axum's chat example, no
//! `broadcast` channel stands between the room and the browser: its lines wait in its own
//! bounded outbox, and a tab that stops reading is evicted after `--stall-ms` instead of
//! silently missing lines.
//!
//! **Cross-Site WebSocket Hijacking.** A page on any site can open a WebSocket to any server,
//! and the browser sends along its cookies: the server's only protection is the `Origin`
//! header, which browsers set and pages cannot forge. A handshake whose `Origin` is neither
//! this page's own (`http://` or `https://` and the `Host` it asked for) nor one given with
//! `--web-origin` is refused with `403`. No `Origin` at all is a program, not a browser
//! page, and is let in like a telnet user.
//!
//! **Bounds.** The connection is served by hyper, accepted here like the other listeners: a
//! TLS handshake within `--tls-handshake-timeout-ms`, a request's headers within
//! [`REQUEST_TIMEOUT`] (also while a kept-alive connection waits for its next request), at
//! most [`HTTP_CONNECTIONS_MAX`] HTTP connections at once (a WebSocket stops counting there
//! once upgraded: the room's `--max-clients` counts it), at most `--max-per-ip` of them from
//! one address but never fewer than one browser needs ([`BROWSER_CONNECTIONS`]), so that one
//! host cannot take them all, and tungstenite's message, frame and buffer sizes, which are
//! unbounded by default, bounded ([`lines`]).

pub mod lines;
mod page;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chat_protocol::limits::PerIp;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower_service::Service as _;

use crate::listeners;
use crate::room::Room;

use self::lines::{WebSocketLines, MESSAGE_MAX, WEBSOCKET_READ_BUFFER, WEBSOCKET_WRITE_BUFFER};

/// A client must send a request's headers within this long of connecting, or of its last
/// answer on a kept-alive connection, or it is closed: a page load takes milliseconds, and a
/// connection that sends nothing must not hold a descriptor for long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most HTTP connections the web listener serves at once, besides upgraded WebSockets (which
/// `--max-clients` counts): a page load takes one to three for a moment, so 256 is a class
/// loading the page at once, and it bounds the descriptors a crowd of idle connections takes.
pub const HTTP_CONNECTIONS_MAX: usize = 256;

/// Fewest plain HTTP connections one address may hold at once, whatever `--max-per-ip` says:
/// what one browser needs to load the page and then open its WebSocket. Browsers open up to
/// six HTTP/1.1 connections to a host (Chrome, Firefox, Safari) and keep them open after the
/// page has loaded, and the WebSocket's handshake is one more until it is upgraded; with any
/// fewer, `--max-per-ip 1` would refuse a browser its own WebSocket.
pub const BROWSER_CONNECTIONS: usize = 6 + 1;

/// Bytes hyper may buffer for one request's headers (its minimum): a browser sends well under
/// 2 KiB.
const REQUEST_HEADERS_MAX: usize = 8 * 1024;

/// A bound web listener: where it listens, the certificate it serves HTTPS with (if any), and
/// the other origins whose pages may open a WebSocket.
pub struct WebListener {
    pub listener: TcpListener,
    /// With a certificate: HTTPS and WSS, each handshake within its timeout.
    pub tls: Option<(TlsAcceptor, Duration)>,
    /// `--web-origin`, each as `scheme://host[:port]`.
    pub origins: Vec<String>,
    /// `--max-per-ip`, which also bounds the plain HTTP connections one address holds (never
    /// below [`BROWSER_CONNECTIONS`]).
    pub max_per_ip: usize,
}

impl std::fmt::Debug for WebListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The acceptor holds keys and has no Debug of its own.
        f.debug_struct("WebListener")
            .field("listener", &self.listener)
            .field("https", &self.tls.is_some())
            .field("origins", &self.origins)
            .field("max_per_ip", &self.max_per_ip)
            .finish()
    }
}

impl WebListener {
    /// `http` or `https`: what the page's own origin starts with.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Web {
    room: Arc<Room>,
    scheme: &'static str,
    origins: Vec<String>,
    max_line: usize,
    /// Refused WebSockets being told so (see [`listeners::TURNING_AWAY_MAX`]).
    turning_away: Arc<Semaphore>,
}

/// Accepts web connections forever and serves each in a task of its own; the room is any
/// room (v4's, or another server's built on it).
pub async fn accept_web(web: &WebListener, room: &Arc<Room>) {
    let shared = Arc::new(Web {
        room: Arc::clone(room),
        scheme: web.scheme(),
        origins: web.origins.clone(),
        max_line: room.max_line,
        turning_away: Arc::new(Semaphore::new(listeners::TURNING_AWAY_MAX)),
    });
    let app = router(shared);
    let connections = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    let share = http_per_address(web.max_per_ip);
    let per_address = Arc::new(Mutex::new(PerIp::new(share)));
    loop {
        let (socket, addr) = listeners::next_connection(&web.listener).await;
        // Turned away as one beyond the listener's cap is: closed at once, unread, with a log
        // line (an answer would mean reading its request first).
        let Some(counted) = AddressCount::take(&per_address, addr.ip()) else {
            let ip = addr.ip();
            tracing::warn!("{addr}: {share} web connections from {ip} open already: closed");
            continue;
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!("{addr}: {HTTP_CONNECTIONS_MAX} web connections open already: closed");
            continue;
        };
        let app = app.clone();
        let tls = web.tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(socket, addr, app).await,
                Some((acceptor, timeout)) => {
                    match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => serve_http(stream, addr, app).await,
                        Ok(Err(error)) => tracing::warn!("{addr}: TLS handshake failed: {error}"),
                        Err(_) => {
                            tracing::warn!("{addr}: TLS handshake not done in {timeout:?}: closed")
                        }
                    }
                }
            }
            // Released once the connection closes or becomes a WebSocket, which the room
            // counts from then on.
            drop((permit, counted));
        });
    }
}

/// The plain HTTP connections one address may hold at once: `--max-per-ip` (0: no limit), but
/// at least what one browser needs. They are counted apart from the room's members, so a
/// page's own loads never take the slot its WebSocket joins the room with.
fn http_per_address(max_per_ip: usize) -> usize {
    match max_per_ip {
        0 => 0,
        max => max.max(BROWSER_CONNECTIONS),
    }
}

/// One plain HTTP connection counted against its address; no longer counted once dropped.
struct AddressCount {
    per_address: Arc<Mutex<PerIp>>,
    ip: IpAddr,
}

impl AddressCount {
    /// Counts a connection from `ip`, or returns `None` if `ip` holds its share already.
    fn take(per_address: &Arc<Mutex<PerIp>>, ip: IpAddr) -> Option<AddressCount> {
        let mut counts = per_address.lock().unwrap_or_else(PoisonError::into_inner);
        counts.try_add(ip).then(|| AddressCount {
            per_address: Arc::clone(per_address),
            ip,
        })
    }
}

impl Drop for AddressCount {
    fn drop(&mut self) {
        let mut counts = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.remove(self.ip);
    }
}

/// Serves HTTP/1.1 on one connection until it closes or is upgraded to a WebSocket (which
/// then lives in a task of its own).
async fn serve_http<S>(stream: S, addr: SocketAddr, app: Router)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request| {
        // Who is asking: the WebSocket member is named by it, `--max-per-ip` counts it.
        request.extensions_mut().insert(ConnectInfo(addr));
        app.clone().call(request)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(REQUEST_HEADERS_MAX)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        tracing::debug!("{addr}: web connection ended: {error}");
    }
}

/// The routes, each answer with the security headers.
fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/healthz", get(|| async { "ok" }))
        .route("/ws", get(websocket))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(secure))
        .with_state(web)
}

/// What the page may do, on every answer: load its script, style and images only from its own
/// origin (so no inline script, nothing from a CDN) and connect only back to it (`'self'`
/// covers `ws:` and `wss:` to the same host and port in CSP Level 3 browsers); nobody may
/// frame it; and a browser must not guess a type other than the one given.
async fn secure(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /ws`: the Origin check, a slot in the room, then the session over the WebSocket.
async fn websocket(
    State(web): State<Arc<Web>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !web.origin_allowed(origin, headers.get(header::HOST)) {
            tracing::warn!(
                "{addr}: WebSocket refused (403): Origin {origin:?} is not this page's nor a \
                 --web-origin (cross-site WebSocket hijacking?)"
            );
            return (StatusCode::FORBIDDEN, "this origin may not connect\n").into_response();
        }
    }
    // From the handshake on, the connection holds its slot, as a TCP one does from accept.
    let admission = web.room.admit(addr.ip());
    let permit = match &admission {
        Ok(_) => None,
        Err(_) => match Arc::clone(&web.turning_away).try_acquire_owned() {
            Ok(permit) => Some(permit),
            // Too many being turned away already: the short answer, without a WebSocket.
            Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        },
    };
    let room = Arc::clone(&web.room);
    upgrade
        .read_buffer_size(WEBSOCKET_READ_BUFFER)
        .write_buffer_size(WEBSOCKET_WRITE_BUFFER)
        .max_write_buffer_size(lines::max_write_buffer(web.max_line))
        .max_message_size(MESSAGE_MAX)
        .max_frame_size(MESSAGE_MAX)
        .on_upgrade(move |socket| async move {
            let stream = WebSocketLines::new(socket, addr);
            listeners::welcome(room, admission, addr, stream).await;
            drop(permit);
        })
}

impl Web {
    /// Whether a page from `origin` may open a WebSocket here: it is this page's own origin
    /// (the scheme this listener speaks, and the host the request was sent to), or one given
    /// with `--web-origin`. Origins compare without case, as hosts do.
    fn origin_allowed(&self, origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let own = host
            .and_then(|host| host.to_str().ok())
            .map(|host| format!("{}://{host}", self.scheme));
        own.iter()
            .chain(&self.origins)
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

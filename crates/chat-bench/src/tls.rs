//! TLS for measuring only: the clients of `run --tls` and of `compare`'s TLS row.
//!
//! chat-bench measures what TLS costs a server, not whom to trust, so it either pins the
//! server's certificate (`--fingerprint sha256:...`, from the server's `tls on` line) or, with
//! `--tls-insecure`, accepts any certificate. Either way the handshake's signatures are
//! checked, so the cryptography measured is the cryptography a real client does. Never copy
//! `--tls-insecure` into a program that talks to anyone: the client (`client --tls`) is how
//! to trust a server.

use std::sync::Arc;

use chat_protocol::fingerprint::Sha256Digest;
use chat_protocol::pin::PinnedCertificate;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How the benchmark's clients speak TLS to the server under test.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusting exactly the certificate whose SHA-256 is `pin`, or any certificate if `None`.
    pub fn new(pin: Option<Sha256Digest>) -> Tls {
        let verifier = match pin {
            Some(pin) => PinnedCertificate::new(pin),
            None => PinnedCertificate::any_for_measuring(),
        };
        Tls {
            connector: TlsConnector::from(Arc::new(verifier.client_config())),
        }
    }

    /// Shakes hands over `tcp`, which is connected to the server at `addr`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = ServerName::IpAddress(addr.ip().into());
        self.connector.connect(name, tcp).await
    }
}

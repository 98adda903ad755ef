//! TLS for measuring only: the clients of `run --tls` and of `compare`'s TLS row.
//!
//! chat-bench measures what TLS costs a server, not whom to trust, so it either pins the
//! server's certificate (`--fingerprint sha256:...`, from the server's `tls on` line) or, with
//! `--tls-insecure`, accepts any certificate. Either way the handshake's signatures are
//! checked, so the cryptography measured is the cryptography a real client does. Never copy
//! `--tls-insecure` into a program that talks to anyone: the client (`client --tls`) is how
//! to trust a server.

use std::sync::Arc;

use chat_protocol::fingerprint::{self, Sha256Digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
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
        let provider = Arc::new(ring::default_provider());
        let verifier = Arc::new(Verifier {
            pin,
            provider: Arc::clone(&provider),
        });
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Tls {
            connector: TlsConnector::from(Arc::new(config)),
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

/// Checks the pin, if there is one, and always the handshake's signatures.
#[derive(Debug)]
struct Verifier {
    pin: Option<Sha256Digest>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if fingerprint::digest(end_entity) != pin => {
                Err(rustls::Error::General(format!(
                    "the server's certificate is {}, not the pinned {}",
                    fingerprint::of_certificate(end_entity),
                    fingerprint::format(&pin)
                )))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

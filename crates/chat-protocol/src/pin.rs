//! Trusting one certificate by its fingerprint (SPEC 8's `--fingerprint sha256:...`), for the
//! client, the benchmark and the tests alike. Behind the `tls` feature, so that the servers,
//! which never verify a certificate, do not build a TLS client.
//!
//! A pin replaces the chain and name checks, nothing else: the server must still prove, by
//! signing the handshake, that it holds the certificate's private key. A certificate is public
//! (every client receives it), so a pin that only compared bytes would let anyone who once
//! connected impersonate the server.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::fingerprint::{self, Sha256Digest};

/// Accepts the certificate with one SHA-256 (or, for measuring only, any certificate), and
/// checks every handshake signature against the certificate presented.
#[derive(Debug)]
pub struct PinnedCertificate {
    /// `None`: any certificate, which only a benchmark may want.
    pin: Option<Sha256Digest>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCertificate {
    /// Trusts exactly the certificate whose SHA-256 is `pin`.
    pub fn new(pin: Sha256Digest) -> Self {
        Self::with(Some(pin))
    }

    /// Trusts any certificate, still checking that the server holds its key. For measuring
    /// what TLS costs a server, never for talking to one.
    pub fn any_for_measuring() -> Self {
        Self::with(None)
    }

    fn with(pin: Option<Sha256Digest>) -> Self {
        Self {
            pin,
            algorithms: ring::default_provider().signature_verification_algorithms,
        }
    }

    /// A TLS 1.2/1.3 client configuration (ring) that trusts only this.
    pub fn client_config(self) -> ClientConfig {
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring speaks TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(self))
            .with_no_client_auth()
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = fingerprint::digest(end_entity);
        match self.pin {
            Some(pin) if presented != pin => Err(rustls::Error::General(format!(
                "its fingerprint is {}, not the pinned {}",
                fingerprint::format(&presented),
                fingerprint::format(&pin)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    // The pin says which certificate; these prove the server holds its private key.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

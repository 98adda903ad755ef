//! TLS for the client (SPEC 8): which certificates it trusts, and how a rejection reads.
//!
//! Three ways to trust a server, one per flag:
//!
//! - `--tls` alone: the certificate must chain to a root the system trusts (the same store as
//!   the machine's browsers and `curl`, read by rustls-native-certs), and name the host dialled;
//! - `--ca FILE`: it must chain to the CA in FILE (a class's own CA, say);
//! - `--fingerprint sha256:HEX`: it must be exactly the certificate with that SHA-256, which is
//!   how a class trusts the teacher's self-signed certificate.
//!
//! A pin replaces the chain and name checks, nothing else: the server must still prove, by
//! signing the handshake, that it holds the certificate's private key
//! (`chat_protocol::pin`, shared with chat-bench and the tests).

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chat_protocol::fingerprint::Sha256Digest;
use chat_protocol::pin::PinnedCertificate;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// Whom the client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's root certificates.
    SystemRoots,
    /// The CA certificate(s) in this PEM file.
    Ca(std::path::PathBuf),
    /// Exactly the leaf certificate with this SHA-256.
    Fingerprint(Sha256Digest),
}

/// The rustls configuration for `trust`: TLS 1.2 and 1.3 with the ring provider.
pub fn client_config(trust: &Trust) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("cannot set up TLS")?;
    let config = match trust {
        Trust::SystemRoots => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
        Trust::Ca(path) => builder
            .with_root_certificates(roots_from(path)?)
            .with_no_client_auth(),
        Trust::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(*pin)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    // Some stores hold a certificate rustls cannot parse; the others are still good.
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(anyhow!(
            "this system has no trusted root certificates; give --ca FILE or --fingerprint sha256:..."
        ));
    }
    Ok(roots)
}

fn roots_from(path: &Path) -> anyhow::Result<RootCertStore> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the CA file {shown}"))?
    {
        let cert = cert.with_context(|| format!("the CA file {shown} is not valid PEM"))?;
        roots.add(cert).with_context(|| {
            format!("the CA file {shown} holds a certificate rustls cannot use")
        })?;
    }
    if roots.is_empty() {
        return Err(anyhow!("the CA file {shown} holds no certificate"));
    }
    Ok(roots)
}

/// The name the certificate must carry, from the address as typed: a host name is checked (and
/// sent as SNI), an IP address must be in the certificate's IP addresses. `:8443` and `8443`
/// mean 127.0.0.1, as everywhere else.
pub fn server_name(typed: &str, resolved: std::net::SocketAddr) -> ServerName<'static> {
    let typed = typed.trim();
    let host = match typed.rsplit_once(':') {
        Some((host, _port)) if !host.starts_with('[') => host,
        _ => "",
    };
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return ServerName::IpAddress(resolved.ip().into());
    }
    match ServerName::try_from(host.to_owned()) {
        Ok(name) => name,
        Err(_) => ServerName::IpAddress(resolved.ip().into()),
    }
}

/// Why a handshake failed, as the end of a sentence that starts "the certificate of ADDR was
/// rejected: ", or `None` if the failure was not about the certificate.
pub fn rejection(error: &std::io::Error) -> Option<String> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    let why = match tls {
        rustls::Error::InvalidCertificate(why) => match why {
            CertificateError::UnknownIssuer => "it is not signed by an authority this client \
                trusts (give --ca FILE, or --fingerprint sha256:... for a self-signed one)"
                .to_owned(),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "it is not issued for the address you dialled".to_owned()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "it has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "it is not valid yet".to_owned()
            }
            CertificateError::BadSignature => {
                "the server could not prove it holds the certificate's key".to_owned()
            }
            CertificateError::Other(_) => {
                "it cannot be used as a server certificate (is it a CA certificate?)".to_owned()
            }
            other => format!("{other:?}"),
        },
        rustls::Error::General(why) => why.clone(),
        rustls::Error::PeerMisbehaved(_) | rustls::Error::InvalidMessage(_) => return None,
        other => other.to_string(),
    };
    Some(why)
}

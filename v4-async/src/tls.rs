//! TLS for the room (SPEC 8): the certificate, and the rustls configuration built on it.
//!
//! A server speaks TLS on `--tls-addr` with either a certificate it is given (`--tls-cert FILE
//! --tls-key FILE`, PEM) or one it makes at start-up (`--tls-self-signed`). Either way it logs
//! the certificate's SHA-256 (`tls on ADDR (certificate sha256:...)`), which is what a class
//! pins with `client --tls --fingerprint sha256:...` when nobody signed the certificate.
//!
//! After the handshake a TLS connection is a byte stream like any other (`AsyncRead +
//! AsyncWrite`), so the session code does not know or care which listener it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chat_protocol::fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// How long a self-signed certificate is valid: about a year, enough for a course, and not
/// rcgen's default of several thousand years, which no certificate should claim.
const SELF_SIGNED_DAYS: i64 = 365;

/// The names a self-signed certificate is issued for: what a class dials on one machine. An IP
/// address must be in the certificate itself, because a client dialling an IP sends no name
/// (SNI) to match against.
const SELF_SIGNED_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// A PEM chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1).
    Files { cert: PathBuf, key: PathBuf },
    /// Made at start-up for [`SELF_SIGNED_NAMES`].
    SelfSigned,
}

/// A certificate chain and key ready to serve, with the leaf's fingerprint.
#[derive(Debug)]
pub struct Identity {
    pub config: Arc<ServerConfig>,
    /// `sha256:` and the SHA-256 of the leaf certificate's DER, as logged.
    pub fingerprint: String,
}

impl Identity {
    /// Loads or makes the certificate and builds a TLS 1.2/1.3 server configuration on it.
    pub fn new(source: &CertSource) -> anyhow::Result<Identity> {
        let (chain, key) = match source {
            CertSource::Files { cert, key } => (read_chain(cert)?, read_key(key)?),
            CertSource::SelfSigned => self_signed()?,
        };
        let fingerprint = fingerprint::of_certificate(&chain[0]);
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .context("cannot set up TLS")?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .context("the TLS certificate and key do not make a usable pair")?;
        Ok(Identity {
            config: Arc::new(config),
            fingerprint,
        })
    }
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let chain = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read the TLS certificate file {shown}"))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the TLS certificate file {shown} is not valid PEM"))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "the TLS certificate file {shown} holds no certificate"
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    // PrivateKeyDer reads the first PKCS#8, PKCS#1 or SEC1 key in the file.
    PrivateKeyDer::from_pem_file(path).with_context(|| {
        format!(
            "cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM) from {}",
            path.display()
        )
    })
}

/// A certificate for this machine's names, signed by its own key, valid from now for
/// [`SELF_SIGNED_DAYS`].
fn self_signed() -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|&n| n.to_owned()).collect();
    let mut params = rcgen::CertificateParams::new(names)
        .context("cannot describe a self-signed certificate")?;
    let now = time::OffsetDateTime::now_utc();
    // A little slack before now, for clients whose clocks run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sock-chat (self-signed)");
    let key = rcgen::KeyPair::generate().context("cannot make a key pair")?;
    let cert = params
        .self_signed(&key)
        .context("cannot make a self-signed certificate")?;
    let key = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|error| anyhow!("cannot use the generated key: {error}"))?;
    Ok((vec![cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_identity_names_this_machine_for_about_a_year() {
        let (chain, _key) = self_signed().unwrap();
        let identity = Identity::new(&CertSource::SelfSigned).unwrap();
        assert!(identity.fingerprint.starts_with("sha256:"));
        assert_eq!(identity.fingerprint.len(), "sha256:".len() + 64);
        // The DER holds the names as written: DNS "localhost", IPs as 4 and 16 raw bytes.
        let der: &[u8] = &chain[0];
        assert!(der.windows(9).any(|w| w == b"localhost"));
        assert!(der.windows(4).any(|w| w == [127, 0, 0, 1]));
        let mut ipv6_loopback = [0u8; 16];
        ipv6_loopback[15] = 1;
        assert!(der.windows(16).any(|w| w == ipv6_loopback));
    }

    #[test]
    fn missing_files_are_one_clear_sentence() {
        let source = CertSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let error = format!("{:#}", Identity::new(&source).unwrap_err());
        assert!(error.contains("/nonexistent/cert.pem"), "{error}");
    }
}

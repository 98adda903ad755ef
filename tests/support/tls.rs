//! TLS from the tests' side: a client that pins the server's certificate, the server's `tls on`
//! line read back, and certificate authorities made on the spot.
//!
//! The client is the tests' [`Client`] over rustls' blocking stream, so a TLS test reads like a
//! plaintext one: send a line, read a line, fail at the deadline.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_protocol::pin::PinnedCertificate;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::{server_lines, tcp_from, Client, Running, Transport, DEADLINE};

/// What a server's `tls on <ADDR> (certificate sha256:<HEX>)` line says.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub addr: SocketAddr,
    /// `sha256:` and 64 lowercase hex digits.
    pub fingerprint: String,
}

impl Running {
    /// Waits for the `tls on` line and reads the address and fingerprint off it.
    pub fn tls_listener(&self) -> TlsListener {
        let line = self.expect_log("tls on ");
        let rest = line.split("tls on ").nth(1).unwrap();
        let (addr, rest) = rest.split_once(' ').expect("tls on ADDR (certificate ...)");
        let fingerprint = rest
            .strip_prefix("(certificate ")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("no (certificate sha256:...) in {line:?}"));
        TlsListener {
            addr: addr.parse().expect("address in the tls on line"),
            fingerprint: fingerprint.to_owned(),
        }
    }
}

impl TlsListener {
    /// A new TLS connection, its handshake done, trusting exactly the certificate whose
    /// fingerprint the `tls on` line gave.
    pub fn connect(&self) -> TlsClient {
        self.handshake(TcpStream::connect(self.addr).expect("connect"))
    }

    /// Like [`TlsListener::connect`], from the loopback address `source` (`127.0.0.2`, say),
    /// which `--max-per-ip` counts.
    pub fn connect_from(&self, source: std::net::IpAddr) -> TlsClient {
        self.handshake(tcp_from(self.addr, source))
    }

    fn handshake(&self, tcp: TcpStream) -> TlsClient {
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        tcp.set_write_timeout(Some(DEADLINE)).unwrap();
        let connection = ClientConnection::new(
            pinned_config(&self.fingerprint),
            ServerName::IpAddress(self.addr.ip().into()),
        )
        .expect("a TLS client connection");
        let mut stream = StreamOwned::new(connection, tcp);
        // Drive the handshake now, so that its failure is this call's.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake");
        }
        Client::over_stream(stream)
    }
}

/// A TLS connection to a server: a [`Client`] whose bytes go through rustls.
pub type TlsClient = Client<StreamOwned<ClientConnection, TcpStream>>;

impl Transport for StreamOwned<ClientConnection, TcpStream> {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
}

impl TlsClient {
    /// Reads until the server ends the TLS session with its `close_notify`; returns the lines
    /// that came first. Panics on a reset or on a TCP close without `close_notify`.
    pub fn read_to_close_notify(&mut self) -> Vec<String> {
        match self.read_rest() {
            // rustls reports a clean end only after the peer's close_notify.
            (rest, None) => server_lines(&rest),
            (_, Some(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                panic!("the server closed TCP without a TLS close_notify")
            }
            (_, Some(e)) => panic!("TLS read failed: {e}"),
        }
    }
}

/// A client configuration that trusts exactly the certificate with `fingerprint`.
fn pinned_config(fingerprint: &str) -> Arc<ClientConfig> {
    let pin = chat_protocol::fingerprint::parse(fingerprint).expect("a sha256: fingerprint");
    Arc::new(PinnedCertificate::new(pin).client_config())
}

/// A certificate authority made for one test, and a server certificate it signed for
/// 127.0.0.1, written as PEM files into `dir`.
#[derive(Debug)]
pub struct TestCa {
    /// The CA's certificate: what `client --ca` takes.
    pub ca_pem: PathBuf,
    /// The server's certificate (leaf) and key: what `--tls-cert` and `--tls-key` take.
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let now = time::OffsetDateTime::now_utc();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sock-chat test CA");
        ca_params.not_before = now - time::Duration::hours(1);
        ca_params.not_after = now + time::Duration::days(1);
        let ca = ca_params.self_signed(&ca_key).unwrap();

        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        leaf_params.not_before = now - time::Duration::hours(1);
        leaf_params.not_after = now + time::Duration::days(1);
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();

        let files = TestCa {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("cert.pem"),
            key_pem: dir.join("key.pem"),
        };
        std::fs::write(&files.ca_pem, ca.pem()).unwrap();
        std::fs::write(&files.cert_pem, leaf.pem()).unwrap();
        std::fs::write(&files.key_pem, leaf_key.serialize_pem()).unwrap();
        files
    }
}

/// A fresh, empty directory for one test's files, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "sock-chat-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

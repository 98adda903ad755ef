//! TLS (SPEC 8): v4 listens for TLS beside plaintext, both feed one room, and the client trusts
//! a server by the system's roots, a CA (`--ca`) or a pinned fingerprint, and nothing else.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sock_chat_tests::client_process::ClientProcess;
use sock_chat_tests::tls::{TempDir, TestCa, TlsListener};
use sock_chat_tests::{chat_line, Client, Running, Server, DEADLINE};

/// v4 with a self-signed certificate on a second, TLS, port; no rate limit.
fn self_signed(extra: &[&str]) -> (Running, TlsListener) {
    let mut args = vec![
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--rate",
        "0",
    ];
    args.extend_from_slice(extra);
    let running = Server::V4Async.start(&args);
    let tls = running.tls_listener();
    (running, tls)
}

/// Reads up to the welcome, so the client is known to be in the room.
fn welcomed(client: &mut Client) {
    client.read_until(|line| line.starts_with("* welcome "));
}

#[test]
fn logs_one_tls_line_with_address_and_certificate_fingerprint() {
    let (running, tls) = self_signed(&[]);
    assert_ne!(tls.addr.port(), 0);
    assert_ne!(tls.addr, running.addr);
    let hex = tls.fingerprint.strip_prefix("sha256:").unwrap();
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let line = running.expect_log("tls on ");
    assert!(!line.contains("listening on"), "{line}");
    let listening = running
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("listening on"))
        .count();
    assert_eq!(listening, 1);
}

#[test]
fn a_tls_user_and_a_telnet_user_chat_both_ways() {
    let (running, tls) = self_signed(&[]);
    let mut plain = running.connect();
    welcomed(&mut plain);
    let mut secure = tls.connect();
    secure.read_until(|line| line.starts_with("* welcome "));
    plain.read_until(|line| line.contains(" joined "));

    secure.send_line("over TLS");
    plain.expect_line(&chat_line(secure.addr(), "over TLS"));
    plain.send_line("over telnet");
    assert_eq!(secure.read_line(), chat_line(plain.addr(), "over telnet"));

    // Same commands, same limits: the TLS user is a member like any other.
    secure.send_line("/nick alice");
    assert_eq!(
        secure.read_line(),
        format!("* {} is now alice", secure.addr())
    );
    secure.send_line(&"x".repeat(2000));
    assert_eq!(
        secure.read_line(),
        "* error: line too long (max 1024 bytes)"
    );
}

#[test]
fn the_client_pinning_the_fingerprint_chats_with_a_telnet_user() {
    let (running, tls) = self_signed(&[]);
    let mut plain = running.connect();
    welcomed(&mut plain);
    let addr = tls.addr.to_string();
    let mut client = ClientProcess::spawn(&[
        "--tls",
        &addr,
        "--fingerprint",
        &tls.fingerprint.to_uppercase().replace("SHA256:", "sha256:"),
        "--nick",
        "bob",
    ]);
    client.expect_printed(|line| line.starts_with("* welcome "));
    plain.read_until(|line| line.ends_with(" is now bob"));
    client.type_line("hello from the client");
    plain.expect_line("bob says: hello from the client");
    plain.send_line("hello back");
    let heard = chat_line(plain.addr(), "hello back");
    client.expect_printed(|line| line == heard);
}

#[test]
fn a_wrong_fingerprint_is_rejected_in_one_sentence_naming_both() {
    let (_running, tls) = self_signed(&[]);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let exit = ClientProcess::spawn(&["--tls", &tls.addr.to_string(), "--fingerprint", &wrong])
        .wait_exit();
    assert!(!exit.status.success(), "{exit:?}");
    assert!(
        exit.printed.is_empty(),
        "nothing was said in plaintext: {exit:?}"
    );
    assert_eq!(exit.stderr.lines().count(), 1, "{:?}", exit.stderr);
    assert!(exit.stderr.contains("rejected"), "{:?}", exit.stderr);
    assert!(exit.stderr.contains(&tls.fingerprint), "{:?}", exit.stderr);
    assert!(exit.stderr.contains(&wrong), "{:?}", exit.stderr);
}

#[test]
fn a_certificate_signed_by_a_ca_given_with_ca_is_trusted_and_not_otherwise() {
    let dir = TempDir::new("tls-ca");
    let ca = TestCa::new(&dir.0);
    let running = Server::V4Async.start(&[
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-cert",
        ca.cert_pem.to_str().unwrap(),
        "--tls-key",
        ca.key_pem.to_str().unwrap(),
    ]);
    let tls = running.tls_listener();
    let addr = tls.addr.to_string();

    let trusting = ClientProcess::spawn(&["--tls", &addr, "--ca", ca.ca_pem.to_str().unwrap()]);
    trusting.expect_printed(|line| line.starts_with("* welcome "));

    // The system's roots never signed the test's CA.
    let exit = ClientProcess::spawn(&["--tls", &addr]).wait_exit();
    assert!(!exit.status.success(), "{exit:?}");
    assert!(exit.stderr.contains("rejected"), "{:?}", exit.stderr);
    assert!(exit.printed.is_empty(), "{exit:?}");
}

/// Whoever once connected has the server's certificate: it is public. A pin must still make the
/// server prove it holds the certificate's private key, or anyone could impersonate it.
#[test]
fn a_pin_does_not_let_in_an_impostor_holding_only_the_public_certificate() {
    let dir = TempDir::new("tls-impostor");
    let ca = TestCa::new(&dir.0);
    let certificate = CertificateDer::from_pem_file(&ca.cert_pem).unwrap();
    let pin = chat_protocol::fingerprint::of_certificate(&certificate);
    let impostor = Impostor::start(certificate);

    let exit = ClientProcess::spawn(&["--tls", &impostor.addr.to_string(), "--fingerprint", &pin])
        .wait_exit();
    assert!(!exit.status.success(), "the impostor was trusted: {exit:?}");
    assert!(exit.printed.is_empty(), "{exit:?}");
    assert_eq!(exit.stderr.lines().count(), 1, "{:?}", exit.stderr);
}

#[test]
fn plaintext_and_garbage_on_the_tls_port_leave_the_server_unharmed() {
    let (running, tls) = self_signed(&[]);
    let baseline = running.open_fds();
    for garbage in [
        &b"hello, is this telnet?\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..],
        &[0u8; 300][..],
    ] {
        let mut stream = TcpStream::connect(tls.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = stream.write_all(garbage);
        // The server gives up on the handshake and closes; whatever it sends is not chat.
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(!String::from_utf8_lossy(&answer).contains("welcome"));
    }
    running.expect_fds_at_most(baseline);
    let mut secure = tls.connect();
    secure.read_until(|line| line.starts_with("* welcome "));
    let mut plain = running.connect();
    welcomed(&mut plain);
}

#[test]
fn a_handshake_that_never_starts_is_closed_after_the_timeout() {
    let (running, tls) = self_signed(&["--tls-handshake-timeout-ms", "300"]);
    let baseline = running.open_fds();
    let mut silent = TcpStream::connect(tls.addr).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    // Returns once the server closes; the read deadline fails the test if it never does.
    silent
        .read_to_end(&mut rest)
        .expect("the server should close a silent connection");
    running.expect_fds_at_most(baseline);
}

#[test]
fn connections_still_in_their_handshake_count_against_max_clients() {
    let (running, tls) = self_signed(&["--max-clients", "1"]);
    // Holds the only slot without ever starting its handshake.
    let _silent = TcpStream::connect(tls.addr).unwrap();
    let mut turned_away = running.connect();
    assert_eq!(
        turned_away.read_to_orderly_close(),
        ["* server full (1 clients)"]
    );
}

#[test]
fn max_per_ip_holds_on_the_tls_listener() {
    let (running, tls) = self_signed(&["--max-per-ip", "1"]);
    let other_host: IpAddr = "127.0.0.2".parse().unwrap();
    let mut first = Client::connect_from(running.addr, other_host);
    welcomed(&mut first);
    // The same host over TLS is refused, over TLS, with the notice.
    let mut second = tls.connect_from(other_host);
    assert_eq!(
        second.read_to_close_notify(),
        ["* error: too many connections from your address (max 1)"]
    );
}

#[test]
fn shutdown_says_goodbye_over_tls_and_ends_with_close_notify() {
    let (mut running, tls) = self_signed(&[]);
    let mut secure = tls.connect();
    secure.read_until(|line| line.starts_with("* welcome "));
    let status = running.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(secure.read_to_close_notify(), ["* server shutting down"]);
}

#[test]
fn openssl_s_client_can_chat_when_openssl_is_installed() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl is not on the PATH: skipping (apt-get install openssl)");
        return;
    }
    let (running, tls) = self_signed(&[]);
    let mut plain = running.connect();
    welcomed(&mut plain);
    let mut openssl = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &tls.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = openssl.stdin.take().unwrap();
    plain.read_until(|line| line.contains(" joined "));
    stdin.write_all(b"hi from openssl\n").unwrap();
    let heard = plain.read_until(|line| line.ends_with(" says: hi from openssl"));
    assert!(heard.starts_with("127.0.0.1:"), "{heard}");
    let _ = openssl.kill();
    let _ = openssl.wait();
}

#[test]
fn tls_flags_without_their_partner_are_one_sentence_at_start_up() {
    for args in [
        &["--tls-addr", "127.0.0.1:0"][..],
        &["--tls-self-signed"][..],
        &[
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.pem",
        ][..],
        &[
            "--tls-addr",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ][..],
    ] {
        let output = Server::V4Async.start_expecting_failure(args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.trim().is_empty(), "{args:?}: no sentence");
    }
}

/// A TLS server inside the test that presents a certificate it copied, with a key of its own.
struct Impostor {
    addr: SocketAddr,
}

impl Impostor {
    fn start(stolen: CertificateDer<'static>) -> Impostor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let own_key = rcgen::KeyPair::generate().unwrap();
        let own_key = PrivateKeyDer::try_from(own_key.serialize_der()).unwrap();
        let signing_key = provider.key_provider.load_private_key(own_key).unwrap();
        let certified = Arc::new(rustls::sign::CertifiedKey::new(vec![stolen], signing_key));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(AlwaysThis(certified)));
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = stream.set_read_timeout(Some(DEADLINE));
                let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let _ = tls.write_all(b"* welcome, trust me\r\n");
                let _ = tls.flush();
            }
        });
        Impostor { addr }
    }
}

#[derive(Debug)]
struct AlwaysThis(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for AlwaysThis {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

//! The web page and WebSocket (SPEC 9): v4 serves a page and a WebSocket beside its TCP
//! listener, and a WebSocket user is a member of the same room, under the same rules.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sock_chat_tests::web::{free_web_addr, http_get, WsClient};
use sock_chat_tests::{chat_line, Client, Running, Server, DEADLINE, PATIENT_STALL_MS};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// v4 with a web listener on port 0 and no rate limit, plus `extra` flags.
fn with_web(extra: &[&str]) -> (Running, SocketAddr) {
    let mut args = vec!["--web-addr", "127.0.0.1:0", "--rate", "0"];
    args.extend_from_slice(extra);
    let running = Server::V4Async.start(&args);
    let web = running.web_addr();
    (running, web)
}

/// A WebSocket user who has read its welcome, so it is known to be in the room.
fn ws_member(web: SocketAddr) -> WsClient {
    let mut client = WsClient::connect(web);
    client.read_until(|line| line.starts_with("* welcome "));
    client
}

fn welcomed(client: &mut Client) {
    client.read_until(|line| line.starts_with("* welcome "));
}

/// `GET /healthz` as one raw request that asks to be closed after the answer.
const HEALTH_CHECK: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n";

#[test]
fn logs_one_web_line_and_serves_the_page_health_and_404() {
    let (running, web) = with_web(&[]);
    let line = running.expect_log("web on ");
    assert!(line.ends_with(&format!("web on http://{web}/")), "{line:?}");
    assert!(!line.contains("listening on"));

    let page = http_get(web, "/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("<script src=\"/app.js\""));
    let script = http_get(web, "/app.js");
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(http_get(web, "/style.css").status, 200);
    let health = http_get(web, "/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(http_get(web, "/nothing-here").status, 404);
}

#[test]
fn every_answer_carries_the_content_security_policy_and_nosniff() {
    let (_running, web) = with_web(&[]);
    for path in ["/", "/app.js", "/style.css", "/healthz", "/nothing-here"] {
        let answer = http_get(web, path);
        let policy = answer
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("connect-src 'self'"), "{path}: {policy}");
        assert!(!policy.contains("unsafe-inline"), "{path}: {policy}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
}

#[test]
fn the_page_loads_nothing_from_elsewhere() {
    let (_running, web) = with_web(&[]);
    for path in ["/", "/app.js", "/style.css"] {
        let body = http_get(web, path).body;
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path}"
        );
        assert!(
            !body.contains("innerHTML"),
            "{path} must render text as text"
        );
    }
}

#[test]
fn a_websocket_user_and_a_telnet_user_chat_both_ways() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = WsClient::connect(web);
    let welcome = browser.read_line();
    // Named by its peer address until /nick, like a TCP user.
    assert_eq!(
        welcome,
        format!(
            "* welcome {}, 2 online - type /help for commands",
            browser.addr()
        )
    );
    telnet.expect_line(&format!("* {} joined (2 online)", browser.addr()));

    browser.send_text("from the browser");
    telnet.expect_line(&chat_line(browser.addr(), "from the browser"));
    telnet.send_line("from telnet");
    assert_eq!(browser.read_line(), chat_line(telnet.addr(), "from telnet"));

    browser.send_text("/nick webby");
    assert_eq!(
        browser.read_line(),
        format!("* {} is now webby", browser.addr())
    );
    browser.send_text("renamed");
    telnet.read_until(|line| line == "webby says: renamed");
    browser.send_text("/list");
    assert_eq!(
        browser.read_line(),
        format!("* online (2): {}, webby", telnet.addr())
    );
}

#[test]
fn a_message_holding_newlines_is_several_lines() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    browser.send_text("one\ntwo\r\nthree");
    for text in ["one", "two", "three"] {
        telnet.read_until(|line| line == chat_line(browser.addr(), text));
    }
}

#[test]
fn received_lines_are_sanitised_like_tcp_lines() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    browser.send_text("red\u{1b}[31m alert\u{7}\u{202e}   ");
    telnet.read_until(|line| line == chat_line(browser.addr(), "red[31m alert"));
}

#[test]
fn an_overlong_message_gets_the_line_error_and_keeps_the_connection() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    browser.send_text(&"x".repeat(1025));
    assert_eq!(
        browser.read_line(),
        "* error: line too long (max 1024 bytes)"
    );
    // A line of exactly the limit passes, and the connection goes on.
    let exactly = "y".repeat(1024);
    browser.send_text(&exactly);
    telnet.read_until(|line| line == chat_line(browser.addr(), &exactly));
}

#[test]
fn a_binary_message_closes_with_1003() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    browser.send(Message::binary(b"hello".to_vec()));
    let closed = browser.read_to_close();
    assert_eq!(closed.code, CloseCode::Unsupported);
    assert!(closed.lines.is_empty(), "{closed:?}");
    telnet.read_until(|line| line.contains(" left (1 online)"));
}

#[test]
fn a_message_over_64_kib_closes_with_1009() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    // 64 KiB exactly is a (far too long) line, answered with the line error.
    browser.send_text(&"a".repeat(64 * 1024));
    assert_eq!(
        browser.read_line(),
        "* error: line too long (max 1024 bytes)"
    );
    browser.send_text(&"b".repeat(64 * 1024 + 1));
    let closed = browser.read_to_close();
    assert_eq!(closed.code, CloseCode::Size);
    telnet.read_until(|line| line.contains(" left (1 online)"));
}

#[test]
fn a_foreign_origin_is_refused_with_403_and_a_log_line() {
    let (running, web) = with_web(&[]);
    let refused = WsClient::try_connect(web, Some("http://evil.example")).unwrap_err();
    match refused {
        tungstenite::Error::Http(response) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other}"),
    }
    running.expect_log("http://evil.example");
    // The same host on another port is another origin too.
    let other_port = format!("http://127.0.0.1:{}", web.port() + 1);
    assert!(WsClient::try_connect(web, Some(&other_port)).is_err());
}

#[test]
fn no_origin_and_the_pages_own_origin_are_accepted() {
    let (_running, web) = with_web(&[]);
    let mut program = WsClient::try_connect(web, None).expect("no Origin: a program");
    program.read_until(|line| line.starts_with("* welcome "));
    let own = format!("http://{web}");
    let mut page = WsClient::try_connect(web, Some(&own)).expect("the page's own origin");
    page.read_until(|line| line.starts_with("* welcome "));
}

#[test]
fn an_origin_given_with_web_origin_is_accepted() {
    let (_running, web) = with_web(&[
        "--web-origin",
        "https://chat.example.org/",
        "--web-origin",
        "http://b.test",
    ]);
    for origin in ["https://chat.example.org", "http://b.test"] {
        let mut page = WsClient::try_connect(web, Some(origin)).expect(origin);
        page.read_until(|line| line.starts_with("* welcome "));
    }
    assert!(WsClient::try_connect(web, Some("https://other.example.org")).is_err());
}

/// How long a flood may take to evict a WebSocket that stopped reading: it takes under a second
/// on a quiet machine; the server drops a WebSocket silent for 60 s whatever happens, so this
/// tells an eviction from that.
const EVICTED_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn a_websocket_that_never_reads_is_evicted_while_others_keep_chatting() {
    // Quietly: at `info` the server would log every line of the flood.
    let web = free_web_addr();
    let running = Server::V4Async.start_unthrottled_quietly(&[
        "--web-addr",
        &web.to_string(),
        "--stall-ms",
        PATIENT_STALL_MS,
    ]);
    let mut listener = running.connect();
    welcomed(&mut listener);
    let mut talker = running.connect();
    welcomed(&mut talker);
    let sleeper = ws_member(web);
    let sleeper_left = format!("* {} left (2 online)", sleeper.addr());

    // The talker floods; the sleeper never reads another byte.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = talker.stream().try_clone().unwrap();
    let flooding = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let line = format!("{}\n", "f".repeat(1000));
            while !stop.load(Ordering::Relaxed) {
                if flood.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        })
    };
    let flooding_since = Instant::now();
    listener.read_until(|line| line == sleeper_left);
    // After --stall-ms of a full queue, once the kernel's buffers are full too: well within
    // a minute, after which the server would drop a silent WebSocket anyway.
    let took = flooding_since.elapsed();
    assert!(took < EVICTED_WITHIN, "evicted only after {took:?}");
    // The room goes on without it.
    let flood_line = chat_line(talker.addr(), &"f".repeat(1000));
    for _ in 0..100 {
        listener.read_until(|line| line == flood_line);
    }
    stop.store(true, Ordering::Relaxed);
    flooding.join().unwrap();
    talker.send_line("still here");
    listener.read_until(|line| line == chat_line(talker.addr(), "still here"));
    drop(sleeper);
}

#[test]
fn shutdown_says_goodbye_then_sends_a_close_frame() {
    let (mut running, web) = with_web(&[]);
    let mut browser = ws_member(web);
    let status = running.terminate();
    assert!(status.success(), "{status:?}");
    let closed = browser.read_to_close();
    assert_eq!(closed.lines, ["* server shutting down"]);
    assert_eq!(closed.code, CloseCode::Away);
}

#[test]
fn max_per_ip_holds_on_the_web_listener() {
    let (running, web) = with_web(&["--max-per-ip", "1"]);
    let other_host: IpAddr = "127.0.0.2".parse().unwrap();
    let mut first = Client::connect_from(running.addr, other_host);
    welcomed(&mut first);
    let mut second = WsClient::connect_from(web, other_host);
    let closed = second.read_to_close();
    assert_eq!(
        closed.lines,
        ["* error: too many connections from your address (max 1)"]
    );
    assert_eq!(closed.code, CloseCode::Again);
    // This machine's own address is exempt.
    ws_member(web);
    ws_member(web);
}

#[test]
fn one_address_holds_at_most_max_per_ip_page_connections() {
    let (running, web) = with_web(&["--max-per-ip", "10"]);
    let crowd: IpAddr = "127.0.0.2".parse().unwrap();
    // Open and silent, as a browser keeps its page connections between requests.
    let _held: Vec<Client> = (0..10).map(|_| Client::connect_from(web, crowd)).collect();
    let mut one_more = Client::connect_from(web, crowd);
    one_more.send(HEALTH_CHECK);
    assert_eq!(
        one_more.read_to_close(),
        Vec::<String>::new(),
        "closed without an answer, like a connection beyond the listener's cap"
    );
    running.expect_log("10 web connections from 127.0.0.2 open already: closed");
    // Another address still loads the page.
    let mut elsewhere = Client::connect_from(web, "127.0.0.3".parse().unwrap());
    elsewhere.send(HEALTH_CHECK);
    assert_eq!(elsewhere.read_line(), "HTTP/1.1 200 OK");
}

#[test]
fn a_browser_allowed_one_connection_loads_the_page_and_joins() {
    let (_running, web) = with_web(&["--max-per-ip", "1"]);
    let browser: IpAddr = "127.0.0.2".parse().unwrap();
    // What a browser keeps open after loading the page: up to six connections to one host.
    let _page: Vec<Client> = (0..6).map(|_| Client::connect_from(web, browser)).collect();
    let mut chat = WsClient::connect_from(web, browser);
    chat.read_until(|line| line.starts_with("* welcome "));
}

#[test]
fn websocket_users_count_against_max_clients() {
    let (running, web) = with_web(&["--max-clients", "1"]);
    let _first = ws_member(web);
    let mut second = WsClient::connect(web);
    let closed = second.read_to_close();
    assert_eq!(closed.lines, ["* server full (1 clients)"]);
    // And a TCP user finds the server just as full.
    let mut telnet = running.connect();
    assert_eq!(
        telnet.read_to_orderly_close(),
        ["* server full (1 clients)"]
    );
}

#[test]
fn a_closed_websocket_leaves_the_room() {
    let (running, web) = with_web(&[]);
    let mut telnet = running.connect();
    welcomed(&mut telnet);
    let mut browser = ws_member(web);
    let name = browser.addr();
    browser.send_text("/quit bye");
    let closed = browser.read_to_close();
    assert_eq!(closed.code, CloseCode::Normal);
    telnet.read_until(|line| line == format!("* {name} left (1 online): bye"));
    // And the descriptor is gone: connect and leave many times.
    let before = running.open_fds();
    for _ in 0..50 {
        ws_member(web).close();
    }
    running.expect_fds_at_most(before);
}

/// SPEC 9's keep-alive, in real time: this test takes a minute.
#[test]
fn an_idle_websocket_is_pinged_after_30_s_and_dropped_60_s_after_its_last_frame() {
    const PING_AFTER: Duration = Duration::from_secs(30);
    const DROP_AFTER: Duration = Duration::from_secs(60);
    /// How late a timer may fire on a busy machine before this test calls it missing.
    const SLACK: Duration = Duration::from_secs(15);
    let (running, web) = with_web(&[]);
    let start = Instant::now();
    // Never reads, so never answers the ping: a laptop closed without a goodbye.
    let silent = WsClient::connect(web);
    let silent_name = silent.addr();
    // Answers pings as a browser does, and says nothing else.
    let mut listening = ws_member(web);

    listening.expect_ping(PING_AFTER + SLACK);
    let pinged_after = start.elapsed();
    assert!(pinged_after >= PING_AFTER, "pinged after {pinged_after:?}");

    listening
        .tcp()
        .set_read_timeout(Some(DROP_AFTER - PING_AFTER + SLACK))
        .unwrap();
    listening.read_until(|line| line.starts_with(&format!("* {silent_name} left")));
    let dropped_after = start.elapsed();
    assert!(
        dropped_after >= DROP_AFTER,
        "dropped after {dropped_after:?}"
    );
    running.expect_log(&format!(
        "{silent_name}: WebSocket silent for 60 s, even to a ping: dropped"
    ));

    // The one that answered is still in the room, past its own minute.
    listening.tcp().set_read_timeout(Some(DEADLINE)).unwrap();
    listening.send_text("/list");
    let list = listening.read_until(|line| line.starts_with("* online"));
    assert!(list.starts_with("* online (1)"), "{list}");
    // Held open to here: the server ended it, not us.
    drop(silent);
}

#[test]
fn with_a_certificate_the_web_listener_serves_https_with_it() {
    let running = Server::V4Async.start(&[
        "--tls-addr",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--web-addr",
        "127.0.0.1:0",
    ]);
    let tls = running.tls_listener();
    let line = running.expect_log("web on ");
    let web: SocketAddr = line
        .split("web on https://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix('/'))
        .unwrap_or_else(|| panic!("no https:// in {line:?}"))
        .parse()
        .unwrap();
    // The same certificate as the TLS listener: pinned by the `tls on` line's fingerprint.
    let pin = chat_protocol::fingerprint::parse(&tls.fingerprint).unwrap();
    let config = chat_protocol::pin::PinnedCertificate::new(pin).client_config();
    let name = rustls::pki_types::ServerName::IpAddress(web.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(web).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
}

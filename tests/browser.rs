//! The chat page in a real browser (SPEC 9): headless Chromium, driven through chromedriver
//! with WebDriver (fantoccini), chats with another page and a telnet user.
//!
//! These tests need Debian's `chromium` and `chromium-driver`, so they are ignored unless asked
//! for (`cargo test -- --include-ignored`, as `.ci/run` does after installing them). Each test
//! starts its own chromedriver on a free port, and each browser gets a fresh profile in a
//! temporary directory. Screenshots of the page are saved under `target/tmp/browser/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use sock_chat_tests::tls::TempDir;
use sock_chat_tests::web::free_web_addr;
use sock_chat_tests::{chat_line, Running, Server, DEADLINE};

/// Chromium as root in a container: no sandbox, no GPU, nothing fetched from the network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// A laptop-sized window, and a phone-sized one.
const LAPTOP: (u32, u32) = (1100, 700);
const PHONE: (u32, u32) = (390, 800);

/// How often a wait looks again at the page.
const POLL: Duration = Duration::from_millis(50);

/// A chromedriver process, killed when dropped.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = free_web_addr().port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/chromedriver (apt-get install chromium-driver)");
        // Ready once it accepts connections.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < DEADLINE, "chromedriver did not listen");
            std::thread::sleep(POLL);
        }
        Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A new headless Chromium with a profile of its own in `profile`.
    async fn browser(&self, profile: &TempDir, size: (u32, u32)) -> Browser {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|&s| s.to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.0.display()));
        args.push(format!("--window-size={},{}", size.0, size.1));
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": "/usr/bin/chromium", "args": args }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a WebDriver session with Chromium")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// v4 with a web listener, no rate limit.
fn server() -> (Running, SocketAddr) {
    let running = Server::V4Async.start(&["--web-addr", "127.0.0.1:0", "--rate", "0"]);
    let web = running.web_addr();
    (running, web)
}

/// The chat page, open and joined; returns the name the room gave it.
async fn open_page(browser: &Browser, web: SocketAddr) -> String {
    browser.goto(&format!("http://{web}/")).await.unwrap();
    let welcome = wait_for_line(browser, |line| line.starts_with("* welcome ")).await;
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_owned();
    wait_until(browser, "the status says connected", |page| {
        page["status"].as_str().unwrap().contains("connected as")
    })
    .await;
    name
}

/// What the page shows now: its lines, who is online, its status, and where the focus is.
async fn page_state(browser: &Browser) -> Value {
    browser
        .execute(
            "const texts = (sel) => Array.from(document.querySelectorAll(sel), e => e.textContent);
             return { lines: texts('#lines li'), online: texts('#online li'),
                      status: document.getElementById('status').textContent,
                      focus: document.activeElement && document.activeElement.id,
                      images: document.querySelectorAll('#lines img, #lines *:not(li)').length };",
            vec![],
        )
        .await
        .expect("read the page")
}

/// Looks at the page until `ready` holds, or fails at the deadline saying what it waited for.
async fn wait_until(browser: &Browser, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let page = page_state(browser).await;
        if ready(&page) {
            return page;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "waited {DEADLINE:?} for {what}; the page shows {page:#}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for a line on the page that satisfies `wanted`, and returns it.
async fn wait_for_line(browser: &Browser, wanted: impl Fn(&str) -> bool) -> String {
    let page = wait_until(browser, "a line", |page| lines(page).any(&wanted)).await;
    let line = lines(&page).find(|line| wanted(line)).unwrap().to_owned();
    line
}

fn lines(page: &Value) -> impl Iterator<Item = &str> {
    page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line.as_str().unwrap())
}

fn online(page: &Value) -> Vec<&str> {
    page["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect()
}

/// Types `text` into the message box and presses Enter.
async fn say(browser: &Browser, text: &str) {
    let input = browser.find(Locator::Id("input")).await.unwrap();
    input.send_keys(&format!("{text}\u{E007}")).await.unwrap();
}

/// Sets the page's nickname with the nickname box.
async fn set_nick(browser: &Browser, name: &str) {
    let nick = browser.find(Locator::Id("nick-input")).await.unwrap();
    nick.send_keys(&format!("{name}\u{E007}")).await.unwrap();
}

/// Saves a screenshot under `target/tmp/browser/`, a test artefact to look at.
async fn screenshot(browser: &Browser, name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, browser.screenshot().await.unwrap()).unwrap();
    path
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
#[ignore = "needs chromium-driver: apt-get install chromium chromium-driver"]
fn two_pages_and_a_telnet_user_chat_with_each_other() {
    let (running, web) = server();
    let driver = Chromedriver::start();
    let (profile_a, profile_b) = (TempDir::new("browser-a"), TempDir::new("browser-b"));
    runtime().block_on(async {
        let mut telnet = running.connect();
        telnet.read_until(|line| line.starts_with("* welcome "));
        let ann = driver.browser(&profile_a, LAPTOP).await;
        let bob = driver.browser(&profile_b, LAPTOP).await;
        let ann_name = open_page(&ann, web).await;
        let bob_name = open_page(&bob, web).await;

        say(&ann, "hello from a page").await;
        let said = chat_line(ann_name.parse().unwrap(), "hello from a page");
        wait_for_line(&bob, |line| line == said).await;
        telnet.read_until(|line| line == said);

        telnet.send_line("hello from telnet");
        let said = chat_line(telnet.addr(), "hello from telnet");
        wait_for_line(&ann, |line| line == said).await;
        wait_for_line(&bob, |line| line == said).await;

        say(&bob, "and from the other page").await;
        let said = chat_line(bob_name.parse().unwrap(), "and from the other page");
        wait_for_line(&ann, |line| line == said).await;
        telnet.read_until(|line| line == said);

        // Typing stays in the message box, and the sender sees its own line.
        let page = page_state(&bob).await;
        assert_eq!(page["focus"], "input");
        assert!(lines(&page).any(|line| line == said), "{page:#}");

        // For the picture: nicknames, a private line and an error, as a class sees them.
        set_nick(&ann, "ann").await;
        set_nick(&bob, "bob").await;
        telnet.send_line("/nick tess");
        wait_until(&ann, "everyone renamed", |page| {
            online(page) == ["tess", "ann", "bob"]
        })
        .await;
        telnet.send_line("/pm ann psst, only you see this");
        wait_for_line(&ann, |line| {
            line == "tess (private): psst, only you see this"
        })
        .await;
        say(&ann, "/nick server").await;
        wait_for_line(&ann, |line| line.starts_with("* error: ")).await;
        say(&bob, "it works from a browser too").await;
        wait_for_line(&ann, |line| line == "bob says: it works from a browser too").await;
        screenshot(&ann, "chat-laptop").await;
        ann.close().await.unwrap();
        bob.close().await.unwrap();
    });
}

#[test]
#[ignore = "needs chromium-driver: apt-get install chromium chromium-driver"]
fn markup_sent_from_telnet_shows_as_text_and_creates_no_element() {
    let (running, web) = server();
    let driver = Chromedriver::start();
    let profile = TempDir::new("browser-markup");
    runtime().block_on(async {
        let mut telnet = running.connect();
        telnet.read_until(|line| line.starts_with("* welcome "));
        let page = driver.browser(&profile, LAPTOP).await;
        open_page(&page, web).await;
        let markup = "<img src=x onerror=alert(1)>";
        telnet.send_line(markup);
        let said = chat_line(telnet.addr(), markup);
        wait_for_line(&page, |line| line == said).await;
        let state = page_state(&page).await;
        assert_eq!(state["images"], 0, "{state:#}");
        assert!(
            page.get_alert_text().await.is_err(),
            "an alert opened: the line ran as HTML"
        );
        page.close().await.unwrap();
    });
}

#[test]
#[ignore = "needs chromium-driver: apt-get install chromium chromium-driver"]
fn the_online_list_follows_joins_renames_and_leaves() {
    let (running, web) = server();
    let driver = Chromedriver::start();
    let profile = TempDir::new("browser-online");
    runtime().block_on(async {
        let mut telnet = running.connect();
        telnet.read_until(|line| line.starts_with("* welcome "));
        let telnet_name = telnet.addr().to_string();
        let page = driver.browser(&profile, PHONE).await;
        let me = open_page(&page, web).await;
        wait_until(&page, "both in the online list", |state| {
            online(state) == [telnet_name.as_str(), me.as_str()]
        })
        .await;

        telnet.send_line("/nick tess");
        wait_until(&page, "the rename in the online list", |state| {
            online(state) == ["tess", me.as_str()]
        })
        .await;

        // The nickname box renames the page's user, and the focus goes back to the message box.
        set_nick(&page, "ann").await;
        telnet.read_until(|line| line == format!("* {me} is now ann"));
        let state = wait_until(&page, "our own rename in the list", |state| {
            online(state) == ["tess", "ann"]
        })
        .await;
        assert_eq!(state["focus"], "input");
        assert!(
            state["status"].as_str().unwrap().ends_with("as ann"),
            "{state:#}"
        );

        let mut late = running.connect();
        late.read_until(|line| line.starts_with("* welcome "));
        let late_name = late.addr().to_string();
        wait_until(&page, "the newcomer in the list", |state| {
            online(state) == ["tess", "ann", late_name.as_str()]
        })
        .await;
        drop(late);
        wait_until(&page, "the newcomer gone from the list", |state| {
            online(state) == ["tess", "ann"]
        })
        .await;
        telnet.send_line("hi ann, this is how the page looks on a phone");
        wait_for_line(&page, |line| line.starts_with("tess says: hi ann")).await;
        screenshot(&page, "chat-phone").await;
        page.close().await.unwrap();
    });
}

#[test]
#[ignore = "needs chromium-driver: apt-get install chromium chromium-driver"]
fn the_page_says_when_the_connection_drops_and_reconnects() {
    let web = free_web_addr();
    let args = ["--web-addr", &web.to_string(), "--rate", "0"];
    let mut running = Server::V4Async.start(&args);
    let driver = Chromedriver::start();
    let profile = TempDir::new("browser-reconnect");
    runtime().block_on(async {
        let page = driver.browser(&profile, LAPTOP).await;
        open_page(&page, web).await;
        running.terminate();
        wait_for_line(&page, |line| line == "* server shutting down").await;
        wait_until(&page, "the status to say it reconnects", |state| {
            state["status"].as_str().unwrap().contains("reconnecting")
        })
        .await;
        // The same address again: the page comes back by itself.
        let _again: Running = Server::V4Async.start(&args);
        wait_until(&page, "a second welcome", |state| {
            lines(state)
                .filter(|line| line.starts_with("* welcome "))
                .count()
                == 2
        })
        .await;
        page.close().await.unwrap();
    });
}

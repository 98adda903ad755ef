//! # v4-async, the binary: flags in, [`v4_async::run`] out
//!
//! ```text
//! cargo run -p v4-async          # listens on 127.0.0.1:8080
//! telnet 127.0.0.1 8080          # in several terminals; or: cargo run -p client
//! cargo run -p v4-async -- --tls-addr 127.0.0.1:8443 --tls-self-signed
//! cargo run -p client -- --tls 127.0.0.1:8443 --fingerprint sha256:...   # from the `tls on` line
//! cargo run -p v4-async -- --web-addr 127.0.0.1:8090   # and a chat page at http://127.0.0.1:8090/
//! ```
//!
//! This file only parses the command line, binds the listeners and hands them to the library;
//! the lesson starts in `lib.rs` (`cargo doc -p v4-async --document-private-items --open`), which maps the rest.

use std::net::SocketAddr;

use chat_protocol::cli::{addr_arg, V4_ADDR_DEFAULT};
use chat_protocol::startup;
use clap::Parser;
use v4_async::flags::RoomFlags;
use v4_async::shutdown::ShutdownSignals;

/// `v4-async`: the tokio chat room.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "sock-chat v4: a tokio chat room with per-client writer tasks"
)]
struct Cli {
    /// Address to listen on: HOST:PORT, [IPv6]:PORT, :PORT or PORT (port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT", default_value = V4_ADDR_DEFAULT, value_parser = addr_arg)]
    addr: SocketAddr,

    #[command(flatten)]
    room: RoomFlags,
}

fn main() {
    v4_async::start(serve(Cli::parse()));
}

/// Binds, then serves the room until Ctrl-C, SIGTERM or SIGHUP.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    // Before the `listening on` line: a signal sent as soon as it shows must find us listening,
    // not the default action, which ends the process without a goodbye.
    let signals = ShutdownSignals::listen();
    let bound = cli.room.bind(cli.addr)?;
    startup::log_listening("v4-async", &bound.plain)?;
    let shutdown = async {
        let signal = signals.first().await;
        tracing::info!("{signal}: shutting down");
    };
    v4_async::run(bound.into_listeners()?, &cli.room.config(None), shutdown).await;
    Ok(())
}

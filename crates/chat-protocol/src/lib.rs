//! What every sock-chat binary agrees on, written once.
//!
//! The four servers teach four concurrency models; this crate holds only the parts that are
//! *not* the lesson, so that every version speaks exactly the same protocol:
//!
//! - [`addr`]: the `--addr` forms (`127.0.0.1:8080`, `[::1]:8080`, `localhost:8080`, `:8080`,
//!   `8080`);
//! - [`fingerprint`]: how a TLS certificate is named for pinning (`sha256:...`);
//! - [`framing`]: bytes in, lines out, with a hard cap on the memory one line may take;
//! - `pin` (feature `tls`): trusting one certificate by its fingerprint, handshake still verified;
//! - [`sanitize`]: what a line may contain before anyone else sees it;
//! - [`message`]: the exact text of every chat line and notice;
//! - [`command`]: v4's `/commands` and nickname rules;
//! - [`cli`]: the command-line limits, their defaults and their ranges;
//! - [`limits`]: `--max-per-ip`, connections counted per address;
//! - [`startup`]: logging, the descriptor limit, the listening socket, the `listening on` line.
//!
//! Everything except [`startup`] is pure and unit-tested next to its code.

pub mod addr;
pub mod cli;
pub mod command;
pub mod fingerprint;
pub mod framing;
pub mod limits;
pub mod message;
#[cfg(feature = "tls")]
pub mod pin;
pub mod sanitize;
pub mod startup;

pub use addr::parse_addr;
pub use framing::{Frame, LineFramer};
pub use sanitize::sanitize;

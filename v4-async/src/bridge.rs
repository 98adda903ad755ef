//! The seam for a room that reaches past this process: v5-cluster's way in, empty in v4.
//!
//! A [`Bridge`] hears what the room's own members do (they joined, left, renamed, said
//! something) in the order the room did it, and answers what only it can know: names taken
//! elsewhere, who is online elsewhere, how to reach someone elsewhere. What arrives from
//! elsewhere it hands back to the room with [`Room::relay_from_elsewhere`],
//! [`Room::announce`], [`Room::send_private`] and [`Room::remember`].
//!
//! v4's own binary gives no bridge ([`crate::Config::bridge`] is `None`): then the room asks
//! nothing, and every command is answered at once from the room's own state, as before.
//!
//! Two rules for an implementation. The event calls ([`Bridge::joined`], [`Bridge::said`]...)
//! are made under the room lock, so that the bridge sees them in the room's order: they must
//! not wait or block (queue and return). The questions ([`Bridge::claim`], [`Bridge::list`],
//! [`Bridge::send_private`]) are awaited by the asking member's reader, which reads nothing
//! meanwhile: each must end within a bounded time.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::outbox::Chunk;
use crate::room::Room;

/// An answer the bridge gives later; `Send` so that a member's task can await it anywhere.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a room shares with the rest of a cluster; see the module's doc.
pub trait Bridge: Send + Sync + fmt::Debug {
    /// The room is open: from now on the bridge may hand it what arrives from elsewhere.
    fn attach(&self, room: &Arc<Room>);

    /// The name a member connected from `addr` goes by until `/nick`: unique everywhere the
    /// bridge reaches.
    fn default_name(&self, addr: SocketAddr) -> String;

    /// How many are online elsewhere, counted into every `N online`.
    fn elsewhere(&self) -> usize;

    /// A notice for a newcomer after its welcome and history, if there is one to give (that
    /// the link is down, say).
    fn greeting(&self) -> Option<String>;

    /// A member called `name` joined; `notice` is what the others here were told, if anything.
    fn joined(&self, name: &str, notice: Option<&Chunk>);

    /// A member called `name` left; `notice` as for [`Bridge::joined`].
    fn left(&self, name: &str, notice: Option<&Chunk>);

    /// A member renamed itself from `old` to `new` (which it had [`Bridge::claim`]ed); everyone
    /// here was told `notice`.
    fn renamed(&self, old: &str, new: &str, notice: &Chunk);

    /// A member's chat lines (each ending in CRLF), as relayed here.
    fn said(&self, lines: &Chunk);

    /// Claims the nickname `name` everywhere, or says why not (the notice for the asker).
    /// A name this room's members hold already counts as free: the room checks those itself.
    fn claim<'a>(&'a self, name: &'a str) -> Answer<'a, Result<(), String>>;

    /// Gives back a claim that was granted but not used (the member left, or the room refused).
    fn release(&self, name: &str);

    /// Everyone online everywhere, or `None` if the bridge cannot tell now (then the room's own
    /// list is the answer).
    fn list(&self) -> Answer<'_, Option<Vec<String>>>;

    /// Sends the private `line` to the member called `to` elsewhere, or says why not (the
    /// notice for the sender).
    fn send_private<'a>(&'a self, to: &'a str, line: &'a str) -> Answer<'a, Result<(), String>>;
}

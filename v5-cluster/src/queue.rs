//! A queue bounded in bytes, between a side that must never wait and a side that may.
//!
//! Two of them stand between the room and Redis. Toward Redis, the room's event calls push
//! under the room lock and must not wait: when Redis is slow the queue fills, and what does
//! not fit is dropped ([`Bounded::push`] says so). From Redis, the subscription is read without
//! ever stalling, because Redis cuts a subscriber whose output buffer grows past its
//! `client-output-buffer-limit pubsub` (32 MiB by default), and then everything is lost: what
//! the room cannot take yet waits here, and past the bound the queue *overflows*: it takes
//! nothing more until its reader has seen the overflow and made up for it (from the stream).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// What one entry weighs, for the bound.
pub trait Weight {
    fn weight(&self) -> usize;
}

/// A FIFO of at most `max_bytes` (plus one entry), which never makes a pusher wait.
#[derive(Debug)]
pub struct Bounded<T> {
    state: Mutex<State<T>>,
    max_bytes: usize,
    /// Wakes the reader: something was pushed, or the queue overflowed.
    ready: Notify,
}

#[derive(Debug)]
struct State<T> {
    entries: VecDeque<T>,
    bytes: usize,
    /// An entry was refused since the reader last looked: nothing more is taken until it has.
    overflowed: bool,
}

/// What the reader takes at once.
#[derive(Debug)]
pub struct Taken<T> {
    pub entries: VecDeque<T>,
    /// Entries were refused after these: what they said must be made up for another way.
    pub overflowed: bool,
}

impl<T: Weight> Bounded<T> {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                bytes: 0,
                overflowed: false,
            }),
            max_bytes,
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `entry`, or refuses it (false) if the queue is full or has overflowed since the
    /// reader last looked: after a refusal nothing is queued out of order.
    pub fn push(&self, entry: T) -> bool {
        let mut state = self.lock();
        if state.overflowed || state.bytes >= self.max_bytes {
            let first = !state.overflowed;
            state.overflowed = true;
            drop(state);
            if first {
                self.ready.notify_one();
            }
            return false;
        }
        state.bytes += entry.weight();
        state.entries.push_back(entry);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Queues `entry` last, whatever the bound: for the few markers the queue's owner adds.
    pub fn push_marker(&self, entry: T) {
        let mut state = self.lock();
        state.bytes += entry.weight();
        state.entries.push_back(entry);
        drop(state);
        self.ready.notify_one();
    }

    /// Drops everything queued and any overflow: what was waiting to be published when the
    /// link dropped.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.entries.clear();
        state.bytes = 0;
        state.overflowed = false;
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Waits until something is queued (or the queue overflowed), then takes it all.
    pub async fn take(&self) -> Taken<T> {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.lock();
                if !state.entries.is_empty() || state.overflowed {
                    state.bytes = 0;
                    return Taken {
                        entries: std::mem::take(&mut state.entries),
                        overflowed: std::mem::take(&mut state.overflowed),
                    };
                }
            }
            // Notify keeps one permit: a push between the look and this wait is not missed.
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weight for &'static str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_until_the_reader_has_seen_the_overflow() {
        let queue = Bounded::new(4);
        assert!(queue.push("abcd"));
        assert!(!queue.push("e"), "full");
        let taken = queue.take().await;
        assert_eq!(Vec::from(taken.entries), ["abcd"]);
        assert!(taken.overflowed);
        assert!(queue.push("f"), "room again once the overflow was seen");
        let taken = queue.take().await;
        assert_eq!(Vec::from(taken.entries), ["f"]);
        assert!(!taken.overflowed);
    }

    #[tokio::test]
    async fn after_a_refusal_nothing_is_queued_out_of_order() {
        let queue = Bounded::new(2);
        assert!(queue.push("ab"));
        assert!(!queue.push("c"));
        // "c" was refused: "d" must not overtake it.
        assert!(!queue.push("d"));
        assert_eq!(queue.take().await.entries.len(), 1);
    }
}

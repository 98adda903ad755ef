//! A token bucket: how v4 keeps one flooder from drowning the room.
//!
//! Each client has a bucket holding up to `burst` tokens, refilled at `rate` tokens a second.
//! Every line takes one; a line that finds the bucket empty is dropped. A person typing never
//! notices (a burst of twice the rate absorbs a paste of a few lines), while a script sending
//! thousands of lines a second gets `rate` of them through.

use std::time::Instant;

/// One client's allowance of lines.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// Most tokens the bucket holds: how many lines may come at once after a pause.
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` lines a second, bursts of `burst` lines.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            refilled_at: now,
        }
    }

    /// Takes a token if there is one: true if the line may pass.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn passed(bucket: &mut TokenBucket, lines: usize, at: Instant) -> usize {
        (0..lines).filter(|_| bucket.try_take(at)).count()
    }

    #[test]
    fn a_burst_is_cut_to_the_bucket() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0, start);
        assert_eq!(passed(&mut bucket, 200, start), 20);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0, start);
        passed(&mut bucket, 20, start);
        assert_eq!(
            passed(&mut bucket, 100, start + Duration::from_millis(500)),
            5
        );
        assert_eq!(
            passed(&mut bucket, 100, start + Duration::from_secs(60)),
            20,
            "capped at burst"
        );
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_dropped() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0, start);
        for i in 0..1000 {
            assert!(bucket.try_take(start + Duration::from_millis(100 * i)));
        }
    }
}

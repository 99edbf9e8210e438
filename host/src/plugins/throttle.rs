//! `--replay-rate`: how fast a rebuild may read the log, in events per
//! second per plugin, so that rebuilding one big projection does not starve
//! the serving plugins and the appends of the disk's reads. Only rebuilds
//! are limited: a serving generation catching up is what readers wait for.
//!
//! A token bucket holding at most a tenth of a second's worth: each step of
//! the rebuild reads at most what the bucket holds, and when it is empty the
//! runner sleeps until it holds that tenth again (batches stay large enough
//! to keep a rebuild's per-batch cost small).

use std::time::{Duration, Instant};

/// The budget of one plugin's rebuild.
#[derive(Debug)]
pub(super) struct Throttle {
    per_sec: f64,
    capacity: f64,
    tokens: f64,
    refilled: Instant,
}

impl Throttle {
    /// A bucket for `per_sec` events a second (at least 1), full.
    pub fn new(per_sec: u64) -> Self {
        let per_sec = per_sec.max(1) as f64;
        let capacity = (per_sec / 10.0).max(1.0);
        Self {
            per_sec,
            capacity,
            tokens: capacity,
            refilled: Instant::now(),
        }
    }

    /// How many events the rebuild may read now: the bucket's contents once
    /// it is full, else 0 (wait for [`Throttle::ready_at`]).
    pub fn allowance(&mut self) -> usize {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.refilled = now;
        if self.tokens >= self.capacity {
            self.tokens as usize
        } else {
            0
        }
    }

    /// Charges `events` read.
    pub fn spend(&mut self, events: u64) {
        self.tokens -= events as f64;
    }

    /// When the bucket is full again.
    pub fn ready_at(&self) -> Instant {
        let missing = (self.capacity - self.tokens).max(0.0);
        self.refilled + Duration::from_secs_f64(missing / self.per_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_tenth_of_a_second_then_waits_for_it() {
        let mut throttle = Throttle::new(1000);
        assert_eq!(throttle.allowance(), 100);
        throttle.spend(100);
        assert_eq!(throttle.allowance(), 0);
        let wait = throttle
            .ready_at()
            .saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::from_millis(50) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        std::thread::sleep(wait);
        assert_eq!(throttle.allowance(), 100);
    }
}

//! The `local` policy's counters: per node, in memory, in 64 independently locked shards (a request
//! takes one shard's lock for a few hash operations; requests for different clients rarely meet).
//! Own code rather than a concurrent map crate because the whole decision (roll the windows, read,
//! compare, count) must happen under one lock to stay exact. Stale entries are swept as shards are
//! used, so memory follows the number of clients active in the longest window.

use std::collections::HashMap;
use std::sync::Mutex;

use super::windows::{Decision, WindowNow, decide};

const SHARDS: usize = 64;
/// How often (seconds) a shard drops entries whose windows have all passed.
const SWEEP_EVERY: i64 = 30;

type Hasher = foldhash::fast::FixedState;

/// One window's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: i64,
    size: i64,
    left_until: i64,
    cur: u64,
    prev: u64,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u128, Box<[Slot]>, Hasher>,
    last_sweep: i64,
}

/// Node-local counters keyed by a 128-bit hash of (namespace, identifier).
#[derive(Debug)]
pub struct LocalCounters {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for LocalCounters {
    fn default() -> Self {
        LocalCounters { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect() }
    }
}

impl LocalCounters {
    /// Decides and counts one request against `windows`. With `penalty`, rejected requests count too.
    pub fn hit(&self, key: u128, windows: &[WindowNow], now: i64, penalty: bool) -> Decision {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now - shard.last_sweep >= SWEEP_EVERY {
            shard.last_sweep = now;
            shard.map.retain(|_, slots| slots.iter().any(|s| s.left_until + s.size > now));
        }
        let slots = shard.map.entry(key).or_insert_with(|| vec![Slot::default(); windows.len()].into_boxed_slice());
        if slots.len() != windows.len() {
            // The instance's windows changed: start over.
            *slots = vec![Slot::default(); windows.len()].into_boxed_slice();
        }
        for (slot, w) in slots.iter_mut().zip(windows) {
            if slot.start != w.start || slot.size != w.size {
                slot.prev = if slot.size == w.size && slot.start + w.size == w.start { slot.cur } else { 0 };
                slot.cur = 0;
                slot.start = w.start;
                slot.size = w.size;
                slot.left_until = now + w.left;
            }
        }
        let decision = decide(windows, |i| (slots[i].cur, slots[i].prev));
        if decision.allowed || penalty {
            slots.iter_mut().for_each(|s| s.cur += 1);
        }
        decision
    }

    /// Entries held (for tests and memory checks).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::rate_limiting::windows::{Period, WindowSpec};
    use http::HeaderName;

    fn spec(period: Period, limit: f64, sliding: bool) -> WindowSpec {
        WindowSpec {
            period,
            limit,
            sliding,
            limit_header: HeaderName::from_static("x-l"),
            remaining_header: HeaderName::from_static("x-r"),
        }
    }

    #[test]
    fn fixed_window_counts_only_allowed_requests_and_rolls_over() {
        let c = LocalCounters::default();
        let s = [spec(Period::Seconds(60), 3.0, false)];
        let at = |ms: i64| [WindowNow::at(&s[0], ms)];
        let t = 600_000;
        for i in 0..3 {
            let d = c.hit(1, &at(t + i), t / 1000, false);
            assert!(d.allowed);
            assert_eq!(d.usage[0], i as f64);
        }
        let d = c.hit(1, &at(t + 10), t / 1000, false);
        assert!(!d.allowed);
        assert_eq!(d.usage[0], 3.0, "rejected requests are not counted");
        // Another client has its own counter.
        assert!(c.hit(2, &at(t), t / 1000, false).allowed);
        // The next minute starts from zero.
        assert!(c.hit(1, &at(t + 60_000), t / 1000 + 60, false).allowed);
    }

    #[test]
    fn sliding_window_weighs_the_previous_one() {
        let c = LocalCounters::default();
        let s = spec(Period::Seconds(60), 10.0, true);
        let t = 600_000;
        for _ in 0..10 {
            assert!(c.hit(7, &[WindowNow::at(&s, t)], t / 1000, true).allowed);
        }
        // Half-way through the next window, the previous 10 weigh 5.
        let half = t + 90_000;
        for _ in 0..5 {
            assert!(c.hit(7, &[WindowNow::at(&s, half)], half / 1000, true).allowed);
        }
        assert!(!c.hit(7, &[WindowNow::at(&s, half)], half / 1000, true).allowed);
    }

    #[test]
    fn stale_entries_are_swept() {
        let c = LocalCounters::default();
        let s = spec(Period::Seconds(1), 5.0, false);
        for key in 0..1000u128 {
            c.hit(key * 64, &[WindowNow::at(&s, 1_000)], 1, false);
        }
        assert_eq!(c.len(), 1000);
        c.hit(0, &[WindowNow::at(&s, 100_000)], 100, false);
        assert_eq!(c.len(), 1, "shard 0 kept only the live entry");
    }
}

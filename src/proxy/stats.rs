//! Request and connection counters for `GET /status`, sharded per thread so the proxy's workers never
//! write the same cache line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    accepted: AtomicU64,
    closed: AtomicU64,
}

/// Monotonic counters; totals are summed on read.
#[derive(Debug, Default)]
pub struct Stats {
    shards: [Shard; SHARDS],
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard_index() -> usize {
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            i = (NEXT.fetch_add(1, Ordering::Relaxed) as usize) % SHARDS;
            s.set(i);
        }
        i
    })
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub accepted: u64,
    pub active: u64,
}

impl Stats {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    pub fn request(&self) {
        self.shard().requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.shard().accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.shard().closed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        let mut closed = 0;
        for s in &self.shards {
            t.requests += s.requests.load(Ordering::Relaxed);
            t.accepted += s.accepted.load(Ordering::Relaxed);
            closed += s.closed.load(Ordering::Relaxed);
        }
        t.active = t.accepted.saturating_sub(closed);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_across_threads() {
        let stats = std::sync::Arc::new(Stats::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        s.request();
                    }
                    s.connection_opened();
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        stats.connection_closed();
        assert_eq!(stats.totals(), Totals { requests: 400, accepted: 4, active: 3 });
    }
}

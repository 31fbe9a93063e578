//! Request and connection counters for `GET /status`, sharded per thread so the proxy's workers never
//! write the same cache line.

use crate::plugins::prometheus::counters::Counters;

const REQUESTS: usize = 0;
const ACCEPTED: usize = 1;
const CLOSED: usize = 2;

/// Monotonic counters; totals are summed on read.
#[derive(Debug, Default)]
pub struct Stats {
    counters: Counters<3>,
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub accepted: u64,
    pub active: u64,
}

impl Stats {
    pub fn request(&self) {
        self.counters.add(REQUESTS, 1);
    }

    pub fn connection_opened(&self) {
        self.counters.add(ACCEPTED, 1);
    }

    pub fn connection_closed(&self) {
        self.counters.add(CLOSED, 1);
    }

    pub fn totals(&self) -> Totals {
        let accepted = self.counters.total(ACCEPTED);
        Totals {
            requests: self.counters.total(REQUESTS),
            accepted,
            active: accepted.saturating_sub(self.counters.total(CLOSED)),
        }
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

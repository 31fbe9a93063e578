//! Request and connection counters (`GET /status`, `kong_nginx_connections_total`), sharded per
//! thread so the proxy's workers never write the same cache line. Connection states are nginx's:
//! `reading` a request head, `writing` (a request being handled and answered), `waiting` (idle).

use crate::plugins::prometheus::counters::Counters;

const REQUESTS: usize = 0;
const ACCEPTED: usize = 1;
const CLOSED: usize = 2;
const READING: usize = 3;
const READ: usize = 4;
const WRITING: usize = 5;
const WRITTEN: usize = 6;

/// Monotonic counters; totals are summed on read (a state's count is its starts minus its ends).
#[derive(Debug, Default)]
pub struct Stats {
    counters: Counters<7>,
}

/// A connection in a state until this is dropped (see [`Stats::reading`], [`Stats::writing`]).
#[derive(Debug)]
#[must_use]
pub struct InState<'a> {
    stats: &'a Stats,
    end: usize,
}

impl Drop for InState<'_> {
    fn drop(&mut self) {
        self.stats.counters.add(self.end, 1);
    }
}

/// Totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub accepted: u64,
    pub active: u64,
    pub reading: u64,
    pub writing: u64,
    /// Open connections neither reading nor writing (nginx's count: active minus the others, so
    /// never below zero, although HTTP/2 streams can make writing exceed active).
    pub waiting: u64,
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

    /// A connection reading a request head, until dropped.
    pub fn reading(&self) -> InState<'_> {
        self.counters.add(READING, 1);
        InState { stats: self, end: READ }
    }

    /// A request being handled and its answer written, until dropped.
    pub fn writing(&self) -> InState<'_> {
        self.counters.add(WRITING, 1);
        InState { stats: self, end: WRITTEN }
    }

    pub fn totals(&self) -> Totals {
        let t = |c| self.counters.total(c);
        // Ends are read before starts: a state ending meanwhile cannot make a count negative.
        let (closed, read, written) = (t(CLOSED), t(READ), t(WRITTEN));
        let (accepted, reading, writing) = (t(ACCEPTED), t(READING), t(WRITING));
        let active = accepted.saturating_sub(closed);
        let reading = reading.saturating_sub(read);
        let writing = writing.saturating_sub(written);
        Totals {
            requests: t(REQUESTS),
            accepted,
            active,
            reading,
            writing,
            waiting: active.saturating_sub(reading + writing),
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
        let t = stats.totals();
        assert_eq!((t.requests, t.accepted, t.active), (400, 4, 3));
        assert_eq!((t.reading, t.writing, t.waiting), (0, 0, 3));
    }

    #[test]
    fn connections_are_reading_writing_or_waiting_as_nginx_counts_them() {
        let stats = Stats::default();
        for _ in 0..3 {
            stats.connection_opened();
        }
        let reading = stats.reading();
        let writing = [stats.writing(), stats.writing()];
        let t = stats.totals();
        assert_eq!((t.active, t.reading, t.writing, t.waiting), (3, 1, 2, 0));
        drop(reading);
        drop(writing);
        let t = stats.totals();
        assert_eq!((t.active, t.reading, t.writing, t.waiting), (3, 0, 0, 3));
        // HTTP/2: more streams than connections; waiting stays at zero.
        let streams: Vec<_> = (0..5).map(|_| stats.writing()).collect();
        assert_eq!((stats.totals().writing, stats.totals().waiting), (5, 0));
        drop(streams);
    }
}

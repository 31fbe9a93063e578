//! Counters bumped on the proxy's workers and summed by scrapes: one cache line of counts per
//! thread shard, so workers never write the same line and nothing waits.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 16;

#[derive(Debug)]
#[repr(align(128))]
struct Shard<const N: usize>([AtomicU64; N]);

/// `N` monotonic counters, sharded by thread.
#[derive(Debug)]
pub struct Counters<const N: usize> {
    shards: [Shard<N>; SHARDS],
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard (threads take shards in turn).
pub fn shard_index() -> usize {
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

impl<const N: usize> Counters<N> {
    pub const fn new() -> Counters<N> {
        Counters { shards: [const { Shard([const { AtomicU64::new(0) }; N]) }; SHARDS] }
    }

    pub fn add(&self, counter: usize, n: u64) {
        if let Some(c) = self.shards[shard_index()].0.get(counter) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The sum over every shard.
    pub fn total(&self, counter: usize) -> u64 {
        self.shards.iter().filter_map(|s| s.0.get(counter)).map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_sum_up() {
        static C: Counters<2> = Counters::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    for _ in 0..1000 {
                        C.add(1, 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!((C.total(0), C.total(1)), (0, 16_000));
    }
}

//! Counters shared by several nodes through a remote store (the database for `cluster`, Redis with
//! a positive `sync_rate`), batched: a request decides on the last synced total plus this node's
//! unsynced hits, never waiting on the store; a task flushes the hits every `sync_rate` seconds and
//! reads the totals back. Accuracy across nodes is bounded by what they count within one interval.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::windows::{Decision, WindowNow, decide};

const SHARDS: usize = 16;

/// One batch item: counter key, hits to add, seconds to keep the counter.
pub type Increment = (String, u64, i64);

/// Where the totals live. `add` adds each increment and returns each counter's new total.
pub trait RemoteStore: Send + Sync + std::fmt::Debug {
    fn add<'a>(&'a self, batch: &'a [Increment])
    -> Pin<Box<dyn Future<Output = Result<Vec<u64>, String>> + Send + 'a>>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    synced: u64,
    pending: u64,
    expires_at: i64,
}

#[derive(Debug)]
pub struct SyncedCounters {
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
}

impl SyncedCounters {
    /// Counters without a flush task (a configuration compiled only to be checked).
    pub fn detached() -> Arc<SyncedCounters> {
        Arc::new(SyncedCounters { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() })
    }

    /// Starts the flush task on the current runtime; it ends when the counters are dropped.
    pub fn start(store: Arc<dyn RemoteStore>, every: Duration) -> Arc<SyncedCounters> {
        let counters = SyncedCounters::detached();
        let weak = Arc::downgrade(&counters);
        tokio::spawn(flush_loop(weak, store, every));
        counters
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        let h = foldhash::fast::FixedState::default();
        let i = std::hash::BuildHasher::hash_one(&h, key) as usize % SHARDS;
        &self.shards[i]
    }

    /// Decides and counts one request. `keys[i]` are window i's current and previous counter keys.
    pub fn hit(&self, keys: &[(String, String)], windows: &[WindowNow], now: i64, penalty: bool) -> Decision {
        let count = |key: &str| -> u64 {
            let shard = self.shard(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.get(key).map_or(0, |e| e.synced + e.pending)
        };
        let counts: Vec<(u64, u64)> = keys
            .iter()
            .zip(windows)
            .map(|((cur, prev), w)| (count(cur), if w.sliding { count(prev) } else { 0 }))
            .collect();
        let decision = decide(windows, |i| counts[i]);
        if decision.allowed || penalty {
            for ((cur, _), w) in keys.iter().zip(windows) {
                let mut shard = self.shard(cur).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let e = shard.entry(cur.clone()).or_default();
                e.pending += 1;
                e.expires_at = now + w.ttl();
            }
        } else {
            // Remember the counters so the next flush reads their totals from the other nodes.
            for ((cur, _), w) in keys.iter().zip(windows) {
                let mut shard = self.shard(cur).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                shard.entry(cur.clone()).or_default().expires_at = now + w.ttl();
            }
        }
        decision
    }

    /// Takes every live counter's pending hits (dropping expired counters).
    fn take(&self, now: i64) -> Vec<Increment> {
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.retain(|_, e| e.expires_at > now);
            for (k, e) in shard.iter_mut() {
                batch.push((k.clone(), e.pending, e.expires_at - now));
                e.pending = 0;
            }
        }
        batch
    }

    fn settle(&self, batch: &[Increment], totals: Result<Vec<u64>, String>) {
        for (i, (key, added, _)) in batch.iter().enumerate() {
            let mut shard = self.shard(key).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(e) = shard.get_mut(key) else { continue };
            match &totals {
                Ok(t) => e.synced = t.get(i).copied().unwrap_or(e.synced + added),
                // Kept for the next flush.
                Err(_) => e.pending += added,
            }
        }
    }
}

async fn flush_loop(counters: Weak<SyncedCounters>, store: Arc<dyn RemoteStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(counters) = counters.upgrade() else { return };
        let batch = counters.take(crate::clock::now_secs());
        if batch.is_empty() {
            continue;
        }
        let totals = store.add(&batch).await;
        match &totals {
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "rate-limiting counters could not be synced; retrying");
            }
            Ok(_) if failing => {
                failing = false;
                tracing::info!("rate-limiting counters synced again");
            }
            _ => {}
        }
        counters.settle(&batch, totals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::rate_limiting::windows::{Period, WindowSpec};

    /// A store shared by two "nodes" in memory, to check the batching arithmetic.
    #[derive(Debug, Default)]
    struct Shared(Mutex<HashMap<String, u64>>);

    impl RemoteStore for Shared {
        fn add<'a>(
            &'a self,
            batch: &'a [Increment],
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u64>, String>> + Send + 'a>> {
            let mut m = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let out = batch
                .iter()
                .map(|(k, n, _)| {
                    let v = m.entry(k.clone()).or_default();
                    *v += n;
                    *v
                })
                .collect();
            Box::pin(std::future::ready(Ok(out)))
        }
    }

    #[tokio::test]
    async fn nodes_see_each_others_hits_after_a_flush() {
        let store: Arc<dyn RemoteStore> = Arc::new(Shared::default());
        let a = SyncedCounters::start(store.clone(), Duration::from_secs(3600));
        let b = SyncedCounters::start(store.clone(), Duration::from_secs(3600));
        let spec = WindowSpec {
            period: Period::Seconds(60),
            limit: 4.0,
            sliding: false,
            limit_header: http::HeaderName::from_static("x-l"),
            remaining_header: http::HeaderName::from_static("x-r"),
        };
        let now = 6_000;
        let w = [WindowNow::at(&spec, now * 1000)];
        let keys = [("k:6000".to_string(), "k:5940".to_string())];
        for _ in 0..3 {
            assert!(a.hit(&keys, &w, now, false).allowed);
        }
        let flush = |c: &SyncedCounters| {
            let batch = c.take(now);
            let totals = futures_util::FutureExt::now_or_never(store.add(&batch)).unwrap_or(Err("pending".into()));
            c.settle(&batch, totals);
        };
        flush(&a);
        flush(&b);
        assert!(b.hit(&keys, &w, now, false).allowed, "3 + 1 = 4");
        flush(&b);
        flush(&a);
        assert!(!a.hit(&keys, &w, now, false).allowed, "the 5th is over");
    }
}

//! The latency algorithm, as Kong's balancer does it per worker: each peer's response time is an
//! exponentially weighted moving average (`ewma·e^(−Δt/10 s) + rtt·(1 − e^(−Δt/10 s))`, `rtt` from
//! the pick to the end of the response), and the peer with the lowest `ewma / weight` is picked. A
//! peer without a measure yet starts at the mean of the others (Kong's slow start), so a new
//! target is neither flooded nor starved. Measures are per worker, in a thread-local table.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use uuid::Uuid;

/// The decay constant, in seconds.
const TAU: f64 = 10.0;

#[derive(Debug)]
struct Measures {
    generation: u64,
    /// Seconds; `None` until the first response.
    ewma: Vec<Option<f64>>,
    last: Vec<Option<Instant>>,
}

thread_local! {
    static MEASURES: RefCell<HashMap<Uuid, Measures, foldhash::fast::RandomState>> = RefCell::default();
}

/// One request's timing of its peer, recorded when it drops (at the end of the response).
#[derive(Debug)]
pub struct Lease {
    upstream: Uuid,
    generation: u64,
    peer: usize,
    started: Instant,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let now = Instant::now();
        let rtt = now.duration_since(self.started).as_secs_f64();
        MEASURES.with_borrow_mut(|all| {
            let Some(m) = all.get_mut(&self.upstream).filter(|m| m.generation == self.generation) else { return };
            let (Some(ewma), Some(last)) = (m.ewma.get_mut(self.peer), m.last.get_mut(self.peer)) else { return };
            *ewma = Some(match (*ewma, *last) {
                (Some(old), Some(at)) => {
                    let decay = (-now.duration_since(at).as_secs_f64() / TAU).exp();
                    old * decay + rtt * (1.0 - decay)
                }
                _ => rtt,
            });
            *last = Some(now);
        });
    }
}

/// Picks the usable peer with the lowest `ewma / weight`, scanning from `from` so that ties rotate.
pub fn pick(
    upstream: Uuid,
    generation: u64,
    weights: &[u32],
    from: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<(usize, Lease)> {
    MEASURES.with_borrow_mut(|all| {
        let n = weights.len();
        let m =
            all.entry(upstream).or_insert_with(|| Measures { generation, ewma: vec![None; n], last: vec![None; n] });
        if m.generation != generation || m.ewma.len() != n {
            *m = Measures { generation, ewma: vec![None; n], last: vec![None; n] };
        }
        let (sum, known) = m.ewma.iter().flatten().fold((0.0, 0u32), |(sum, n), e| (sum + e, n + 1));
        let mean = if known == 0 { 0.0 } else { sum / f64::from(known) };
        let score = |i: usize| {
            let w = *weights.get(i)?;
            (w > 0 && usable(i)).then(|| m.ewma.get(i).copied().flatten().unwrap_or(mean) / f64::from(w))
        };
        let i = super::lowest(n, from, score, |a, b| a < b)?;
        Some((i, Lease { upstream, generation, peer: i, started: Instant::now() }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_fastest_peer_for_its_weight_is_picked_and_a_new_one_starts_at_the_mean() {
        let u = Uuid::new_v4();
        let weights = [1, 1, 1];
        // Peer 0 slow, peer 1 fast; peer 2 never measured.
        for (peer, ms) in [(0usize, 30u64), (1, 1)] {
            let lease = Lease { upstream: u, generation: 1, peer, started: Instant::now() };
            MEASURES.with_borrow_mut(|all| {
                all.entry(u).or_insert_with(|| Measures { generation: 1, ewma: vec![None; 3], last: vec![None; 3] });
            });
            std::thread::sleep(Duration::from_millis(ms));
            drop(lease);
        }
        let (i, _lease) = pick(u, 1, &weights, 0, |_| true).expect("peer");
        assert_eq!(i, 1, "the fast one");
        // Without the fast one, the unmeasured peer (at the mean) beats the slow one.
        let (i, _lease) = pick(u, 1, &weights, 0, |i| i != 1).expect("peer");
        assert_eq!(i, 2);
        assert!(pick(u, 1, &weights, 0, |_| false).is_none());
    }
}

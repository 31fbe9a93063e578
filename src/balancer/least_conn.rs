//! Least-connections, as Kong's balancer does it per worker: the peer with the fewest requests in
//! flight for its weight (`(in flight + 1) / weight`, lowest first) among the usable ones. Each
//! worker counts its own requests in a thread-local table (no lock, no shared counter); a request
//! holds a [`Lease`] on its peer until its response is over, and gives the count back when the
//! lease drops.

use std::cell::RefCell;
use std::collections::HashMap;

use uuid::Uuid;

thread_local! {
    /// In-flight requests of this worker per upstream: the balancer generation they count for, and
    /// a count per peer. A new generation (the balancer was rebuilt) starts from zero.
    static IN_FLIGHT: RefCell<HashMap<Uuid, (u64, Vec<u32>), foldhash::fast::RandomState>> = RefCell::default();
}

/// One request's claim on a peer; dropping it ends the claim.
#[derive(Debug)]
pub struct Lease {
    upstream: Uuid,
    generation: u64,
    peer: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        IN_FLIGHT.with_borrow_mut(|all| {
            if let Some((generation, counts)) = all.get_mut(&self.upstream)
                && *generation == self.generation
                && let Some(count) = counts.get_mut(self.peer)
            {
                *count = count.saturating_sub(1);
            }
        });
    }
}

/// Picks among `weights` (index order) the usable peer with the fewest requests in flight for its
/// weight, starting the scan at `from` so that ties rotate; counts it and returns its lease.
pub fn pick(
    upstream: Uuid,
    generation: u64,
    weights: &[u32],
    from: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<(usize, Lease)> {
    IN_FLIGHT.with_borrow_mut(|all| {
        let entry = all.entry(upstream).or_insert_with(|| (generation, vec![0; weights.len()]));
        if entry.0 != generation || entry.1.len() != weights.len() {
            *entry = (generation, vec![0; weights.len()]);
        }
        let counts = &mut entry.1;
        let load = |i: usize| {
            let (w, c) = (*weights.get(i)?, *counts.get(i)?);
            (w > 0 && usable(i)).then_some((u64::from(c) + 1, u64::from(w)))
        };
        // `load / weight` below the other's, compared without division.
        let i = super::lowest(weights.len(), from, load, |(l, w), (bl, bw)| l * bw < bl * w)?;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
        Some((i, Lease { upstream, generation, peer: i }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_peer_for_its_weight_is_picked_and_leases_give_back() {
        let u = Uuid::new_v4();
        let weights = [1, 1, 2];
        let mut leases = Vec::new();
        let mut picked = Vec::new();
        for from in 0..4 {
            let (i, lease) = pick(u, 1, &weights, from, |_| true).expect("peer");
            picked.push(i);
            leases.push(lease);
        }
        // Weight 2 takes two of four concurrent requests, the others one each.
        picked.sort_unstable();
        assert_eq!(picked, [0, 1, 2, 2]);
        drop(leases.drain(..2));
        let (i, _lease) = pick(u, 1, &weights, 0, |i| i != 2).expect("peer");
        assert!(i < 2);
        // A new generation starts from zero; old leases do not touch it.
        drop(leases);
        assert!(pick(u, 2, &weights, 0, |_| false).is_none());
    }
}

//! Consistent hashing as Kong's ring balancer places and finds peers
//! (`kong/runloop/balancer/consistent_hashing.lua`), so that a key goes to the same target behind
//! Tollgate as it did behind Kong. The continuum has `slots` points (1000 when `slots` is below
//! 1000); each peer takes `⌊weight / total weight × targets × 160⌋` points (at least one), at
//! `xxhash32("<address>::<port> <i>")` modulo the points, skipping points already taken. A value is
//! looked up at `xxhash32(value)` and the walk goes downward to the first usable peer. Kong takes the
//! hash as a signed 32-bit integer with a floored modulo; so does this.
//!
//! Adding or removing one of `n` peers moves about `1/n` of the keys: the other peers keep their
//! points.

/// The number of points on a continuum of `slots`.
fn points(slots: u32) -> u32 {
    if slots >= 1000 { slots } else { 1000 }
}

/// Kong's index of `text` on a continuum of `points`: luaxxhash's signed result, floored modulo.
fn position(text: &str, points: u32) -> usize {
    let hash = xxhash_rust::xxh32::xxh32(text.as_bytes(), 0) as i32;
    let p = i64::from(points);
    usize::try_from(((i64::from(hash) % p) + p) % p).unwrap_or(0)
}

/// One peer as the ring places it.
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    /// The address as Kong writes it in point keys (an IP, or the name while names are not
    /// resolved).
    pub address: &'a str,
    pub port: u16,
    pub weight: u32,
}

/// Each point's peer (its index + 1; 0 for an empty point).
#[derive(Debug, Default)]
pub struct Ring {
    continuum: Box<[u32]>,
}

impl Ring {
    /// Places `peers` (in the balancer's order) on a continuum of `slots`. `targets` is the number
    /// of targets, which Kong counts (not addresses) in each peer's share.
    pub fn build(peers: &[Placed<'_>], slots: u32, targets: usize) -> Ring {
        let points = points(slots);
        let total: f64 = peers.iter().map(|p| f64::from(p.weight)).sum();
        let mut continuum = vec![0u32; points as usize];
        if total <= 0.0 {
            return Ring { continuum: continuum.into_boxed_slice() };
        }
        // Kong places addresses in the order of their `ip:port` text.
        let mut order: Vec<usize> = (0..peers.len()).collect();
        order.sort_by_key(|&i| peers.get(i).map(|p| format!("{}:{}", p.address, p.port)));
        let mut free = points as usize;
        for i in order {
            let Some(peer) = peers.get(i).filter(|p| p.weight > 0) else { continue };
            let share = (f64::from(peer.weight) / total * targets as f64 * 160.0).floor();
            let mut entries = (share as usize).max(1);
            let mut n = 1;
            while n <= entries && free > 0 {
                let at = position(&format!("{}::{} {n}", peer.address, peer.port), points);
                match continuum.get_mut(at) {
                    Some(slot) if *slot == 0 => {
                        *slot = u32::try_from(i + 1).unwrap_or(0);
                        free -= 1;
                    }
                    // Taken: this key is skipped and the peer gets one more.
                    _ => entries += 1,
                }
                n += 1;
            }
        }
        Ring { continuum: continuum.into_boxed_slice() }
    }

    /// The peer for `value`: from its point downward (wrapping), the first for which `usable`
    /// holds. `None` when no point has a usable peer.
    pub fn find(&self, value: &str, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let points = u32::try_from(self.continuum.len()).ok().filter(|p| *p > 0)?;
        let start = position(value, points);
        let len = self.continuum.len();
        (0..len).map(|step| (start + len - step) % len).find_map(|at| {
            let peer = *self.continuum.get(at)?;
            let peer = usize::try_from(peer).ok()?.checked_sub(1)?;
            usable(peer).then_some(peer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<(String, u16)> {
        (0..n).map(|i| (format!("10.0.0.{}", i + 1), 80)).collect()
    }

    fn ring(list: &[(String, u16)]) -> Ring {
        let placed: Vec<Placed<'_>> = list.iter().map(|(a, p)| Placed { address: a, port: *p, weight: 100 }).collect();
        Ring::build(&placed, 10000, list.len())
    }

    #[test]
    fn kongs_hash_is_signed_and_floored() {
        // xxhash32("a") = 0x550d7456 (positive); a negative one must not index out of range.
        for text in ["a", "b", "10.0.0.1::80 1", "user-42", ""] {
            assert!(position(text, 1000) < 1000);
        }
        let negative =
            (0..1000).map(|i| i.to_string()).find(|s| (xxhash_rust::xxh32::xxh32(s.as_bytes(), 0) as i32) < 0);
        let s = negative.expect("some hash is negative as i32");
        let h = i64::from(xxhash_rust::xxh32::xxh32(s.as_bytes(), 0) as i32);
        assert_eq!(position(&s, 1000) as i64, h.rem_euclid(1000));
    }

    #[test]
    fn the_same_value_finds_the_same_peer_and_every_peer_gets_a_share() {
        let list = peers(4);
        let r = ring(&list);
        let mut counts = [0usize; 4];
        for k in 0..4000 {
            let key = format!("user-{k}");
            let a = r.find(&key, |_| true).expect("peer");
            assert_eq!(r.find(&key, |_| true), Some(a));
            counts[a] += 1;
        }
        assert!(counts.iter().all(|c| *c > 600), "{counts:?}");
    }

    #[test]
    fn adding_a_peer_moves_about_one_in_n_keys() {
        let four = peers(4);
        let five = peers(5);
        let (r4, r5) = (ring(&four), ring(&five));
        let keys = 10_000;
        let moved = (0..keys)
            .filter(|k| {
                let key = format!("k{k}");
                r4.find(&key, |_| true) != r5.find(&key, |_| true)
            })
            .count();
        // 1/5 of the keys belong to the new peer; a few more may move at the edges.
        assert!((1500..=2600).contains(&moved), "{moved} of {keys} keys moved");
    }

    #[test]
    fn an_unusable_peer_hands_its_keys_to_the_next_point_down() {
        let list = peers(3);
        let r = ring(&list);
        for k in 0..300 {
            let key = format!("k{k}");
            let first = r.find(&key, |_| true).expect("peer");
            let other = r.find(&key, |p| p != first).expect("another");
            assert_ne!(first, other);
        }
        assert_eq!(r.find("k", |_| false), None);
        assert_eq!(Ring::build(&[], 10, 0).find("k", |_| true), None);
    }
}

//! Weighted round-robin as a precomputed wheel: each peer appears in proportion to its weight, and
//! the appearances are interleaved smoothly (a peer of weight 3 among weights 1 and 2 is picked
//! every other time, never three times in a row), so that no target receives a burst after a
//! change. Built once per snapshot; picking is one step along the wheel.
//!
//! The order is stride scheduling: peer `i`'s `k`-th turn falls at virtual time `(k + ½) / wᵢ`,
//! and the wheel lists all turns by time (ties by peer order). Weights are divided by their greatest
//! common divisor; a wheel that would still be longer than [`MAX_WHEEL`] is scaled down, every
//! weight above 0 keeping at least one turn.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The longest wheel built: beyond it weights are scaled down (their ratios kept to within one turn).
pub const MAX_WHEEL: u64 = 1 << 16;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One peer's next turn, ordered earliest first.
#[derive(Debug, PartialEq, Eq)]
struct Turn {
    /// Virtual time as a fraction `num / den` (`(2k + 1) / 2w`).
    num: u64,
    den: u64,
    peer: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Turn) -> Ordering {
        // Earlier time first (min-heap through reversal), then the lower peer index.
        let a = u128::from(self.num) * u128::from(other.den);
        let b = u128::from(other.num) * u128::from(self.den);
        b.cmp(&a).then_with(|| other.peer.cmp(&self.peer))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Turn) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The wheel of peers with `weights`: indices, each as often as its (reduced) weight.
pub fn wheel(weights: &[u32]) -> Box<[u32]> {
    let divisor = weights.iter().map(|w| u64::from(*w)).fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| u64::from(*w) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_WHEEL {
        for w in reduced.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_WHEEL / total).max(1);
        }
    }
    let total: u64 = reduced.iter().sum();
    let mut heap: BinaryHeap<Turn> = reduced
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .filter_map(|(i, w)| Some(Turn { num: 1, den: 2 * w, peer: u32::try_from(i).ok()? }))
        .collect();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while let Some(turn) = heap.pop() {
        let Some(&w) = reduced.get(turn.peer as usize) else { continue };
        out.push(turn.peer);
        let next = turn.num + 2;
        // Its last turn falls before time 1: then it is done.
        if next < 2 * w {
            heap.push(Turn { num: next, den: turn.den, peer: turn.peer });
        }
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(wheel: &[u32], peers: usize) -> Vec<usize> {
        (0..peers).map(|p| wheel.iter().filter(|&&i| i as usize == p).count()).collect()
    }

    #[test]
    fn each_peer_appears_as_often_as_its_weight_in_lowest_terms() {
        let w = wheel(&[100, 200, 300]);
        assert_eq!(w.len(), 6);
        assert_eq!(counts(&w, 3), [1, 2, 3]);
        let w = wheel(&[5, 0, 5]);
        assert_eq!(counts(&w, 3), [1, 0, 1]);
        assert!(wheel(&[0, 0]).is_empty());
        assert!(wheel(&[]).is_empty());
    }

    #[test]
    fn turns_are_interleaved_never_bunched() {
        let w = wheel(&[1, 2, 3]);
        for pair in w.windows(2) {
            assert!(!(pair[0] == 2 && pair[1] == 2 && w.iter().filter(|&&i| i == 2).count() <= w.len() / 2), "{w:?}");
        }
        // Two equal weights alternate.
        let w = wheel(&[7, 7, 7]);
        assert_eq!(&w[..], [0, 1, 2]);
        // A heavy peer among light ones is spread over the whole wheel.
        let w = wheel(&[1, 1, 1, 1, 4]);
        let first_half = w[..w.len() / 2].iter().filter(|&&i| i == 4).count();
        assert_eq!(first_half, 2, "{w:?}");
    }

    #[test]
    fn huge_coprime_weights_are_scaled_to_a_bounded_wheel() {
        let weights: Vec<u32> = (0..1000).map(|i| 65535 - i).collect();
        let w = wheel(&weights);
        assert!(w.len() as u64 <= MAX_WHEEL + 1000, "{}", w.len());
        assert!(counts(&w, 1000).iter().all(|c| *c >= 1));
    }
}

//! Smooth weighted round robin (nginx's algorithm), precomputed: the whole cycle is built once,
//! when the snapshot or pool is built, and a request only bumps an atomic counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Longest cycle kept; larger weight sums are scaled down (keeping every non-zero weight > 0).
pub const MAX_CYCLE: u64 = 4096;

/// A precomputed smooth weighted round-robin cycle over indices `0..weights.len()`. Its
/// position may be shared with the cycle it replaces, so that a rebuild (a new configuration, an
/// endpoint change) continues the rotation instead of starting it over: restarting at the first
/// entry on every publish sends everything to the first backend when publishes are frequent.
#[derive(Debug, Default)]
pub struct SmoothCycle {
    sequence: Box<[u32]>,
    next: Arc<AtomicUsize>,
}

impl SmoothCycle {
    /// Builds the cycle, starting at the beginning.
    pub fn new(weights: &[u32]) -> Self {
        Self::continuing(weights, Arc::default())
    }

    /// Builds the cycle, continuing from `position` (shared with the cycle it replaces). Zero
    /// weights never appear; all-zero gives an empty cycle.
    pub fn continuing(weights: &[u32], position: Arc<AtomicUsize>) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let weights: Vec<i64> = if total > MAX_CYCLE {
            weights.iter().map(|&w| if w == 0 { 0 } else { (u64::from(w) * MAX_CYCLE / total).max(1) as i64 }).collect()
        } else {
            let g = weights.iter().fold(0u32, |a, &w| gcd(a, w)).max(1);
            weights.iter().map(|&w| i64::from(w / g)).collect()
        };
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut sequence = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += weights[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            sequence.push(best as u32);
        }
        SmoothCycle { sequence: sequence.into_boxed_slice(), next: position }
    }

    /// The position, for the cycle that replaces this one.
    pub fn position(&self) -> Arc<AtomicUsize> {
        self.next.clone()
    }

    /// The next index, or `None` for an empty cycle.
    pub fn next(&self) -> Option<usize> {
        if self.sequence.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.sequence[n % self.sequence.len()] as usize)
    }

    /// The cycle starting at the next position, for callers that must try several entries.
    pub fn next_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn at(&self, position: usize) -> Option<usize> {
        (!self.sequence.is_empty()).then(|| self.sequence[position % self.sequence.len()] as usize)
    }

    pub fn len(&self) -> usize {
        self.sequence.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sequence.is_empty()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ninety_ten_is_smooth() {
        let c = SmoothCycle::new(&[90, 10]);
        assert_eq!(c.len(), 10);
        let picks: Vec<_> = (0..10).map(|_| c.next().unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
        // nginx's smooth order never sends the minority twice in a row
        let c = SmoothCycle::new(&[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| c.next().unwrap()).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weights_get_nothing() {
        let c = SmoothCycle::new(&[0, 3]);
        assert!((0..9).all(|_| c.next() == Some(1)));
        assert_eq!(SmoothCycle::new(&[0, 0]).next(), None);
    }

    proptest! {
        #[test]
        fn shares_follow_weights(weights in proptest::collection::vec(0u32..50, 1..8)) {
            let c = SmoothCycle::new(&weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u32; weights.len()];
            for _ in 0..total { counts[c.next().unwrap_or(0)] += 1; }
            if total > 0 { prop_assert_eq!(counts, weights); }
        }

        #[test]
        fn huge_weights_keep_every_backend(weights in proptest::collection::vec(1u32..1_000_000, 1..20)) {
            let c = SmoothCycle::new(&weights);
            prop_assert!(c.len() as u64 <= MAX_CYCLE + 20);
            let mut seen = vec![false; weights.len()];
            for p in 0..c.len() { seen[c.at(p).unwrap()] = true; }
            prop_assert!(seen.iter().all(|s| *s));
        }
    }
}

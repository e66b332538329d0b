//! The worker whose blocks cover the longest prefix of the prompt, balanced against its
//! load: cost = `overlap_weight` x (prompt blocks it would have to prefill) + requests
//! it is already serving. Lowest cost wins; ties rotate so equal workers share load.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, RoutingPolicy};

/// Ranks workers by `overlap_weight * blocks to prefill + active requests`, lowest
/// first; ties go round-robin.
#[derive(Debug)]
pub struct KvAware {
    overlap_weight: f64,
    tie: AtomicUsize,
}

impl KvAware {
    /// The policy with this weight of one block to prefill, in queued requests.
    pub fn new(overlap_weight: f64) -> KvAware {
        KvAware {
            overlap_weight,
            tie: AtomicUsize::new(0),
        }
    }

    /// The cost of sending a prompt of `prompt_blocks` blocks to `c`.
    pub fn cost(&self, prompt_blocks: usize, c: &Candidate) -> f64 {
        let to_prefill = prompt_blocks.saturating_sub(c.overlap_blocks);
        self.overlap_weight * to_prefill as f64 + c.active as f64
    }
}

impl RoutingPolicy for KvAware {
    fn name(&self) -> &'static str {
        "kv-aware"
    }

    fn rank(&self, prompt_blocks: usize, candidates: &[Candidate]) -> Vec<usize> {
        let n = candidates.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.tie.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Stable: equal costs keep the rotated order.
        order.sort_by(|&a, &b| {
            self.cost(prompt_blocks, &candidates[a])
                .total_cmp(&self.cost(prompt_blocks, &candidates[b]))
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, overlap_blocks: usize, active: usize) -> Candidate {
        Candidate {
            name: name.into(),
            overlap_blocks,
            active,
        }
    }

    #[test]
    fn prefers_overlap_then_load() {
        let kv = KvAware::new(1.0);
        // w1 holds 8 of 10 blocks: cost 2 + 1 busy = 3, w0 cost 10.
        assert_eq!(kv.rank(10, &[c("w0", 0, 0), c("w1", 8, 1)])[0], 1);
        // Overlap does not win against a heavy queue: w1 costs 2 + 20.
        assert_eq!(kv.rank(10, &[c("w0", 0, 0), c("w1", 8, 20)])[0], 0);
        // Equal workers take turns.
        let firsts: Vec<usize> = (0..4)
            .map(|_| kv.rank(10, &[c("a", 0, 0), c("b", 0, 0)])[0])
            .collect();
        assert!(firsts.contains(&0) && firsts.contains(&1), "{firsts:?}");
    }
}

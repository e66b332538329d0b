//! Each request to the next worker in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, RoutingPolicy};

/// Each worker in turn.
#[derive(Default, Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoutingPolicy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn rank(&self, _prompt_blocks: usize, candidates: &[Candidate]) -> Vec<usize> {
        let n = candidates.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates() {
        let rr = RoundRobin::default();
        let c: Vec<Candidate> = (0..3)
            .map(|i| Candidate {
                name: format!("w{i}"),
                overlap_blocks: 0,
                active: 0,
            })
            .collect();
        let firsts: Vec<usize> = (0..6).map(|_| rr.rank(4, &c)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.rank(4, &c), [0, 1, 2]);
        assert!(rr.rank(4, &[]).is_empty());
    }
}

//! Hit-ratio curves of a trace in one pass (Mattson's stack algorithm): for an LRU
//! cache, whether an access hits depends only on its *stack distance* — how many
//! distinct other blocks were touched since the block's previous access — so one pass
//! that measures every distance answers every capacity at once.
//!
//! The replay (and the store) serve a request's *prefix*: block `k` is a hit only if
//! blocks `0..=k` all are. Every request touches all its blocks in order (hits are
//! read, misses are stored, a block stored again is touched), so the LRU order does
//! not depend on the capacity, and block `k` hits in a cache of `C` blocks exactly when
//! the largest distance among blocks `0..=k` of its request is below `C`. One
//! histogram of those prefix maxima is the whole curve.
//!
//! Exact for one LRU tier (what `tune` checks against the simulation). For a host ->
//! disk pair with demotion and promotion the same distances give the *exclusive*
//! model — host holds the `C1` most recent blocks, the pair the `C1 + C2` most recent —
//! which the store approximates (a promoted block keeps its disk copy): `tune` ranks
//! with the model and simulates its shortlist exactly.

use std::collections::HashMap;

use super::{TraceRecord, block_hashes};

/// Distance of a block never seen before.
pub(super) const COLD: u64 = u64::MAX;

/// Sampling hashes fall in `0..SAMPLE_SPACE`.
const SAMPLE_SPACE: u64 = 1 << 24;

/// The error `tune --sample-rate` states for a sampled curve: the hit ratio of every
/// capacity within this (absolute) of the exact pass, at rates that keep at least
/// 10,000 distinct blocks. Checked by the tests on generated chat traces (the largest
/// error measured there is in the test's output).
pub(crate) const SAMPLED_ERROR_BOUND: f64 = 0.02;

/// A block's sampling hash (the block hash is already uniform; mixing its halves keeps
/// the sample independent of how ids were assigned in a trace).
fn sample_hash(h: u128) -> u64 {
    ((h as u64) ^ ((h >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40
}

fn bump(hist: &mut Vec<u64>, at: usize) {
    if hist.len() <= at {
        hist.resize(at + 1, 0);
    }
    hist[at] += 1;
}

/// A Fenwick (binary indexed) tree of 0/1 marks over access times.
struct Fenwick(Vec<u32>);

impl Fenwick {
    fn new(n: usize) -> Fenwick {
        Fenwick(vec![0; n + 1])
    }
    fn add(&mut self, i: usize, delta: i32) {
        let mut i = i + 1;
        while i < self.0.len() {
            self.0[i] = self.0[i].wrapping_add_signed(delta);
            i += i & i.wrapping_neg();
        }
    }
    /// Marks in `0..i`.
    fn prefix(&self, i: usize) -> u64 {
        let (mut i, mut sum) = (i, 0u64);
        while i > 0 {
            sum += u64::from(self.0[i]);
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

/// One pass over a trace at one block size: the histogram of prefix-maximum stack
/// distances, overall and split by the host capacities asked for.
#[derive(Clone, Debug)]
pub(super) struct HitCurve {
    pub block_tokens: u64,
    /// Block accesses (full prompt blocks over all requests).
    pub accesses: u64,
    /// Distinct blocks (the working set).
    pub distinct: u64,
    /// `total[c]`: accesses that hit in a cache of `c` blocks (`c` up to `distinct`).
    total: Vec<u64>,
    /// For each host capacity `h` asked for: `host[i][c]`, the accesses that hit in a
    /// cache of `c` blocks *and* sit in its `h` most recent ones.
    host_caps: Vec<u64>,
    host: Vec<Vec<u64>>,
}

impl HitCurve {
    /// Measures `trace` at `block_tokens` tokens per block; `host_caps` are the host
    /// capacities (blocks) whose split [`HitCurve::split`] will be asked for. Exact.
    #[cfg(test)]
    pub(super) fn measure(trace: &[TraceRecord], block_tokens: u64, host_caps: &[u64]) -> HitCurve {
        HitCurve::measure_sampled(trace, block_tokens, host_caps, 1.0)
    }

    /// The one-pass curve (as `measure`, the exact pass the tests call) over a spatial sample of the blocks (SHARDS, Waldspurger et
    /// al., FAST'15): a block is kept when a hash of it falls below `rate` (so a kept
    /// block is kept at every access), distances among kept blocks are scaled by
    /// `1 / rate`, and each kept access stands for `1 / rate` accesses. Time and memory
    /// of the pass shrink by about `rate`; `rate = 1` is the exact pass. The result is an
    /// estimate (see [`SAMPLED_ERROR_BOUND`]); `tune` simulates its shortlist exactly.
    ///
    /// Prefix hits stay right under sampling because the block hashes chain: a block
    /// never seen before makes every later block of its request new too, so a cold
    /// block that was not sampled is followed only by cold blocks; and along a request
    /// the stack distance of a later block is at least an earlier one's less the blocks
    /// between them (every request that touched the later block touched the earlier
    /// one just before), so the largest sampled distance of a prefix stands for the
    /// prefix's maximum.
    pub(super) fn measure_sampled(
        trace: &[TraceRecord],
        block_tokens: u64,
        host_caps: &[u64],
        rate: f64,
    ) -> HitCurve {
        let rate = rate.clamp(f64::MIN_POSITIVE, 1.0);
        let threshold = (rate * SAMPLE_SPACE as f64) as u64;
        let kept = |h: &u128| rate >= 1.0 || sample_hash(*h) < threshold;
        let mut host_caps = host_caps.to_vec();
        host_caps.sort_unstable();
        host_caps.dedup();
        let mut accesses = 0usize;
        let chains: Vec<Vec<u128>> = trace
            .iter()
            .map(|r| {
                let mut chain = block_hashes(r, block_tokens);
                accesses += chain.len();
                chain.retain(kept);
                chain
            })
            .collect();
        let sampled: usize = chains.iter().map(Vec::len).sum();
        let mut last: HashMap<u128, usize> = HashMap::with_capacity(sampled / 2);
        let mut marks = Fenwick::new(sampled);
        // Histograms indexed by the (scaled) prefix maximum (below the blocks seen so
        // far, so they grow to the working set at most); COLD is never a hit.
        let mut total_hist: Vec<u64> = Vec::new();
        let mut host_hist: Vec<Vec<u64>> = vec![Vec::new(); host_caps.len()];
        let mut live = 0u64; // marked positions = distinct (sampled) blocks seen so far
        let mut t = 0usize;
        for chain in &chains {
            let mut prefix_max = 0u64;
            for h in chain {
                let d = match last.insert(*h, t) {
                    Some(prev) => {
                        // Distinct blocks touched after `prev`: marks in (prev, t).
                        let d = live - marks.prefix(prev + 1);
                        marks.add(prev, -1);
                        if rate >= 1.0 {
                            d
                        } else {
                            (d as f64 / rate) as u64
                        }
                    }
                    None => {
                        live += 1;
                        COLD
                    }
                };
                marks.add(t, 1);
                t += 1;
                prefix_max = prefix_max.max(d);
                if prefix_max != COLD {
                    let m = prefix_max as usize;
                    bump(&mut total_hist, m);
                    // Host capacities are sorted: the block is among the `cap` most
                    // recent for every cap above its distance.
                    let first = host_caps.partition_point(|&cap| cap <= d);
                    for hist in &mut host_hist[first..] {
                        bump(hist, m);
                    }
                }
            }
        }
        let scale = |n: f64| -> u64 {
            if rate >= 1.0 {
                n as u64
            } else {
                (n / rate).round().max(0.0) as u64
            }
        };
        // SHARDS-adj: a few hot blocks (system prompts) carry much of a trace, and
        // whether the sample caught them moves the estimate; the difference between
        // the accesses the sample should hold and those it holds is given to the
        // shortest distance, where hot blocks sit.
        let adjust = if rate >= 1.0 {
            0.0
        } else {
            accesses as f64 * rate - sampled as f64
        };
        let distinct = scale(live as f64).max(total_hist.len() as u64);
        let cumulate = |hist: Vec<u64>| -> Vec<u64> {
            // out[c] = accesses whose prefix maximum is < c, for c in 0..=distinct.
            let mut out = Vec::with_capacity(distinct as usize + 1);
            let mut sum = adjust;
            out.push(0);
            for c in 0..distinct as usize {
                sum += hist.get(c).copied().unwrap_or(0) as f64;
                out.push(scale(sum));
            }
            out
        };
        HitCurve {
            block_tokens,
            accesses: accesses as u64,
            distinct,
            total: cumulate(total_hist),
            host_caps,
            host: host_hist.into_iter().map(cumulate).collect(),
        }
    }

    /// Block hits of one LRU cache of `capacity` blocks (exact).
    pub(super) fn hits(&self, capacity: u64) -> u64 {
        self.total[capacity.min(self.distinct) as usize]
    }

    /// `(host hits, lower-tier hits)` of the exclusive host -> lower model: host
    /// `host_cap` blocks (one of the capacities given to [`HitCurve::measure_sampled`]) over a
    /// lower tier of `lower_cap`. `None` for a host capacity not measured.
    pub(super) fn split(&self, host_cap: u64, lower_cap: u64) -> Option<(u64, u64)> {
        let i = self.host_caps.iter().position(|&c| c == host_cap)?;
        let all = (host_cap + lower_cap).min(self.distinct) as usize;
        let host = self.host[i][all];
        Some((host, self.total[all] - host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::trace::id_trace as trace;

    /// A plain LRU with prefix hits, the replay's rule, for comparison.
    fn lru_hits(trace: &[TraceRecord], block_tokens: u64, cap: usize) -> u64 {
        let mut order: Vec<u128> = Vec::new(); // most recent last
        let mut hits = 0;
        for r in trace {
            let chain = block_hashes(r, block_tokens);
            let mut in_prefix = true;
            for h in chain {
                let pos = order.iter().position(|x| *x == h);
                in_prefix &= pos.is_some();
                if in_prefix {
                    hits += 1;
                }
                if let Some(p) = pos {
                    order.remove(p);
                } else if order.len() == cap {
                    if cap == 0 {
                        continue;
                    }
                    order.remove(0);
                }
                order.push(h);
            }
        }
        hits
    }

    #[test]
    fn a_sampled_curve_is_within_its_stated_bound_and_rate_one_is_exact() {
        use crate::trace::generate::{GenArgs, generate};
        for seed in [7, 11] {
            let t = generate(&GenArgs {
                out: std::path::PathBuf::from("unused"),
                requests: 30_000,
                users: 64,
                turns: 4,
                system_prompts: 8,
                system_tokens: 2048,
                user_tokens: 384,
                output_tokens: 256,
                documents: 64,
                document_tokens: 8192,
                document_share: 0.25,
                zipf: 1.1,
                rate: 4.0,
                seed,
            })
            .unwrap();
            let bt = 128;
            let exact = HitCurve::measure(&t, bt, &[]);
            let one = HitCurve::measure_sampled(&t, bt, &[], 1.0);
            assert_eq!(
                (one.total.clone(), one.distinct),
                (exact.total.clone(), exact.distinct)
            );
            let caps: Vec<u64> = (0..=40).map(|i| exact.distinct * i / 40).collect();
            for rate in [0.1, 0.3] {
                let sampled = HitCurve::measure_sampled(&t, bt, &[], rate);
                let kept = (exact.distinct as f64 * rate) as u64;
                assert!(
                    kept >= 10_000,
                    "the bound is stated for >= 10^4 sampled blocks: {kept}"
                );
                let worst = caps
                    .iter()
                    .map(|&c| {
                        let e = exact.hits(c) as f64 / exact.accesses as f64;
                        let s = sampled.hits(c) as f64 / sampled.accesses as f64;
                        (e - s).abs()
                    })
                    .fold(0.0, f64::max);
                println!(
                    "seed {seed} rate {rate}: {kept} of {} distinct blocks sampled, largest hit-ratio error {worst:.4}",
                    exact.distinct
                );
                assert!(
                    worst <= SAMPLED_ERROR_BOUND,
                    "rate {rate}: error {worst} over the stated {SAMPLED_ERROR_BOUND}"
                );
                assert_eq!(sampled.accesses, exact.accesses);
            }
        }
    }

    #[test]
    fn edge_cases() {
        let one = trace(&[&[1], &[1], &[1]]);
        let c = HitCurve::measure(&one, 512, &[]);
        assert_eq!((c.accesses, c.distinct), (3, 1));
        assert_eq!((c.hits(0), c.hits(1), c.hits(u64::MAX)), (0, 2, 2));
        let distinct = trace(&[&[1, 2], &[3, 4], &[5, 6]]);
        let c = HitCurve::measure(&distinct, 512, &[]);
        assert_eq!((c.hits(1), c.hits(100)), (0, 0));
        // Request 2 shares block 1 of request 1 but not its block 2: a prefix hit of 1.
        let shared = trace(&[&[1, 2], &[1, 3]]);
        assert_eq!(HitCurve::measure(&shared, 512, &[]).hits(10), 1);
        // A suffix that is cached behind a missing prefix is no hit.
        let suffix = trace(&[&[1, 2, 3], &[9], &[1, 2, 3]]);
        let c = HitCurve::measure(&suffix, 512, &[]);
        assert_eq!(c.hits(4), 3);
        assert_eq!(
            c.hits(1),
            0,
            "block 1 was evicted first; its suffix cannot hit"
        );
    }

    #[test]
    fn one_pass_equals_an_lru_at_every_capacity() {
        let mut rng = crate::trace::generate::Rng::new(5);
        let requests: Vec<Vec<u64>> = (0..300)
            .map(|_| {
                let root = rng.next_u64() % 6;
                let len = 1 + (rng.next_u64() % 6) as usize;
                (0..len)
                    .map(|k| {
                        if k < 2 {
                            root * 100 + k as u64
                        } else {
                            (rng.next_u64() % 40) + 1000
                        }
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&[u64]> = requests.iter().map(Vec::as_slice).collect();
        let t = trace(&refs);
        for bt in [128, 512] {
            let c = HitCurve::measure(&t, bt, &[]);
            for cap in [0usize, 1, 2, 3, 5, 8, 13, 40, 100, 1000] {
                assert_eq!(
                    c.hits(cap as u64),
                    lru_hits(&t, bt, cap),
                    "block {bt} capacity {cap}"
                );
            }
        }
    }

    #[test]
    fn the_split_adds_up_and_the_host_part_is_the_smaller_cache() {
        let t = trace(&[&[1, 2, 3], &[1, 2, 4], &[5], &[1, 2, 3], &[5, 6]]);
        let c = HitCurve::measure(&t, 512, &[1, 2]);
        for (h, l) in [(1, 0), (1, 3), (2, 2), (2, 10)] {
            let (host, lower) = c.split(h, l).unwrap();
            assert_eq!(host + lower, c.hits(h + l));
            assert!(host <= c.hits(h + l));
        }
        assert_eq!(c.split(3, 1), None, "host capacity not measured");
    }
}

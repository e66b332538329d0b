//! Picking the next token from logits: greedy at temperature 0, otherwise temperature
//! and nucleus (top-p) sampling from a seeded generator, so that a request with a
//! `seed` gives the same tokens every time.

pub use tierkv_serving::request::SamplingParams;

/// Draws tokens from logits: greedy at temperature 0, else temperature and top-p
/// sampling from a seeded generator (the same seed draws the same tokens).
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
}

impl Sampler {
    /// A sampler with these parameters (seeded from the clock without a seed).
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64).rotate_left(32)
        });
        Sampler {
            params,
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Advances the generator past `n` sampled tokens (greedy draws nothing).
    pub fn skip_draws(&mut self, n: u64) {
        if self.params.temperature > 0.0 {
            self.state = self
                .state
                .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
    }

    /// SplitMix64: small, fast and good enough for sampling.
    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// The next token's id.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp()))
            .collect();
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let mut keep = probs.len();
        if self.params.top_p < 1.0 {
            probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p.1 / total;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept = &probs[..keep];
        let mass: f32 = kept.iter().map(|p| p.1).sum();
        let mut r = self.next_f32() * mass;
        for p in kept {
            r -= p.1;
            if r <= 0.0 {
                return p.0;
            }
        }
        kept.last().map_or(0, |p| p.0)
    }
}

/// Index of the largest logit (the first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_seeded_and_top_p() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        let greedy = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(Sampler::new(greedy).sample(&logits), 1);
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: Some(7),
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b, "same seed, same tokens");
        let mut skipped = Sampler::new(p);
        skipped.skip_draws(10);
        let rest: Vec<u32> = (10..50).map(|_| skipped.sample(&logits)).collect();
        assert_eq!(rest, a[10..], "skipping draws continues the same sequence");
        assert!(
            a.contains(&1) && a.contains(&2),
            "samples more than the argmax"
        );
        // top_p small enough keeps only the most likely token.
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits) == 1));
    }
}

//! Rotary position embedding, applied in place to rows of heads.

use super::RopeStyle;

/// cos/sin tables for positions `0..max_positions`.
pub(super) struct Rope {
    style: RopeStyle,
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub(super) fn new(style: RopeStyle, head_dim: usize, theta: f32, max_positions: usize) -> Rope {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        // As llama.cpp computes it: angle_i = pos * scale^i by repeated f32
        // multiplication, scale = base^(-2/d).
        let scale = theta.powf(-2.0 / head_dim as f32);
        for pos in 0..max_positions {
            let mut angle = pos as f32;
            for _ in 0..half {
                cos.push(angle.cos());
                sin.push(angle.sin());
                angle *= scale;
            }
        }
        Rope {
            style,
            half,
            cos,
            sin,
        }
    }

    pub(super) fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head (`head_dim` floats each) of `row` for position `pos`.
    pub(super) fn apply(&self, row: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..pos * h + h];
        let sin = &self.sin[pos * h..pos * h + h];
        for head in row.chunks_exact_mut(2 * h) {
            match self.style {
                RopeStyle::Interleaved => {
                    for i in 0..h {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        head[2 * i] = a * cos[i] - b * sin[i];
                        head[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeStyle::HalfSplit => {
                    for i in 0..h {
                        let (a, b) = (head[i], head[i + h]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + h] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_zero_is_identity_and_rotation_keeps_norm() {
        for style in [RopeStyle::Interleaved, RopeStyle::HalfSplit] {
            let r = Rope::new(style, 8, 10_000.0, 16);
            let orig: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 1.0).collect();
            let mut row = orig.clone();
            r.apply(&mut row, 0);
            assert_eq!(row, orig);
            r.apply(&mut row, 7);
            assert_ne!(row, orig);
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
            assert!((norm(&row[..8]) - norm(&orig[..8])).abs() < 1e-4);
        }
    }
}

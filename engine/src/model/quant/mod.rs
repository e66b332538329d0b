//! Quantized weights times f32 activations, the way llama.cpp computes them: each
//! activation row is quantized per 32 values to 8 bits (Q8_1 for Q4_1 weights, Q8_0 for
//! Q8_0 weights) and every 32-value block adds `d_w * d_x * sum(q_w * q_x)` (plus
//! `m_w * s_x` for Q4_1) to the result.
//!
//! The integer dot products use AVX2 where the CPU has it (candle's Q4_1 kernel is
//! scalar, and keeping every matrix product on one thread pool avoids two pools
//! fighting over the cores). The scalar path does the same arithmetic in the same
//! order, so results are bit-identical on every CPU, and each (row, column) result is
//! computed alone, so it does not depend on how rows are batched: KV computed in a
//! batch equals KV computed alone, which prefix reuse relies on.

mod q4_1;
mod q8_0;

use rayon::prelude::*;

pub(super) use q4_1::Q4_1;
pub(super) use q8_0::Q8_0;

use crate::{EngineError, Result};

/// Products smaller than this many multiply-adds are not split across threads.
const PARALLEL_MACS: usize = 1 << 16;

/// Values per quantization block.
pub(super) const QK: usize = 32;

/// A weight block format.
pub(crate) trait Format: Send + Sync + 'static {
    /// A 32-value weight block, decoded from ggml's bytes.
    type Weight: Copy + Send + Sync;
    /// A 32-value activation block.
    type Act: Copy + Send + Sync;
    /// ggml's bytes per weight block.
    const BLOCK_BYTES: usize;
    fn parse(bytes: &[u8]) -> Self::Weight;
    fn quantize(x: &[f32]) -> Self::Act;
    /// Four weight rows times one activation row, without SIMD.
    fn dot4_scalar(w: [&[Self::Weight]; 4], a: &[Self::Act]) -> [f32; 4];
    /// The same with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn dot4_avx2(w: [&[Self::Weight]; 4], a: &[Self::Act]) -> [f32; 4];
}

/// An `[out_features, in_features]` quantized matrix.
pub(crate) struct QuantMatrix<F: Format> {
    rows: usize,
    cols: usize,
    blocks: Vec<F::Weight>,
    avx2: bool,
}

impl<F: Format> QuantMatrix<F> {
    /// From ggml's raw bytes (as stored in GGUF) of a `rows x cols` matrix.
    pub(crate) fn from_ggml(raw: &[u8], rows: usize, cols: usize) -> Result<QuantMatrix<F>> {
        if rows == 0 || !cols.is_multiple_of(QK) || raw.len() != rows * cols / QK * F::BLOCK_BYTES {
            return Err(EngineError::model(format!(
                "quantized tensor of {rows}x{cols} has {} bytes",
                raw.len()
            )));
        }
        Ok(QuantMatrix {
            rows,
            cols,
            blocks: raw.chunks_exact(F::BLOCK_BYTES).map(F::parse).collect(),
            avx2: cpu_has_avx2(),
        })
    }

    pub(crate) fn out_features(&self) -> usize {
        self.rows
    }

    #[cfg(test)]
    pub(crate) fn without_simd(mut self) -> Self {
        self.avx2 = false;
        self
    }

    /// `x` is `[m, cols]`; returns `[m, rows]`.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let kb = self.cols / QK;
        let acts: Vec<F::Act> = x.chunks_exact(QK).map(F::quantize).collect();
        let mut out = vec![0.0f32; m * self.rows];
        // Work items: chunks of output features; each walks every activation row, so a
        // weight row is read from memory once per call.
        const CHUNK: usize = 32;
        let row = |r: usize| {
            let r = r.min(self.rows - 1);
            &self.blocks[r * kb..(r + 1) * kb]
        };
        let chunk = |c: usize| {
            let (r0, r1) = (c * CHUNK, ((c + 1) * CHUNK).min(self.rows));
            let width = r1 - r0;
            let mut part = vec![0.0f32; m * width];
            for r in (r0..r1).step_by(4) {
                let rows = [row(r), row(r + 1), row(r + 2), row(r + 3)];
                for t in 0..m {
                    let a = &acts[t * kb..(t + 1) * kb];
                    let d = if self.avx2 {
                        // SAFETY: `avx2` is set only when the CPU has AVX2 and FMA.
                        unsafe { F::dot4_avx2(rows, a) }
                    } else {
                        F::dot4_scalar(rows, a)
                    };
                    let n = (r1 - r).min(4);
                    part[t * width + (r - r0)..t * width + (r - r0) + n].copy_from_slice(&d[..n]);
                }
            }
            (r0, part)
        };
        // Small products run on the calling thread: waking the pool costs more.
        let chunks = self.rows.div_ceil(CHUNK);
        let parts: Vec<(usize, Vec<f32>)> = if m * self.rows * self.cols < PARALLEL_MACS {
            (0..chunks).map(chunk).collect()
        } else {
            (0..chunks).into_par_iter().map(chunk).collect()
        };
        for (r0, part) in parts {
            let width = part.len() / m.max(1);
            for t in 0..m {
                out[t * self.rows + r0..t * self.rows + r0 + width]
                    .copy_from_slice(&part[t * width..(t + 1) * width]);
            }
        }
        out
    }
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sums eight lanes in a fixed order (the AVX2 path stores its lanes and calls this).
pub(crate) fn hsum8(l: [f32; 8]) -> f32 {
    let q = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}

/// ggml's 8-bit activation quantization of one block: (scale as f16, values, sum).
pub(crate) fn quantize_8bit(x: &[f32]) -> (f32, [i8; 32], i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, qs, sum)
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// Random ggml bytes of a `rows x cols` matrix in `F`'s format and the exact values.
    fn matrix(rows: usize, cols: usize, q4: bool) -> (Vec<u8>, Vec<f32>) {
        let mut raw = Vec::new();
        let mut dense = vec![0.0; rows * cols];
        let mut s = 7u32;
        let mut next = || {
            s = s.wrapping_mul(1103515245).wrapping_add(12345);
            (s >> 16) as u8
        };
        for r in 0..rows {
            for b in 0..cols / QK {
                let base = r * cols + b * QK;
                let d = f16::from_f32(0.01 * (1 + b % 3) as f32);
                raw.extend_from_slice(&d.to_le_bytes());
                if q4 {
                    let m = f16::from_f32(-0.05);
                    raw.extend_from_slice(&m.to_le_bytes());
                    for j in 0..16 {
                        let q = next();
                        raw.push(q);
                        dense[base + j] = d.to_f32() * (q & 15) as f32 + m.to_f32();
                        dense[base + j + 16] = d.to_f32() * (q >> 4) as f32 + m.to_f32();
                    }
                } else {
                    for j in 0..32 {
                        let q = next();
                        raw.push(q);
                        dense[base + j] = d.to_f32() * (q as i8) as f32;
                    }
                }
            }
        }
        (raw, dense)
    }

    fn check<F: Format>(q4: bool) {
        let (rows, cols, m) = (37, 96, 5);
        let (raw, dense) = matrix(rows, cols, q4);
        let w = QuantMatrix::<F>::from_ggml(&raw, rows, cols).unwrap();
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let y = w.matmul(&x, m);
        // The exact product of the weights with the 8-bit activations the kernel sees.
        let xq: Vec<f32> = x
            .chunks_exact(QK)
            .flat_map(|b| {
                let (d, qs, _) = quantize_8bit(b);
                let d = f16::from_f32(d).to_f32();
                qs.map(|q| d * q as f32)
            })
            .collect();
        for t in 0..m {
            for r in 0..rows {
                let exact: f64 = (0..cols)
                    .map(|c| dense[r * cols + c] as f64 * xq[t * cols + c] as f64)
                    .sum();
                let got = y[t * rows + r] as f64;
                assert!(
                    (got - exact).abs() < 1e-3 * (1.0 + exact.abs()),
                    "{t},{r}: {got} vs {exact}"
                );
            }
            // One row alone gives the same bits as inside the batch.
            let alone = w.matmul(&x[t * cols..(t + 1) * cols], 1);
            assert_eq!(alone[..], y[t * rows..(t + 1) * rows]);
        }
        let scalar = QuantMatrix::<F>::from_ggml(&raw, rows, cols)
            .unwrap()
            .without_simd();
        assert_eq!(
            scalar.matmul(&x, m),
            y,
            "SIMD and scalar paths agree bit for bit"
        );
        assert!(QuantMatrix::<F>::from_ggml(&raw[1..], rows, cols).is_err());
    }

    #[test]
    fn q4_1_matches_dense_batch_invariant_and_simd_equals_scalar() {
        check::<Q4_1>(true);
    }

    #[test]
    fn q8_0_matches_dense_batch_invariant_and_simd_equals_scalar() {
        check::<Q8_0>(false);
    }
}

//! Q4_1 weights times f32 activations, the way llama.cpp does it: activations are
//! quantized to Q8_1 (32 values, one f16 scale) and each 32-value block contributes
//! `d_w * d_x * sum(q_w * q_x) + m_w * s_x`. The integer dot uses AVX2 where the CPU
//! has it (candle's Q4_1 kernel is scalar); the float accumulation is the same scalar
//! sequence on every path, so results are bit-identical with and without AVX2 and do
//! not depend on how rows are batched.

use half::f16;
use rayon::prelude::*;

use crate::{EngineError, Result};

const QK: usize = 32;
/// ggml's `block_q4_1`: f16 scale `d`, f16 minimum `m`, 32 4-bit values (low nibbles
/// are values 0..16, high nibbles 16..32).
const BLOCK_BYTES: usize = 20;

#[derive(Clone, Copy)]
struct WeightBlock {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

#[derive(Clone, Copy)]
struct ActBlock {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

/// An `[out_features, in_features]` Q4_1 matrix.
pub struct Q4_1Matrix {
    rows: usize,
    cols: usize,
    blocks: Vec<WeightBlock>,
    avx2: bool,
}

impl Q4_1Matrix {
    /// From ggml's raw bytes (as stored in GGUF) of a `rows x cols` matrix.
    pub fn from_ggml(raw: &[u8], rows: usize, cols: usize) -> Result<Q4_1Matrix> {
        if cols % QK != 0 || raw.len() != rows * cols / QK * BLOCK_BYTES {
            return Err(EngineError::model(format!(
                "Q4_1 tensor of {rows}x{cols} has {} bytes",
                raw.len()
            )));
        }
        let blocks = raw
            .chunks_exact(BLOCK_BYTES)
            .map(|b| {
                let mut qs = [0u8; 16];
                qs.copy_from_slice(&b[4..20]);
                WeightBlock {
                    d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                    qs,
                }
            })
            .collect();
        Ok(Q4_1Matrix {
            rows,
            cols,
            blocks,
            avx2: cpu_has_avx2(),
        })
    }

    pub fn out_features(&self) -> usize {
        self.rows
    }

    /// `x` is `[m, cols]`; returns `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let kb = self.cols / QK;
        let acts: Vec<ActBlock> = x.chunks_exact(QK).map(quantize_q8_1).collect();
        let mut out = vec![0.0f32; m * self.rows];
        // Work items: chunks of output features; each walks every activation row so a
        // weight row is read from memory once per call.
        const CHUNK: usize = 16;
        let n_chunks = self.rows.div_ceil(CHUNK);
        let results: Vec<(usize, Vec<f32>)> = (0..n_chunks)
            .into_par_iter()
            .map(|c| {
                let r0 = c * CHUNK;
                let r1 = (r0 + CHUNK).min(self.rows);
                let mut part = vec![0.0f32; m * (r1 - r0)];
                for r in r0..r1 {
                    let w = &self.blocks[r * kb..(r + 1) * kb];
                    for t in 0..m {
                        part[t * (r1 - r0) + (r - r0)] = self.dot(w, &acts[t * kb..(t + 1) * kb]);
                    }
                }
                (r0, part)
            })
            .collect();
        for (r0, part) in results {
            let width = part.len() / m.max(1);
            for t in 0..m {
                out[t * self.rows + r0..t * self.rows + r0 + width]
                    .copy_from_slice(&part[t * width..(t + 1) * width]);
            }
        }
        out
    }

    fn dot(&self, w: &[WeightBlock], a: &[ActBlock]) -> f32 {
        let mut acc = 0.0f32;
        for (wb, ab) in w.iter().zip(a) {
            let isum = if self.avx2 {
                // SAFETY: `avx2` is set only when the CPU reports AVX2 (checked at load).
                unsafe { isum_avx2(&wb.qs, &ab.qs) }
            } else {
                isum_scalar(&wb.qs, &ab.qs)
            };
            acc += wb.d * ab.d * isum as f32 + wb.m * ab.s;
        }
        acc
    }
}

fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// ggml's `quantize_row_q8_1` for one block: scale and block sum rounded to f16.
fn quantize_q8_1(x: &[f32]) -> ActBlock {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    ActBlock {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
        qs,
    }
}

fn isum_scalar(w: &[u8; 16], a: &[i8; 32]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        s += (w[j] & 0x0f) as i32 * a[j] as i32;
        s += (w[j] >> 4) as i32 * a[j + 16] as i32;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn isum_avx2(w: &[u8; 16], a: &[i8; 32]) -> i32 {
    use std::arch::x86_64::*;
    // SAFETY: both loads read exactly the 16 and 32 bytes the arrays hold (unaligned
    // loads); the intrinsics only need AVX2, which the caller checked.
    unsafe {
        let packed = _mm_loadu_si128(w.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(packed, _mm_set1_epi8(0x0f));
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), _mm_set1_epi8(0x0f));
        let q4 = _mm256_set_m128i(hi, lo);
        let q8 = _mm256_loadu_si256(a.as_ptr() as *const __m256i);
        let pairs = _mm256_maddubs_epi16(q4, q8);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(quads),
            _mm256_extracti128_si256(quads, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn isum_avx2(w: &[u8; 16], a: &[i8; 32]) -> i32 {
    isum_scalar(w, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
        let mut raw = Vec::new();
        let mut dense = vec![0.0; rows * cols];
        let mut s = 7u32;
        for r in 0..rows {
            for b in 0..cols / QK {
                let (d, m) = (
                    f16::from_f32(0.01 * (1 + b % 3) as f32),
                    f16::from_f32(-0.05),
                );
                raw.extend_from_slice(&d.to_le_bytes());
                raw.extend_from_slice(&m.to_le_bytes());
                let mut qs = [0u8; 16];
                for (j, q) in qs.iter_mut().enumerate() {
                    s = s.wrapping_mul(1103515245).wrapping_add(12345);
                    *q = (s >> 16) as u8;
                    let base = r * cols + b * QK;
                    dense[base + j] = d.to_f32() * (*q & 15) as f32 + m.to_f32();
                    dense[base + j + 16] = d.to_f32() * (*q >> 4) as f32 + m.to_f32();
                }
                raw.extend_from_slice(&qs);
            }
        }
        (raw, dense)
    }

    #[test]
    fn matches_dense_and_is_row_batch_invariant() {
        let (rows, cols, m) = (37, 96, 5);
        let (raw, dense) = matrix(rows, cols);
        let w = Q4_1Matrix::from_ggml(&raw, rows, cols).unwrap();
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let y = w.matmul(&x, m);
        for t in 0..m {
            for r in 0..rows {
                let exact: f32 = (0..cols)
                    .map(|c| dense[r * cols + c] * x[t * cols + c])
                    .sum();
                let got = y[t * rows + r];
                assert!(
                    (got - exact).abs() < 0.02 * (1.0 + exact.abs()),
                    "{t},{r}: {got} vs {exact}"
                );
            }
            // One row alone gives the same bits as inside the batch.
            let alone = w.matmul(&x[t * cols..(t + 1) * cols], 1);
            assert_eq!(alone[..], y[t * rows..(t + 1) * rows]);
        }
        let scalar = Q4_1Matrix {
            avx2: false,
            ..Q4_1Matrix::from_ggml(&raw, rows, cols).unwrap()
        };
        assert_eq!(
            scalar.matmul(&x, m),
            y,
            "AVX2 and scalar paths agree bit for bit"
        );
        assert!(Q4_1Matrix::from_ggml(&raw[1..], rows, cols).is_err());
    }
}

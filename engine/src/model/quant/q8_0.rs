//! ggml's Q8_0: per 32 values an f16 scale `d` and 8-bit signed values; activations
//! in Q8_0 too.

use half::f16;

use super::{Format, hsum8, quantize_8bit};

pub(crate) struct Q8_0;

#[derive(Clone, Copy)]
pub(crate) struct Block {
    d: f32,
    qs: [i8; 32],
}

impl Format for Q8_0 {
    type Weight = Block;
    type Act = Block;
    const BLOCK_BYTES: usize = 34;

    fn parse(b: &[u8]) -> Block {
        let mut qs = [0i8; 32];
        for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
            *q = byte as i8;
        }
        Block {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            qs,
        }
    }

    fn quantize(x: &[f32]) -> Block {
        let (d, qs, _) = quantize_8bit(x);
        Block {
            d: f16::from_f32(d).to_f32(),
            qs,
        }
    }

    /// The reference for `dot4_avx2`: eight lanes of four products (lane `l` is
    /// values `4l..4l+4`) summed exactly, `acc[l] = fma(d_w * d_x, lane, acc[l])`,
    /// lanes added in `hsum8`'s order.
    fn dot4_scalar(w: [&[Block]; 4], a: &[Block]) -> [f32; 4] {
        let mut out = [0.0f32; 4];
        for (r, row) in w.iter().enumerate() {
            let mut acc = [0.0f32; 8];
            for (wb, ab) in row.iter().zip(a) {
                let scale = wb.d * ab.d;
                for (l, lane) in acc.iter_mut().enumerate() {
                    let s: i32 = (4 * l..4 * l + 4)
                        .map(|i| wb.qs[i] as i32 * ab.qs[i] as i32)
                        .sum();
                    *lane = scale.mul_add(s as f32, *lane);
                }
            }
            out[r] = hsum8(acc);
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4_avx2(w: [&[Block]; 4], a: &[Block]) -> [f32; 4] {
        use std::arch::x86_64::*;
        // SAFETY: every load reads exactly the 32 bytes of an array it is given
        // (unaligned loads); the caller checked AVX2 and FMA.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); 4];
            for (b, ab) in a.iter().enumerate() {
                let y = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
                for r in 0..4 {
                    let wb = &w[r][b];
                    let x = _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i);
                    // maddubs multiplies unsigned by signed: |x| times y with x's sign.
                    let ax = _mm256_sign_epi8(x, x);
                    let sy = _mm256_sign_epi8(y, x);
                    let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(wb.d * ab.d),
                        _mm256_cvtepi32_ps(lanes),
                        acc[r],
                    );
                }
            }
            let mut out = [0.0f32; 4];
            for r in 0..4 {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
                out[r] = hsum8(lanes);
            }
            out
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn dot4_avx2(w: [&[Block]; 4], a: &[Block]) -> [f32; 4] {
        Self::dot4_scalar(w, a)
    }
}

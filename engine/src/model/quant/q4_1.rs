//! ggml's Q4_1: per 32 values an f16 scale `d`, an f16 minimum `m` and 4-bit values
//! (low nibbles are values 0..16, high nibbles 16..32); activations in Q8_1.

use half::f16;

use super::{Format, hsum8, quantize_8bit};

pub(crate) struct Q4_1;

#[derive(Clone, Copy)]
pub(crate) struct Weight {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

#[derive(Clone, Copy)]
pub(crate) struct Act {
    d: f32,
    /// `d * sum(qs)`, rounded to f16 as ggml does.
    s: f32,
    qs: [i8; 32],
}

impl Format for Q4_1 {
    type Weight = Weight;
    type Act = Act;
    const BLOCK_BYTES: usize = 20;

    fn parse(b: &[u8]) -> Weight {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[4..20]);
        Weight {
            d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs,
        }
    }

    fn quantize(x: &[f32]) -> Act {
        let (d, qs, sum) = quantize_8bit(x);
        Act {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(sum as f32 * d).to_f32(),
            qs,
        }
    }

    /// The reference for `dot4_avx2`, step for step: per block, eight lanes of four
    /// products (lane `l < 4`: low nibbles `4l..4l+4`; lane `l >= 4`: high nibbles) summed
    /// exactly as integers, then `acc[l] = fma(d_w * d_x, lane, acc[l])`; the lanes are
    /// added in the AVX2 reduction's order and the `m_w * s_x` terms last.
    fn dot4_scalar(w: [&[Weight]; 4], a: &[Act]) -> [f32; 4] {
        let mut out = [0.0f32; 4];
        for (r, row) in w.iter().enumerate() {
            let mut acc = [0.0f32; 8];
            let mut mins = 0.0f32;
            for (wb, ab) in row.iter().zip(a) {
                let scale = wb.d * ab.d;
                for (l, lane) in acc.iter_mut().enumerate() {
                    let mut s = 0i32;
                    for j in 0..4 {
                        let idx = (l % 4) * 4 + j;
                        let q = if l < 4 {
                            wb.qs[idx] & 0x0f
                        } else {
                            wb.qs[idx] >> 4
                        };
                        s += q as i32 * ab.qs[if l < 4 { idx } else { idx + 16 }] as i32;
                    }
                    *lane = scale.mul_add(s as f32, *lane);
                }
                mins = wb.m.mul_add(ab.s, mins);
            }
            out[r] = hsum8(acc) + mins;
        }
        out
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot4_avx2(w: [&[Weight]; 4], a: &[Act]) -> [f32; 4] {
        use std::arch::x86_64::*;
        // SAFETY: every load reads exactly the 16 or 32 bytes of an array it is given
        // (unaligned loads); the caller checked AVX2 and FMA.
        unsafe {
            let mask = _mm_set1_epi8(0x0f);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut mins = [0.0f32; 4];
            for (b, ab) in a.iter().enumerate() {
                let q8 = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
                for r in 0..4 {
                    let wb = &w[r][b];
                    let packed = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
                    let lo = _mm_and_si128(packed, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
                    let q4 = _mm256_set_m128i(hi, lo);
                    let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(wb.d * ab.d),
                        _mm256_cvtepi32_ps(lanes),
                        acc[r],
                    );
                    mins[r] = wb.m.mul_add(ab.s, mins[r]);
                }
            }
            let mut out = [0.0f32; 4];
            for r in 0..4 {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]);
                out[r] = hsum8(lanes) + mins[r];
            }
            out
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn dot4_avx2(w: [&[Weight]; 4], a: &[Act]) -> [f32; 4] {
        Self::dot4_scalar(w, a)
    }
}

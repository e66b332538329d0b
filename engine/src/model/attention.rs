//! Causal attention straight over the paged KV pool: no gather of a sequence's K/V
//! into a contiguous tensor. Every (token, head) is computed independently and walks
//! its keys in position order, so the result for a token does not depend on how the
//! prompt was split into chunks or batched with other sequences: KV computed in one
//! pass, in chunks or loaded from a tier gives bit-identical outputs.

use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kv::KvPool;

/// Largest head dimension the kernel takes (Llama and Qwen use 64 or 128).
pub(super) const MAX_HEAD_DIM: usize = 512;

/// One sequence's share of a step: its new tokens' queries and where its KV lives.
#[derive(Debug)]
pub struct AttnSeq<'a> {
    /// Queries of the new tokens, `[token][head][head_dim]`.
    pub q: &'a [f32],
    /// Position of the first new token.
    pub start_pos: usize,
    /// Block table: block `i` holds positions `i*B .. (i+1)*B`.
    pub blocks: &'a [u32],
}

/// The attention's dimensions.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub num_heads: usize,
    /// KV heads (grouped-query attention: `num_heads` is a multiple).
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Tokens per KV block.
    pub block_size: usize,
}

/// Writes `[token][head][head_dim]` outputs for all sequences, in order, into `out`.
pub fn paged_attention(
    pool: &KvPool,
    layer: usize,
    seqs: &[AttnSeq<'_>],
    shape: &AttnShape,
    out: &mut [f32],
) {
    let (h, d) = (shape.num_heads, shape.head_dim);
    let group = h / shape.num_kv_heads;
    let row = h * d;
    // (sequence, token index) of every output row.
    let mut items = Vec::with_capacity(out.len() / row);
    for (s, seq) in seqs.iter().enumerate() {
        for t in 0..seq.q.len() / row {
            items.push((s, t));
        }
    }
    // Few rows (decode): one item per query head, so both cores have work. Many rows
    // (prefill): one item per KV head, serving the `group` query heads that share it,
    // so K and V are read once for all of them. Either way each head's sums run in the
    // same order, so the results are the same bits.
    let per_item = if items.len() * shape.num_kv_heads >= 16 {
        group
    } else {
        1
    };
    let items_per_row = h / per_item;
    let work = |scores: &mut Vec<f32>, (i, dst): (usize, &mut [f32])| {
        let (s, t) = items[i / items_per_row];
        let first_head = (i % items_per_row) * per_item;
        let seq = &seqs[s];
        // Queries and attention weights meet the f16 KV at f16 precision, as in
        // llama.cpp's CPU attention.
        let mut q = [0.0f32; 2048];
        let q = &mut q[..per_item * d];
        let first = t * row + first_head * d;
        q.copy_from_slice(&seq.q[first..first + per_item * d]);
        crate::model::round_to_f16(q);
        let job = Job {
            pool,
            layer,
            seq,
            shape,
            pos: seq.start_pos + t,
            kv_head: first_head / group,
            q,
        };
        attend(&job, scores, dst);
    };
    // Keys visited in total: a decode step of a short context is cheaper on this
    // thread than waking the pool.
    let visits: usize = items
        .iter()
        .map(|&(s, t)| seqs[s].start_pos + t + 1)
        .sum::<usize>()
        * h;
    if visits < 1 << 15 {
        let mut scores = Vec::new();
        out.chunks_mut(per_item * d)
            .enumerate()
            .for_each(|x| work(&mut scores, x));
    } else {
        out.par_chunks_mut(per_item * d)
            .enumerate()
            .for_each_init(Vec::new, work);
    }
}

/// The query heads one work item computes: some of the heads that share `kv_head`
/// (`q` holds them, one `head_dim` slice each) for the token at `pos`.
struct Job<'a> {
    pool: &'a KvPool,
    layer: usize,
    seq: &'a AttnSeq<'a>,
    shape: &'a AttnShape,
    pos: usize,
    kv_head: usize,
    q: &'a [f32],
}

/// Picks the AVX2 build of [`attend_body`] where the CPU has it. No FMA contraction
/// happens in either build, so both give the same bits; AVX2 only widens the vectors.
fn attend(job: &Job<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { attend_avx2(job, scores, out) };
        return;
    }
    attend_body(job, scores, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_avx2(job: &Job<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_body(job, scores, out)
}

/// Each head's sums run in the same order whatever the other heads of the job.
#[inline(always)]
fn attend_body(job: &Job<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let Job {
        pool,
        layer,
        seq,
        shape,
        pos,
        kv_head,
        q,
    } = *job;
    let d = shape.head_dim;
    let group = q.len() / d;
    let stride = shape.num_kv_heads * d;
    let scale = 1.0 / (d as f32).sqrt();
    let n = pos + 1;
    let blocks = n.div_ceil(shape.block_size);
    scores.clear();
    scores.resize(group * n, 0.0);
    let mut max = [f32::NEG_INFINITY; 64];
    // One head's K or V row, widened from the pool's f16.
    let mut row = [0.0f32; MAX_HEAD_DIM];
    let row = &mut row[..d];
    let mut j = 0;
    for (b, &block) in seq.blocks.iter().enumerate().take(blocks) {
        let keys = pool.keys(block, layer);
        let in_block = (n - b * shape.block_size).min(shape.block_size);
        for t in 0..in_block {
            keys[t * stride + kv_head * d..t * stride + kv_head * d + d].convert_to_f32_slice(row);
            let k = &*row;
            for g in 0..group {
                let s = dot(&q[g * d..(g + 1) * d], k) * scale;
                max[g] = max[g].max(s);
                scores[g * n + j] = s;
            }
            j += 1;
        }
    }
    let mut inv = [0.0f32; 64];
    for g in 0..group {
        let mut sum = 0.0f32;
        for s in scores[g * n..(g + 1) * n].iter_mut() {
            *s = (*s - max[g]).exp();
            sum += *s;
        }
        inv[g] = 1.0 / sum;
    }
    out.fill(0.0);
    let mut j = 0;
    for (b, &block) in seq.blocks.iter().enumerate().take(blocks) {
        let values = pool.values(block, layer);
        let in_block = (n - b * shape.block_size).min(shape.block_size);
        for t in 0..in_block {
            values[t * stride + kv_head * d..t * stride + kv_head * d + d]
                .convert_to_f32_slice(row);
            let v = &*row;
            for g in 0..group {
                let w = half::f16::from_f32(scores[g * n + j] * inv[g]).to_f32();
                for (o, x) in out[g * d..(g + 1) * d].iter_mut().zip(v) {
                    *o += w * x;
                }
            }
            j += 1;
        }
    }
}

/// Dot product with eight independent accumulators (vectorizes; fixed order).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tierkv_kvstore::{DType, KvLayout};

    /// Reference attention over contiguous K/V for one head, in f32 (the kernel rounds
    /// queries and weights to f16, hence the tolerance).
    fn reference(q: &[f32], ks: &[Vec<f32>], vs: &[Vec<f32>]) -> Vec<f32> {
        let d = q.len();
        let s: Vec<f32> = ks
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt())
            .collect();
        let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let z: f32 = e.iter().sum();
        (0..d)
            .map(|i| e.iter().zip(vs).map(|(w, v)| w / z * v[i]).sum())
            .collect()
    }

    #[test]
    fn matches_reference_across_scattered_blocks_and_gqa() {
        let (bs, kvh, d, h) = (4usize, 2usize, 8usize, 4usize);
        let layout = KvLayout::new(1, kvh as u32, d as u32, DType::F16, bs as u32).unwrap();
        let mut pool = KvPool::new(layout, 8).unwrap();
        let blocks = [5u32, 1, 6];
        let n = 10;
        let val = |p: usize, g: usize, i: usize, kv: usize| {
            ((p * 31 + g * 7 + i * 3 + kv) % 17) as f32 / 17.0 - 0.5
        };
        for p in 0..n {
            let k: Vec<f32> = (0..kvh * d).map(|j| val(p, j / d, j % d, 0)).collect();
            let v: Vec<f32> = (0..kvh * d).map(|j| val(p, j / d, j % d, 1)).collect();
            pool.write_token(blocks[p / bs], 0, p % bs, &k, &v);
        }
        let q: Vec<f32> = (0..h * d).map(|j| (j % 5) as f32 * 0.1 - 0.2).collect();
        let seq = AttnSeq {
            q: &q,
            start_pos: n - 1,
            blocks: &blocks,
        };
        let shape = AttnShape {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            block_size: bs,
        };
        let mut out = vec![0.0; h * d];
        paged_attention(&pool, 0, &[seq], &shape, &mut out);
        for head in 0..h {
            let g = head / 2;
            let ks: Vec<Vec<f32>> = (0..n)
                .map(|p| (0..d).map(|i| val(p, g, i, 0)).collect())
                .collect();
            let vs: Vec<Vec<f32>> = (0..n)
                .map(|p| (0..d).map(|i| val(p, g, i, 1)).collect())
                .collect();
            let want = reference(&q[head * d..head * d + d], &ks, &vs);
            for (a, b) in out[head * d..head * d + d].iter().zip(&want) {
                assert!((a - b).abs() < 2e-3, "head {head}: {a} vs {b}");
            }
        }
    }
}

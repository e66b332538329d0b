//! The gather and scatter kernels, compiled at run time with NVRTC.
//!
//! A transfer is a list of *pieces* (one layer of one block, `piece_bytes` long) at
//! arbitrary device addresses, and a contiguous staging buffer in which the pieces lie
//! one after another in list order — the store's block layout when the list is
//! (block 0 layer 0, block 0 layer 1, ..., block 1 layer 0, ...). `gather` copies pieces
//! into staging, `scatter` back out; `copy_pieces` copies pieces between pairs of
//! addresses (a layer of many blocks into their places in staging); `zero_copy_pieces`
//! does the same across PCIe for small transfers: its pair table and one side of every
//! pair are mapped pinned host memory, read and written by the kernel itself (no staging
//! and no copy-engine copy). Grid: x = piece, y = chunk of the piece; each thread moves
//! 16 bytes at a time.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction};

use super::gpu_err;
use crate::{Result, TierError};

const SOURCE: &str = r#"
typedef unsigned long long u64;

extern "C" __global__ void gather_pieces(const u64* __restrict__ pieces, u64 staging,
                                         u64 piece_bytes, u64 chunk_bytes) {
    const u64 piece = blockIdx.x;
    const u64 begin = (u64)blockIdx.y * chunk_bytes;
    u64 end = begin + chunk_bytes;
    if (end > piece_bytes) end = piece_bytes;
    const uint4* src = (const uint4*)(pieces[piece] + begin);
    uint4* dst = (uint4*)(staging + piece * piece_bytes + begin);
    const u64 n = (end - begin) / 16;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void scatter_pieces(const u64* __restrict__ pieces, u64 staging,
                                          u64 piece_bytes, u64 chunk_bytes) {
    const u64 piece = blockIdx.x;
    const u64 begin = (u64)blockIdx.y * chunk_bytes;
    u64 end = begin + chunk_bytes;
    if (end > piece_bytes) end = piece_bytes;
    const uint4* src = (const uint4*)(staging + piece * piece_bytes + begin);
    uint4* dst = (uint4*)(pieces[piece] + begin);
    const u64 n = (end - begin) / 16;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Layer-wise saves: `pairs[2p]` is piece p's source, `pairs[2p + 1]` its destination.
extern "C" __global__ void copy_pieces(const u64* __restrict__ pairs, u64 piece_bytes,
                                       u64 chunk_bytes) {
    const u64 piece = blockIdx.x;
    const u64 begin = (u64)blockIdx.y * chunk_bytes;
    u64 end = begin + chunk_bytes;
    if (end > piece_bytes) end = piece_bytes;
    const uint4* src = (const uint4*)(pairs[2 * piece] + begin);
    uint4* dst = (uint4*)(pairs[2 * piece + 1] + begin);
    const u64 n = (end - begin) / 16;
    for (u64 i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

// Zero-copy transfers (see the module docs): `pairs` and one side of each pair are
// mapped pinned host memory, so nothing here is restrict/read-only-cached. Four loads
// are in flight per thread before their stores: a PCIe read takes microseconds.
extern "C" __global__ void zero_copy_pieces(const u64* pairs, u64 piece_bytes,
                                            u64 chunk_bytes) {
    const u64 piece = blockIdx.x;
    const u64 begin = (u64)blockIdx.y * chunk_bytes;
    u64 end = begin + chunk_bytes;
    if (end > piece_bytes) end = piece_bytes;
    const uint4* src = (const uint4*)(pairs[2 * piece] + begin);
    uint4* dst = (uint4*)(pairs[2 * piece + 1] + begin);
    const u64 n = (end - begin) / 16;
    const u64 step = blockDim.x;
    u64 i = threadIdx.x;
    for (; i + 3 * step < n; i += 4 * step) {
        const uint4 a = src[i], b = src[i + step], c = src[i + 2 * step], d = src[i + 3 * step];
        dst[i] = a;
        dst[i + step] = b;
        dst[i + 2 * step] = c;
        dst[i + 3 * step] = d;
    }
    for (; i < n; i += step) dst[i] = src[i];
}
"#;

/// Bytes of a piece one thread block copies.
pub(super) const CHUNK_BYTES: u64 = 64 << 10;
/// Bytes of a piece one thread block of `zero_copy_pieces` copies: smaller than
/// [`CHUNK_BYTES`], so a small transfer still spreads over many SMs (one thread block's
/// four-deep loads cover exactly this much).
pub(super) const ZERO_COPY_CHUNK_BYTES: u64 = 16 << 10;
/// Threads per thread block.
pub(super) const THREADS: u32 = 256;

pub(super) struct Kernels {
    pub gather: CudaFunction,
    pub scatter: CudaFunction,
    /// Copies pieces between addresses given in pairs (layer-wise saves).
    pub copy_pairs: CudaFunction,
    /// Copies pieces between HBM and mapped pinned host memory (small transfers).
    pub zero_copy: CudaFunction,
}

impl Kernels {
    pub(super) fn compile(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let ptx = cudarc::nvrtc::compile_ptx(SOURCE)
            .map_err(|e| TierError::Gpu(format!("NVRTC compiling the transfer kernels: {e}")))?;
        let module = ctx
            .load_module(ptx)
            .map_err(gpu_err("loading the transfer kernels"))?;
        Ok(Kernels {
            gather: module
                .load_function("gather_pieces")
                .map_err(gpu_err("gather_pieces"))?,
            scatter: module
                .load_function("scatter_pieces")
                .map_err(gpu_err("scatter_pieces"))?,
            copy_pairs: module
                .load_function("copy_pieces")
                .map_err(gpu_err("copy_pieces"))?,
            zero_copy: module
                .load_function("zero_copy_pieces")
                .map_err(gpu_err("zero_copy_pieces"))?,
        })
    }
}

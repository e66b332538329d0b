//! [`EngineKv`]: an engine's own KV cache in device memory (vLLM's per-layer tensors, as
//! `register_kv_caches` hands them over), described by where each block's pieces lie,
//! so that the transfer engine offloads and onboards its blocks in place.
//!
//! Any layout whose blocks are runs at a fixed stride fits: FlashAttention's
//! `[2, num_blocks, block_size, kv_heads, head_dim]` per layer is two groups per layer
//! (K and V), FlashInfer's `[num_blocks, 2, ...]` one group per layer, and a cross-layer
//! tensor `[num_blocks, layers, ...]` one group in all (each block one contiguous run).

use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::driver::sys::{self, CUdeviceptr};

use super::{DeviceBlocks, gpu_err};
use crate::{Result, TierError};

/// One piece of every block: block `b`'s piece is at `base + b * block_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PieceGroup {
    /// Device address of block 0's piece.
    pub base: u64,
    /// Bytes from one block's piece to the next's.
    pub block_stride: u64,
}

/// An engine's KV blocks in device memory it owns: `groups.len()` pieces per block, each
/// `piece_bytes` long; in the store's block layout the pieces follow group order.
#[derive(Debug)]
pub struct EngineKv {
    ctx: Arc<CudaContext>,
    groups: Vec<PieceGroup>,
    piece_bytes: usize,
    num_blocks: usize,
}

impl EngineKv {
    /// Describes `num_blocks` blocks of `groups.len()` pieces of `piece_bytes` each.
    ///
    /// Every group's pieces, first to last, must lie inside one device allocation of
    /// `ctx`'s GPU (checked with the driver), and with more than one group every base,
    /// stride and piece size must be a multiple of 16 bytes (the kernels' unit). Wrong
    /// addresses and sizes are errors.
    ///
    /// # Safety
    /// The memory must stay allocated for as long as this value (and any transfer
    /// using it) lives: the engine keeps its tensors. The driver check proves the
    /// ranges are device memory now; it cannot prove they stay so.
    pub unsafe fn new(
        ctx: &Arc<CudaContext>,
        groups: Vec<PieceGroup>,
        piece_bytes: usize,
        num_blocks: usize,
    ) -> Result<EngineKv> {
        let bad = |why: String| TierError::Gpu(format!("engine KV: {why}"));
        if groups.is_empty() || piece_bytes == 0 || num_blocks == 0 {
            return Err(bad(format!(
                "{} groups of {num_blocks} blocks of {piece_bytes}-byte pieces: all must be positive",
                groups.len()
            )));
        }
        if groups.len() > 1 {
            let misaligned = groups
                .iter()
                .find(|g| !g.base.is_multiple_of(16) || !g.block_stride.is_multiple_of(16));
            if let Some(g) = misaligned
                .copied()
                .or((!piece_bytes.is_multiple_of(16)).then_some(groups[0]))
            {
                return Err(bad(format!(
                    "pieces of {piece_bytes} bytes at {:#x} + b x {}: not multiples of 16 bytes",
                    g.base, g.block_stride
                )));
            }
        }
        ctx.bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        for g in &groups {
            let end = (num_blocks as u64 - 1)
                .checked_mul(g.block_stride)
                .and_then(|last| last.checked_add(g.base))
                .and_then(|last| last.checked_add(piece_bytes as u64))
                .ok_or_else(|| {
                    bad(format!(
                        "pieces at {:#x} + b x {} overflow",
                        g.base, g.block_stride
                    ))
                })?;
            let (alloc, size) = allocation_of(g.base).map_err(|e| {
                bad(format!(
                    "{:#x} is not device memory of this GPU: {e:?}",
                    g.base
                ))
            })?;
            if end > alloc + size as u64 {
                return Err(bad(format!(
                    "{num_blocks} blocks at {:#x} + b x {} (to {end:#x}) run past their allocation {alloc:#x}+{size}",
                    g.base, g.block_stride
                )));
            }
        }
        Ok(EngineKv {
            ctx: Arc::clone(ctx),
            groups,
            piece_bytes,
            num_blocks,
        })
    }

    /// The piece groups, in the store's order of a block's pieces.
    pub fn groups(&self) -> &[PieceGroup] {
        &self.groups
    }
}

/// The device allocation holding `ptr` in the bound context: `(base, size)`.
fn allocation_of(ptr: u64) -> std::result::Result<(u64, usize), sys::CUresult> {
    let (mut base, mut size): (CUdeviceptr, usize) = (0, 0);
    // SAFETY: two out-parameters on the stack; the driver only reads `ptr` as a number
    // (an address that is no allocation of this context is an error, not an access).
    let r = unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr) };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok((base, size))
    } else {
        Err(r)
    }
}

impl DeviceBlocks for EngineKv {
    fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    fn pieces_per_block(&self) -> usize {
        self.groups.len()
    }
    fn piece_bytes(&self) -> usize {
        self.piece_bytes
    }
    fn piece_addr(&self, block: u32, piece: usize) -> Result<CUdeviceptr> {
        match self.groups.get(piece) {
            Some(g) if (block as usize) < self.num_blocks => {
                Ok(g.base + block as u64 * g.block_stride)
            }
            _ => Err(TierError::Gpu(format!(
                "block {block} piece {piece} is outside the engine's KV ({} blocks, {} pieces)",
                self.num_blocks,
                self.groups.len()
            ))),
        }
    }
}

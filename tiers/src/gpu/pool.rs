//! [`HbmPool`]: KV blocks in device memory.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, result};

use super::{DeviceBlocks, gpu_err};
use crate::{Result, TierError};

/// How an engine keeps KV in HBM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuLayout {
    /// Per layer one tensor `[num_blocks, 2, block_size, kv_heads, head_dim]` (vLLM,
    /// SGLang): one block's KV is `num_layers` pieces far apart.
    LayerSeparate,
    /// `[num_blocks, num_layers, 2, block_size, kv_heads, head_dim]`: a block is one
    /// contiguous run of bytes, already in the store's order.
    BlockContiguous,
}

impl GpuLayout {
    /// Its name in configurations and reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            GpuLayout::LayerSeparate => "layer-separate",
            GpuLayout::BlockContiguous => "block-contiguous",
        }
    }
}

/// The size of a block as the GPU path sees it: `num_layers` pieces of `layer_bytes`
/// (one layer's K then V for the block's tokens). In the store's block layout the
/// pieces follow each other in layer order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockGeometry {
    /// Layers (pieces) per block.
    pub num_layers: usize,
    /// `2 x block_size x kv_heads x head_dim x dtype size`.
    pub layer_bytes: usize,
}

impl BlockGeometry {
    /// From the model's shape.
    pub fn new(
        num_layers: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype_bytes: usize,
    ) -> BlockGeometry {
        BlockGeometry {
            num_layers,
            layer_bytes: 2 * block_size * kv_heads * head_dim * dtype_bytes,
        }
    }

    /// Bytes of a whole block.
    pub fn block_bytes(&self) -> usize {
        self.num_layers * self.layer_bytes
    }

    /// The kernels copy 16 bytes at a time.
    pub fn validate(&self) -> Result<()> {
        if self.num_layers == 0 || self.layer_bytes == 0 || !self.layer_bytes.is_multiple_of(16) {
            return Err(TierError::Gpu(format!(
                "block geometry {self:?}: layers and a layer size that is a positive multiple of 16 bytes are needed"
            )));
        }
        Ok(())
    }
}

/// Device memory holding `num_blocks` KV blocks in one [`GpuLayout`].
pub struct HbmPool {
    ctx: Arc<CudaContext>,
    layout: GpuLayout,
    geometry: BlockGeometry,
    num_blocks: usize,
    /// One allocation per layer (layer-separate) or one in all (block-contiguous).
    buffers: Vec<CUdeviceptr>,
}

// SAFETY: the pool owns plain device allocations; device pointers are integers, and
// every use binds the context first.
unsafe impl Send for HbmPool {}
// SAFETY: as above; the pool itself is never mutated after construction.
unsafe impl Sync for HbmPool {}

impl std::fmt::Debug for HbmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbmPool")
            .field("layout", &self.layout)
            .field("geometry", &self.geometry)
            .field("num_blocks", &self.num_blocks)
            .finish_non_exhaustive()
    }
}

impl HbmPool {
    /// Allocates `num_blocks` blocks of `geometry` on `ctx`'s device, in `layout`.
    pub fn new(
        ctx: &Arc<CudaContext>,
        layout: GpuLayout,
        geometry: BlockGeometry,
        num_blocks: usize,
    ) -> Result<HbmPool> {
        geometry.validate()?;
        if num_blocks == 0 {
            return Err(TierError::Gpu(
                "an HBM pool needs at least one block".into(),
            ));
        }
        ctx.bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let sizes = match layout {
            GpuLayout::LayerSeparate => {
                vec![num_blocks * geometry.layer_bytes; geometry.num_layers]
            }
            GpuLayout::BlockContiguous => vec![num_blocks * geometry.block_bytes()],
        };
        let mut pool = HbmPool {
            ctx: Arc::clone(ctx),
            layout,
            geometry,
            num_blocks,
            buffers: Vec::with_capacity(sizes.len()),
        };
        for bytes in sizes {
            // SAFETY: a plain device allocation in the bound context; freed in Drop.
            let ptr = unsafe { result::malloc_sync(bytes) }
                .map_err(gpu_err("allocating HBM for the KV pool"))?;
            pool.buffers.push(ptr);
        }
        Ok(pool)
    }

    /// How the blocks are laid out.
    pub fn layout(&self) -> GpuLayout {
        self.layout
    }
    /// The size of a block.
    pub fn geometry(&self) -> BlockGeometry {
        self.geometry
    }
    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// The CUDA context the memory belongs to.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Device address of layer `layer` of block `block`.
    pub fn piece_ptr(&self, block: u32, layer: usize) -> Result<CUdeviceptr> {
        let g = self.geometry;
        if block as usize >= self.num_blocks || layer >= g.num_layers {
            return Err(TierError::Gpu(format!(
                "block {block} layer {layer} is outside the pool ({} blocks, {} layers)",
                self.num_blocks, g.num_layers
            )));
        }
        Ok(match self.layout {
            GpuLayout::LayerSeparate => {
                self.buffers[layer] + (block as usize * g.layer_bytes) as u64
            }
            GpuLayout::BlockContiguous => {
                self.buffers[0] + (block as usize * g.block_bytes() + layer * g.layer_bytes) as u64
            }
        })
    }

    /// Device address of a whole block (block-contiguous only).
    pub fn block_ptr(&self, block: u32) -> Result<CUdeviceptr> {
        match self.layout {
            GpuLayout::BlockContiguous => self.piece_ptr(block, 0),
            GpuLayout::LayerSeparate => Err(TierError::Gpu(
                "a layer-separate pool has no contiguous blocks".into(),
            )),
        }
    }

    /// Copies `data` (one block in the store's layout) into block `block`,
    /// synchronously. For tests and set-up; the fast path is [`super::TransferEngine`].
    pub fn write_block(&self, block: u32, data: &[u8]) -> Result<()> {
        let g = self.geometry;
        if data.len() != g.block_bytes() {
            return Err(TierError::Gpu(format!(
                "a block is {} bytes, got {}",
                g.block_bytes(),
                data.len()
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        for (layer, piece) in data.chunks_exact(g.layer_bytes).enumerate() {
            let dst = self.piece_ptr(block, layer)?;
            // SAFETY: `dst` addresses `layer_bytes` bytes inside this pool's allocation
            // (checked by piece_ptr) and `piece` is exactly that long.
            unsafe { result::memcpy_htod_sync(dst, piece) }
                .map_err(gpu_err("copying a block to HBM"))?;
        }
        Ok(())
    }

    /// Reads block `block` in the store's layout, synchronously (tests and checks).
    pub fn read_block(&self, block: u32) -> Result<Vec<u8>> {
        let g = self.geometry;
        let mut out = vec![0u8; g.block_bytes()];
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        for (layer, piece) in out.chunks_exact_mut(g.layer_bytes).enumerate() {
            let src = self.piece_ptr(block, layer)?;
            // SAFETY: `src` addresses `layer_bytes` bytes inside this pool's allocation
            // and `piece` is exactly that long.
            unsafe { result::memcpy_dtoh_sync(piece, src) }
                .map_err(gpu_err("copying a block from HBM"))?;
        }
        Ok(out)
    }

    /// Sets every byte of block `block` to `value` (tests scribble with this).
    pub fn fill_block(&self, block: u32, value: u8) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        for layer in 0..self.geometry.num_layers {
            let dst = self.piece_ptr(block, layer)?;
            // SAFETY: `dst` addresses `layer_bytes` bytes inside this pool's allocation.
            unsafe { result::memset_d8_sync(dst, value, self.geometry.layer_bytes) }
                .map_err(gpu_err("filling a block"))?;
        }
        Ok(())
    }
}

impl DeviceBlocks for HbmPool {
    fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Layer-separate: one piece per layer; block-contiguous: the whole block.
    fn pieces_per_block(&self) -> usize {
        match self.layout {
            GpuLayout::LayerSeparate => self.geometry.num_layers,
            GpuLayout::BlockContiguous => 1,
        }
    }
    fn piece_bytes(&self) -> usize {
        match self.layout {
            GpuLayout::LayerSeparate => self.geometry.layer_bytes,
            GpuLayout::BlockContiguous => self.geometry.block_bytes(),
        }
    }
    fn piece_addr(&self, block: u32, piece: usize) -> Result<CUdeviceptr> {
        match self.layout {
            GpuLayout::LayerSeparate => self.piece_ptr(block, piece),
            GpuLayout::BlockContiguous if piece == 0 => self.block_ptr(block),
            GpuLayout::BlockContiguous => Err(TierError::Gpu(format!(
                "a block-contiguous block is one piece, not {piece}"
            ))),
        }
    }
}

impl Drop for HbmPool {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        for &ptr in &self.buffers {
            // SAFETY: allocated by malloc_sync in `new` and freed once, here.
            let _ = unsafe { result::free_sync(ptr) };
        }
    }
}

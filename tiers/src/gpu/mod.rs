//! The GPU end of the hierarchy (feature `cuda`): KV blocks in HBM and the path between
//! HBM and pinned host memory (G1 <-> G2), and through pinned bounce buffers to the disk
//! tier (G1 <-> G3).
//!
//! CUDA is reached through `cudarc` with dynamic loading: builds need no CUDA, and a
//! binary built with the feature runs on machines without a GPU (everything here then
//! reports [`TierError::Gpu`] instead of working, and the host tier stays unpinned).
//!
//! - [`DeviceBlocks`]: KV blocks in device memory as the transfer engine sees them —
//!   each block is pieces of one size at known addresses. Two implementations:
//!   [`HbmPool`], device memory tierkv allocates in the two layouts engines use
//!   ([`GpuLayout::LayerSeparate`], as vLLM and SGLang keep it, and
//!   [`GpuLayout::BlockContiguous`]), and [`EngineKv`], an engine's own KV cache tensors
//!   (vLLM's, from `register_kv_caches`) described by where each block's pieces lie.
//! - [`TransferEngine`]: offload (HBM -> pinned host) and onboard (pinned host -> HBM) of
//!   scattered blocks, converting between the GPU layout and the store's block layout
//!   with gather/scatter kernels compiled at run time by NVRTC into a staging buffer,
//!   plus large asynchronous copies; one stream per direction; completion is a CUDA event
//!   awaited from tokio.
//! - [`LayeredOffload`]: one step's save, layer by layer while the forward pass runs:
//!   each layer's pieces copied into staging as soon as the layer is written, whole
//!   blocks to host during the next step; the engine's stream waits (on the GPU) only
//!   until the pieces have been read.
//! - [`PinnedBuffer`]: page-locked host memory, by `cuMemHostAlloc` or by mmap + parallel
//!   first touch + `cuMemHostRegister`.
//! - [`disk_path`]: HBM -> disk and disk -> HBM through pinned bounce buffers, the
//!   transfer of one round overlapped with the disk I/O of the previous.

pub mod disk_path;
mod engine_kv;
mod kernels;
mod layered;
mod pinned;
mod pool;
mod stream;
mod transfer;
mod zero_copy;

use std::sync::{Arc, OnceLock};

pub use cudarc::driver::CudaContext;
use cudarc::driver::sys::CUdeviceptr;
pub use engine_kv::{EngineKv, PieceGroup};
pub use layered::{LayeredOffload, OffloadInFlight};
pub use pinned::{PinMethod, PinnedBuffer, register_host, touch_pages, unregister_host};
pub use pool::{BlockGeometry, GpuLayout, HbmPool};
pub use stream::{EngineEvent, EngineStream};
pub use transfer::{TransferConfig, TransferEngine, TransferStats};

use crate::{Result, TierError};

pub(crate) fn gpu_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> TierError + '_ {
    move |e| TierError::Gpu(format!("{what}: {e}"))
}

/// KV blocks in device memory as the [`TransferEngine`] reads and writes them: block
/// `b` is [`pieces_per_block`](Self::pieces_per_block) pieces of
/// [`piece_bytes`](Self::piece_bytes) each, and in the store's block layout they follow
/// one another in piece order. One piece per block means the block is one contiguous run
/// (copied directly); more are gathered and scattered by kernels, so every piece address
/// and size must be a multiple of 16 bytes.
pub trait DeviceBlocks: Send + Sync {
    /// The context the memory belongs to.
    fn context(&self) -> &Arc<CudaContext>;
    /// Blocks in the memory.
    fn num_blocks(&self) -> usize;
    /// Pieces of one block (its layers, or one for a contiguous block).
    fn pieces_per_block(&self) -> usize;
    /// Bytes of one piece.
    fn piece_bytes(&self) -> usize;
    /// Device address of piece `piece` of block `block`; an error outside the blocks.
    fn piece_addr(&self, block: u32, piece: usize) -> Result<CUdeviceptr>;
    /// Bytes of one block in the store's layout.
    fn block_bytes(&self) -> usize {
        self.pieces_per_block() * self.piece_bytes()
    }
}

/// Whether a CUDA driver and at least one GPU are present.
pub fn cuda_available() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    cudarc::driver::result::init().is_ok()
        && cudarc::driver::result::device::get_count().is_ok_and(|n| n > 0)
}

/// The primary context of GPU `ordinal` (the one the CUDA runtime, and so PyTorch, uses
/// for that device), shared by everything in this process.
pub fn device_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    static CTXS: std::sync::Mutex<Vec<(usize, Arc<CudaContext>)>> =
        std::sync::Mutex::new(Vec::new());
    if ordinal == 0 {
        return require_context();
    }
    if !cuda_available() {
        return Err(TierError::Gpu(format!(
            "GPU {ordinal}: no CUDA driver or no GPU on this machine (feature `cuda`)"
        )));
    }
    let mut ctxs = crate::sync::lock(&CTXS);
    if let Some((_, c)) = ctxs.iter().find(|(o, _)| *o == ordinal) {
        return Ok(Arc::clone(c));
    }
    let ctx = CudaContext::new(ordinal)
        .map_err(|e| TierError::Gpu(format!("CUDA context of GPU {ordinal}: {e}")))?;
    ctxs.push((ordinal, Arc::clone(&ctx)));
    Ok(ctx)
}

/// The primary context of GPU 0, shared by everything in this process; `None` without
/// a GPU.
pub fn primary_context() -> Option<Arc<CudaContext>> {
    static CTX: OnceLock<Option<Arc<CudaContext>>> = OnceLock::new();
    CTX.get_or_init(|| {
        if !cuda_available() {
            return None;
        }
        match CudaContext::new(0) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "CUDA context for GPU 0");
                None
            }
        }
    })
    .clone()
}

/// [`primary_context`], or an error saying there is no GPU.
pub fn require_context() -> Result<Arc<CudaContext>> {
    primary_context().ok_or_else(|| {
        TierError::Gpu("no CUDA driver or no GPU on this machine (feature `cuda`)".into())
    })
}

//! The GPU end of the hierarchy (feature `cuda`): KV blocks in HBM and the path between
//! HBM and pinned host memory (G1 <-> G2), and through pinned bounce buffers to the disk
//! tier (G1 <-> G3).
//!
//! CUDA is reached through `cudarc` with dynamic loading: builds need no CUDA, and a
//! binary built with the feature runs on machines without a GPU (everything here then
//! reports [`TierError::Gpu`] instead of working, and the host tier stays unpinned).
//!
//! - [`HbmPool`]: device memory for KV blocks in the two layouts engines use
//!   ([`GpuLayout::LayerSeparate`], as vLLM and SGLang keep it, and
//!   [`GpuLayout::BlockContiguous`]).
//! - [`TransferEngine`]: offload (HBM -> pinned host) and onboard (pinned host -> HBM) of
//!   scattered blocks, converting between the GPU layout and the store's block layout
//!   with gather/scatter kernels compiled at run time by NVRTC into a staging buffer,
//!   plus large asynchronous copies; one stream per direction; completion is a CUDA event
//!   awaited from tokio.
//! - [`PinnedBuffer`]: page-locked host memory, by `cuMemHostAlloc` or by mmap + parallel
//!   first touch + `cuMemHostRegister`.
//! - [`disk_path`]: HBM -> disk and disk -> HBM through pinned bounce buffers, the
//!   transfer of one round overlapped with the disk I/O of the previous.

pub mod disk_path;
mod kernels;
mod pinned;
mod pool;
mod transfer;

use std::sync::{Arc, OnceLock};

pub use cudarc::driver::CudaContext;
pub use pinned::{PinMethod, PinnedBuffer, register_host, touch_pages, unregister_host};
pub use pool::{BlockGeometry, GpuLayout, HbmPool};
pub use transfer::{TransferConfig, TransferEngine, TransferStats};

use crate::{Result, TierError};

pub(crate) fn gpu_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> TierError + '_ {
    move |e| TierError::Gpu(format!("{what}: {e}"))
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

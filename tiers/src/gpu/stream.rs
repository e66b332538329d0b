//! [`EngineStream`] and [`EngineEvent`]: how a transfer is ordered against the work an
//! engine queues on its own CUDA stream (the forward pass that writes blocks, or still
//! reads blocks about to be overwritten).

use std::sync::Arc;

use cudarc::driver::{CudaContext, sys};

use super::gpu_err;
use super::transfer::check;
use crate::Result;

/// A stream of the engine's (for PyTorch, `torch.cuda.current_stream().cuda_stream`),
/// so that a transfer is ordered after the work the engine queued on it.
#[derive(Clone, Copy, Debug)]
pub struct EngineStream(pub(super) sys::CUstream);

// SAFETY: a stream handle is an opaque driver object usable from any thread with its
// context bound.
unsafe impl Send for EngineStream {}
// SAFETY: as above; recording an event on it is thread-safe in the driver.
unsafe impl Sync for EngineStream {}

impl EngineStream {
    /// # Safety
    /// `raw` must be a live stream of the context the transfers use (0 is the legacy
    /// default stream) for as long as this value is used.
    pub unsafe fn from_raw(raw: usize) -> EngineStream {
        EngineStream(raw as sys::CUstream)
    }

    /// The legacy default stream (handle 0), valid in every context.
    pub fn default_stream() -> EngineStream {
        EngineStream(std::ptr::null_mut())
    }

    /// Marks the work queued on the stream so far: a transfer given the event starts
    /// after that work (the engine's forward pass that wrote the blocks, or that still
    /// reads blocks about to be overwritten). Call it in the engine's thread, in order
    /// with its launches.
    pub fn record(&self, ctx: &Arc<CudaContext>) -> Result<EngineEvent> {
        ctx.bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let event = EngineEvent::new()?;
        check(
            // SAFETY: `event` was just created in this context and `self.0` is a live stream
            // of it (from_raw's contract); on error `event` is destroyed by its Drop.
            unsafe { sys::cuEventRecord(event.0, self.0) },
            "recording an event on the engine's stream",
        )?;
        Ok(event)
    }

    /// Makes the work queued on the engine's stream from now on wait, on the GPU, until
    /// `event` has happened (the host does not wait).
    pub(super) fn wait_for(&self, event: &EngineEvent) -> Result<()> {
        // SAFETY: a live stream (from_raw's contract) and a live event of its context.
        check(
            unsafe { sys::cuStreamWaitEvent(self.0, event.0, 0) },
            "ordering the engine's stream after a transfer",
        )
    }
}

/// An event recorded on an [`EngineStream`] (see [`EngineStream::record`]).
#[derive(Debug)]
pub struct EngineEvent(pub(super) sys::CUevent);

// SAFETY: an event handle is an opaque driver object, usable from any thread.
unsafe impl Send for EngineEvent {}
// SAFETY: as above; waiting on it does not mutate it.
unsafe impl Sync for EngineEvent {}

impl EngineEvent {
    /// A new event in the context bound to this thread (not yet recorded).
    pub(super) fn new() -> Result<EngineEvent> {
        let mut event: sys::CUevent = std::ptr::null_mut();
        // SAFETY: an out-parameter on the stack; flags are a valid constant.
        let r = unsafe {
            sys::cuEventCreate(
                &mut event,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32,
            )
        };
        check(r, "creating an event")?;
        Ok(EngineEvent(event))
    }

    /// Records the event on `stream` (of the bound context).
    pub(super) fn record_on(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: a live event and a live stream of the bound context.
        check(
            unsafe { sys::cuEventRecord(self.0, stream) },
            "recording an event",
        )
    }
}

impl Drop for EngineEvent {
    fn drop(&mut self) {
        // SAFETY: created by cuEventCreate and destroyed once; the driver defers the
        // release until queued waits on it are done.
        let _ = unsafe { sys::cuEventDestroy_v2(self.0) };
    }
}

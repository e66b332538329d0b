//! [`LayeredOffload`]: one step's save of scattered blocks, layer by layer, overlapped
//! with the forward pass that writes them.
//!
//! The engine's attention layer `i` writes its K/V of the step's blocks; right after,
//! [`LayeredOffload::layer`] queues a copy of those pieces (HBM to HBM, a kernel on a
//! lane stream of the transfer engine, ordered after an event recorded on the engine's
//! stream) into the blocks' places in a staging buffer, while layer `i + 1` computes.
//! [`LayeredOffload::finish`] gathers any layer not yet copied, makes the engine's
//! stream wait — on the GPU, the host never waits — until every piece has been read
//! (after that the engine may overwrite the blocks), and queues the copies of whole
//! blocks from staging to host memory, which run on the copy engine during the next
//! step. [`OffloadInFlight::wait`] resolves when they have landed.
//!
//! Two lanes (stream, staging, piece table) take jobs in turn, so one step's copy to
//! host and the next step's gathers do not queue behind each other; a job holds its
//! lane until its copies have landed (or were waited for when it is dropped).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use cudarc::driver::{LaunchConfig, PushKernelArg, sys};
use tokio::sync::OwnedMutexGuard;

use super::kernels::{CHUNK_BYTES, THREADS};
use super::transfer::{Direction, FinishOnDrop, Lane, check, copy_runs};
use super::{DeviceBlocks, EngineEvent, EngineStream, TransferEngine, TransferStats, gpu_err};
use crate::{Result, TierError};

/// A layer-wise offload being built (see the module docs).
pub struct LayeredOffload {
    engine: Arc<TransferEngine>,
    lane: Option<OwnedMutexGuard<Lane>>,
    blocks: usize,
    block_bytes: usize,
    piece_bytes: usize,
    pieces_per_layer: usize,
    layers: usize,
    /// Layers whose copy into staging is queued.
    gathered: Vec<bool>,
    /// Work was queued on the lane's stream (it must complete before the host memory
    /// or the lane are released).
    queued: bool,
    started: Instant,
}

/// The copies to host of a finished [`LayeredOffload`], still running.
pub struct OffloadInFlight {
    job: LayeredOffload,
}

impl std::fmt::Debug for LayeredOffload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayeredOffload")
            .field("blocks", &self.blocks)
            .field("layers", &self.layers)
            .field("gathered", &self.gathered)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OffloadInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffloadInFlight")
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

impl TransferEngine {
    /// Starts a layer-wise offload of `blocks` of `kv`; layer `l` is pieces
    /// `l * pieces_per_layer .. (l + 1) * pieces_per_layer` of every block. Where the
    /// blocks land in host memory is only needed at [`LayeredOffload::finish`], after
    /// the forward pass has been queued. Waits for a free lane (the one of a job two
    /// steps back).
    ///
    /// # Safety
    /// `kv`'s memory must stay allocated until the returned job (or the
    /// [`OffloadInFlight`] it becomes) has been dropped.
    pub async unsafe fn begin_layered_offload(
        self: &Arc<Self>,
        kv: &dyn DeviceBlocks,
        blocks: &[u32],
        pieces_per_layer: usize,
    ) -> Result<LayeredOffload> {
        let (pieces, piece_bytes, block_bytes) =
            (kv.pieces_per_block(), kv.piece_bytes(), kv.block_bytes());
        let bad = |why: String| Err(TierError::Gpu(format!("layer-wise offload: {why}")));
        if !Arc::ptr_eq(kv.context(), self.context()) {
            return bad("the blocks belong to another GPU than this transfer engine's".into());
        }
        if pieces < 2 || pieces_per_layer == 0 || !pieces.is_multiple_of(pieces_per_layer) {
            return bad(format!(
                "{pieces} pieces per block do not split into layers of {pieces_per_layer}"
            ));
        }
        if blocks.is_empty() {
            return bad("no blocks".into());
        }
        let staging = blocks.len() * block_bytes;
        if staging > self.config.layered_staging_bytes {
            return bad(format!(
                "{} blocks of {block_bytes} bytes exceed its staging of {} bytes",
                blocks.len(),
                self.config.layered_staging_bytes
            ));
        }
        let i = self.next_layered.fetch_add(1, Ordering::Relaxed) % self.layered.len();
        let mut lane = Arc::clone(&self.layered[i]).lock_owned().await;
        self.context()
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        // The lane is idle: its previous job completed before releasing it.
        lane.staging.ensure(staging)?;
        let layers = pieces / pieces_per_layer;
        let n = blocks.len() * pieces;
        // Pairs (source, destination), layer-major, so a layer's pieces are one run.
        let staging_at = lane.staging.ptr;
        let table = lane.host_table.ensure(2 * n)?;
        let mut e = 0;
        for l in 0..layers {
            for (k, &b) in blocks.iter().enumerate() {
                for j in l * pieces_per_layer..(l + 1) * pieces_per_layer {
                    table[e] = kv.piece_addr(b, j)?;
                    table[e + 1] = staging_at + (k * block_bytes + j * piece_bytes) as u64;
                    e += 2;
                }
            }
        }
        let table_ptr = table.as_ptr();
        lane.table.ensure(2 * n * 8)?;
        check(
            // SAFETY: both tables hold `2n` u64s; the lane is idle and its host table is
            // not written again until this job has completed (it holds the lane).
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    lane.table.ptr,
                    table_ptr.cast(),
                    2 * n * 8,
                    lane.stream.cu_stream(),
                )
            },
            "uploading the piece table",
        )?;
        Ok(LayeredOffload {
            engine: Arc::clone(self),
            lane: Some(lane),
            blocks: blocks.len(),
            block_bytes,
            piece_bytes,
            pieces_per_layer,
            layers,
            gathered: vec![false; layers],
            queued: true,
            started: Instant::now(),
        })
    }
}

impl LayeredOffload {
    /// Layers of a block.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Queues the copy of layer `layer` of every block into staging, after `after`
    /// (recorded on the engine's stream once the layer's K/V are written). Returns
    /// without waiting. A layer already queued is not copied twice.
    pub fn layer(&mut self, layer: usize, after: &EngineEvent) -> Result<()> {
        if layer >= self.layers {
            return Err(TierError::Gpu(format!(
                "layer-wise offload: layer {layer} of {}",
                self.layers
            )));
        }
        if self.gathered[layer] {
            return Ok(());
        }
        self.engine
            .context()
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let lane = self.lane()?;
        let stream = lane.stream.cu_stream();
        check(
            // SAFETY: a live lane stream and a live recorded event of this context.
            unsafe { sys::cuStreamWaitEvent(stream, after.0, 0) },
            "ordering after the engine's stream",
        )?;
        let per_layer = self.blocks * self.pieces_per_layer;
        let table_at = lane.table.ptr + (layer * per_layer * 2 * 8) as u64;
        let cfg = LaunchConfig {
            grid_dim: (
                per_layer as u32,
                (self.piece_bytes as u64).div_ceil(CHUNK_BYTES) as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (piece_bytes, chunk_bytes) = (self.piece_bytes as u64, CHUNK_BYTES);
        let mut launch = lane.stream.launch_builder(&self.engine.kernels.copy_pairs);
        launch.arg(&table_at).arg(&piece_bytes).arg(&chunk_bytes);
        // SAFETY: the kernel reads `per_layer` pairs of this layer from the uploaded
        // table (sources inside the blocks, checked by piece_addr; destinations inside
        // staging, which holds every block); with more than one piece per block every
        // address and piece size is a multiple of 16 bytes (validated by the pool or
        // EngineKv).
        unsafe { launch.launch(cfg) }.map_err(gpu_err("launching a layer copy"))?;
        self.gathered[layer] = true;
        Ok(())
    }

    /// Queues every layer not yet copied (after `after`), makes `engine`'s stream wait
    /// on the GPU until all pieces have been read, and queues the copies of whole
    /// blocks to `host` (one address of one block in the store's layout per block, in
    /// `begin`'s order). The engine may overwrite the blocks in work it queues after
    /// this call; `host` holds the blocks once the result resolves.
    ///
    /// # Safety
    /// Every `host` address must point to `block_bytes` bytes that nothing else reads
    /// or writes until the result (or, on error, this call) has been dropped.
    pub unsafe fn finish(
        mut self,
        after: &EngineEvent,
        engine: &EngineStream,
        host: &[usize],
    ) -> Result<OffloadInFlight> {
        if host.len() != self.blocks {
            return Err(TierError::Gpu(format!(
                "layer-wise offload: {} blocks and {} host buffers",
                self.blocks,
                host.len()
            )));
        }
        for l in 0..self.layers {
            self.layer(l, after)?;
        }
        let gathered = EngineEvent::new()?;
        let lane = self.lane()?;
        let stream = lane.stream.cu_stream();
        gathered.record_on(stream)?;
        engine.wait_for(&gathered)?;
        let staging = lane.staging.ptr;
        let pairs: Vec<(usize, sys::CUdeviceptr)> = host
            .iter()
            .enumerate()
            .map(|(k, &h)| (h, staging + (k * self.block_bytes) as u64))
            .collect();
        // SAFETY: staging holds every block; each host address is one block the caller
        // keeps untouched until the result is dropped (this function's contract), which
        // is after the stream completed (wait, or the synchronisation in Drop).
        unsafe { copy_runs(&Direction::Offload, &pairs, self.block_bytes, stream) }?;
        Ok(OffloadInFlight { job: self })
    }

    fn lane(&self) -> Result<&Lane> {
        self.lane
            .as_deref()
            .ok_or_else(|| TierError::Gpu("layer-wise offload: already released".into()))
    }
}

impl Drop for LayeredOffload {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take()
            && self.queued
        {
            let _ = self.engine.context().bind_to_thread();
            // No copy may land in host memory the caller frees after this, and the
            // next job must find the lane idle.
            drop(FinishOnDrop(Some(&lane.stream)));
        }
    }
}

impl OffloadInFlight {
    /// Resolves when the blocks are in host memory; the lane is free for a new job.
    pub async fn wait(mut self) -> Result<TransferStats> {
        if let Some(lane) = self.job.lane.as_ref() {
            let stream = Arc::clone(&lane.stream);
            self.job.engine.completion(&stream).await?;
        }
        self.job.queued = false;
        Ok(TransferStats {
            blocks: self.job.blocks,
            bytes: self.job.blocks * self.job.block_bytes,
            elapsed: self.job.started.elapsed(),
            zero_copy: false,
        })
    }
}

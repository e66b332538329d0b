//! [`TransferEngine`]: offload (HBM -> pinned host) and onboard (pinned host -> HBM) of
//! scattered KV blocks.
//!
//! The host side always holds blocks in the store's layout (layer after layer, K then
//! V). A block-contiguous pool already has that layout: each block is one large
//! asynchronous copy. A layer-separate pool keeps a block as `num_layers` pieces far
//! apart: the gather kernel packs the pieces of up to a staging buffer's worth of blocks
//! into the staging buffer (HBM to HBM, ~20x faster than PCIe), then one large copy per
//! block crosses PCIe; onboarding does the reverse with the scatter kernel. Each
//! direction has its own stream (and staging buffer), so offloads and onboards overlap;
//! within a direction requests queue. Completion is a CUDA event awaited from tokio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaStream, LaunchConfig, PushKernelArg, result, sys};
use tokio::sync::Mutex;

use super::kernels::{CHUNK_BYTES, Kernels, THREADS};
use super::{GpuLayout, HbmPool, gpu_err};
use crate::{Result, TierError};

/// Knobs of a [`TransferEngine`].
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Device staging memory per direction (layer-separate pools); raised to one block
    /// if smaller. Default 256 MiB.
    pub staging_bytes: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            staging_bytes: 256 << 20,
        }
    }
}

/// What one transfer moved and how long it took, from submission to completion.
#[derive(Clone, Copy, Debug)]
pub struct TransferStats {
    pub blocks: usize,
    pub bytes: usize,
    pub elapsed: Duration,
}

impl TransferStats {
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// A device buffer that grows on demand.
struct DeviceBuf {
    ptr: CUdeviceptr,
    len: usize,
}

impl DeviceBuf {
    fn ensure(&mut self, len: usize) -> Result<()> {
        if self.len >= len {
            return Ok(());
        }
        if self.len > 0 {
            // SAFETY: allocated below by malloc_sync; every use of it was stream-ordered
            // before this point and the lane's stream was synchronised by the caller.
            let _ = unsafe { result::free_sync(self.ptr) };
            self.len = 0;
        }
        // SAFETY: a plain device allocation in the bound context.
        self.ptr = unsafe { result::malloc_sync(len) }.map_err(gpu_err("allocating staging"))?;
        self.len = len;
        Ok(())
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated by malloc_sync, freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        }
    }
}

/// One direction: its stream, staging buffer and piece-address table.
struct Lane {
    stream: Arc<CudaStream>,
    staging: DeviceBuf,
    table: DeviceBuf,
}

/// Synchronises a stream if a transfer is abandoned before it completed, so that no
/// copy lands in host memory whose borrow has ended.
struct FinishOnDrop<'a>(Option<&'a CudaStream>);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            let _ = s.synchronize();
        }
    }
}

pub struct TransferEngine {
    ctx: Arc<CudaContext>,
    kernels: Kernels,
    config: TransferConfig,
    offload: Mutex<Lane>,
    onboard: Mutex<Lane>,
}

// SAFETY: the lanes' device pointers are integers guarded by the mutexes; CUDA objects
// are used with their context bound.
unsafe impl Send for TransferEngine {}
// SAFETY: as above.
unsafe impl Sync for TransferEngine {}

enum Direction {
    Offload,
    Onboard,
}

impl TransferEngine {
    /// Compiles the kernels (NVRTC) and creates one stream per direction.
    pub fn new(ctx: &Arc<CudaContext>, config: TransferConfig) -> Result<TransferEngine> {
        let kernels = Kernels::compile(ctx)?;
        let lane = || -> Result<Mutex<Lane>> {
            Ok(Mutex::new(Lane {
                stream: ctx.new_stream().map_err(gpu_err("creating a stream"))?,
                staging: DeviceBuf { ptr: 0, len: 0 },
                table: DeviceBuf { ptr: 0, len: 0 },
            }))
        };
        Ok(TransferEngine {
            ctx: Arc::clone(ctx),
            kernels,
            config,
            offload: lane()?,
            onboard: lane()?,
        })
    }

    /// Copies blocks `blocks` of `pool` into `dst` (one slice of one block each, in the
    /// store's layout). `dst` should be pinned memory: pageable memory works, slowly.
    pub async fn offload(
        &self,
        pool: &HbmPool,
        blocks: &[u32],
        dst: &mut [&mut [u8]],
    ) -> Result<TransferStats> {
        let ptrs: Vec<usize> = dst.iter_mut().map(|d| d.as_mut_ptr() as usize).collect();
        let lens: Vec<usize> = dst.iter().map(|d| d.len()).collect();
        // `dst` stays mutably borrowed until the copies completed (or were waited for).
        self.run(Direction::Offload, pool, blocks, &ptrs, &lens)
            .await
    }

    /// Copies `src` (one block each, in the store's layout) into blocks `blocks` of
    /// `pool`.
    pub async fn onboard(
        &self,
        pool: &HbmPool,
        blocks: &[u32],
        src: &[&[u8]],
    ) -> Result<TransferStats> {
        let ptrs: Vec<usize> = src.iter().map(|s| s.as_ptr() as usize).collect();
        let lens: Vec<usize> = src.iter().map(|s| s.len()).collect();
        self.run(Direction::Onboard, pool, blocks, &ptrs, &lens)
            .await
    }

    async fn run(
        &self,
        dir: Direction,
        pool: &HbmPool,
        blocks: &[u32],
        host: &[usize],
        lens: &[usize],
    ) -> Result<TransferStats> {
        let g = pool.geometry();
        let block_bytes = g.block_bytes();
        if host.len() != blocks.len() {
            return Err(TierError::Gpu(format!(
                "{} blocks but {} host buffers",
                blocks.len(),
                host.len()
            )));
        }
        if let Some(bad) = lens.iter().find(|&&l| l != block_bytes) {
            return Err(TierError::Gpu(format!(
                "a host buffer of {bad} bytes for blocks of {block_bytes}"
            )));
        }
        if let Some(b) = blocks.iter().find(|&&b| b as usize >= pool.num_blocks()) {
            return Err(TierError::Gpu(format!(
                "block {b} is outside the pool ({} blocks)",
                pool.num_blocks()
            )));
        }
        let mut lane = match dir {
            Direction::Offload => self.offload.lock().await,
            Direction::Onboard => self.onboard.lock().await,
        };
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let started = Instant::now();
        let stream = Arc::clone(&lane.stream);
        let cu_stream = stream.cu_stream();
        let guard = FinishOnDrop(Some(&stream));
        match pool.layout() {
            GpuLayout::BlockContiguous => {
                let mut pairs = Vec::with_capacity(blocks.len());
                for (&b, &h) in blocks.iter().zip(host) {
                    pairs.push((h, pool.block_ptr(b)?));
                }
                // SAFETY: every device address is one block inside the pool; every host
                // address is a buffer of exactly one block that the caller keeps
                // borrowed until this function returns, which is after the stream
                // completed (or `guard` synchronised it).
                unsafe { copy_runs(&dir, &pairs, block_bytes, cu_stream) }?;
            }
            GpuLayout::LayerSeparate => {
                let per_round = (self.config.staging_bytes / block_bytes).max(1);
                lane.staging
                    .ensure(per_round.min(blocks.len()).max(1) * block_bytes)?;
                // Every piece's device address, in store order, uploaded once.
                let mut table = Vec::with_capacity(blocks.len() * g.num_layers);
                for &b in blocks {
                    for layer in 0..g.num_layers {
                        table.push(pool.piece_ptr(b, layer)?);
                    }
                }
                // The previous transfer on this lane may still read the table.
                stream.synchronize().map_err(gpu_err("stream"))?;
                lane.table.ensure(table.len() * 8)?;
                // SAFETY: the table buffer holds `table.len() * 8` bytes and no queued
                // work reads it (synchronised above).
                unsafe { result::memcpy_htod_sync(lane.table.ptr, &table) }
                    .map_err(gpu_err("uploading the piece table"))?;
                let staging = lane.staging.ptr;
                for (round, chunk) in blocks.chunks(per_round).enumerate() {
                    let first = round * per_round;
                    let table_at = lane.table.ptr + (first * g.num_layers * 8) as u64;
                    let pieces = (chunk.len() * g.num_layers) as u32;
                    let cfg = LaunchConfig {
                        grid_dim: (
                            pieces,
                            (g.layer_bytes as u64).div_ceil(CHUNK_BYTES) as u32,
                            1,
                        ),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    let (piece_bytes, chunk_bytes) = (g.layer_bytes as u64, CHUNK_BYTES);
                    let pairs: Vec<(usize, CUdeviceptr)> = host[first..first + chunk.len()]
                        .iter()
                        .enumerate()
                        .map(|(i, &h)| (h, staging + (i * block_bytes) as u64))
                        .collect();
                    if let Direction::Onboard = dir {
                        // SAFETY: staging holds `per_round` blocks; each host address is
                        // one borrowed block (see the contiguous case).
                        unsafe { copy_runs(&dir, &pairs, block_bytes, cu_stream) }?;
                    }
                    let f = match dir {
                        Direction::Offload => &self.kernels.gather,
                        Direction::Onboard => &self.kernels.scatter,
                    };
                    let mut launch = stream.launch_builder(f);
                    launch
                        .arg(&table_at)
                        .arg(&staging)
                        .arg(&piece_bytes)
                        .arg(&chunk_bytes);
                    // SAFETY: the kernel reads `pieces` addresses from the table (all
                    // inside the pool, checked by piece_ptr) and `pieces * piece_bytes`
                    // bytes of staging (it holds `per_round` blocks); piece_bytes is a
                    // multiple of 16 and every address 16-byte aligned (validated).
                    unsafe { launch.launch(cfg) }
                        .map_err(gpu_err("launching a transfer kernel"))?;
                    if let Direction::Offload = dir {
                        // SAFETY: as for the onboard copies.
                        unsafe { copy_runs(&dir, &pairs, block_bytes, cu_stream) }?;
                    }
                }
            }
        }
        self.completion(&stream).await?;
        std::mem::forget(guard);
        Ok(TransferStats {
            blocks: blocks.len(),
            bytes: blocks.len() * block_bytes,
            elapsed: started.elapsed(),
        })
    }

    /// One contiguous copy of `bytes` between `dev` and pinned `host` on the offload
    /// (`to_host`) or onboard lane: the ceiling a scattered transfer is measured
    /// against.
    ///
    /// # Safety
    /// `dev` must address `bytes` bytes of device memory and `host` `bytes` bytes of
    /// host memory that nothing else touches until this returns.
    pub async unsafe fn contiguous_copy(
        &self,
        dev: CUdeviceptr,
        host: *mut u8,
        bytes: usize,
        to_host: bool,
    ) -> Result<Duration> {
        let lane = if to_host {
            self.offload.lock().await
        } else {
            self.onboard.lock().await
        };
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let started = Instant::now();
        let s = lane.stream.cu_stream();
        // SAFETY: guaranteed by the caller.
        let r = unsafe {
            if to_host {
                sys::cuMemcpyDtoHAsync_v2(host.cast(), dev, bytes, s)
            } else {
                sys::cuMemcpyHtoDAsync_v2(dev, host.cast_const().cast(), bytes, s)
            }
        };
        check(r, "contiguous copy")?;
        self.completion(&lane.stream).await?;
        Ok(started.elapsed())
    }

    /// The naive way, for comparison only: one asynchronous copy per piece (layer of a
    /// block) straight from the pool into `dst`. Small pieces make this slow.
    pub async fn offload_per_piece(
        &self,
        pool: &HbmPool,
        blocks: &[u32],
        dst: &mut [&mut [u8]],
    ) -> Result<TransferStats> {
        let g = pool.geometry();
        if dst.len() != blocks.len() || dst.iter().any(|d| d.len() != g.block_bytes()) {
            return Err(TierError::Gpu("one host block per block is needed".into()));
        }
        let lane = self.offload.lock().await;
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let started = Instant::now();
        let guard = FinishOnDrop(Some(&lane.stream));
        for (&b, d) in blocks.iter().zip(dst.iter_mut()) {
            for (layer, piece) in d.chunks_exact_mut(g.layer_bytes).enumerate() {
                let src = pool.piece_ptr(b, layer)?;
                // SAFETY: `src` is one piece inside the pool and `piece` is exactly as
                // long, borrowed until the stream completed (or `guard` synchronised).
                let r = unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        piece.as_mut_ptr().cast(),
                        src,
                        g.layer_bytes,
                        lane.stream.cu_stream(),
                    )
                };
                check(r, "per-piece copy")?;
            }
        }
        self.completion(&lane.stream).await?;
        std::mem::forget(guard);
        Ok(TransferStats {
            blocks: blocks.len(),
            bytes: blocks.len() * g.block_bytes(),
            elapsed: started.elapsed(),
        })
    }

    /// Resolves when the work queued on `stream` so far has completed: a CUDA event,
    /// waited for on a blocking thread so that no runtime worker stalls.
    async fn completion(&self, stream: &CudaStream) -> Result<()> {
        let event = stream
            .record_event(None)
            .map_err(gpu_err("recording an event"))?;
        let ctx = Arc::clone(&self.ctx);
        tokio::task::spawn_blocking(move || {
            ctx.bind_to_thread()?;
            event.synchronize()
        })
        .await
        .map_err(|e| TierError::Gpu(format!("waiting for a transfer: {e}")))?
        .map_err(gpu_err("transfer"))
    }
}

/// Copies `len` bytes between each `(host, device)` pair in `dir`'s direction, merging
/// pairs whose host and device ranges both continue the previous one into one copy
/// (large copies are what reach full PCIe speed).
///
/// # Safety
/// Every pair must address `len` bytes of host and device memory that stay valid, and
/// untouched by anything else, until the stream has executed the copies.
unsafe fn copy_runs(
    dir: &Direction,
    pairs: &[(usize, CUdeviceptr)],
    len: usize,
    stream: sys::CUstream,
) -> Result<()> {
    let mut i = 0;
    while i < pairs.len() {
        let (h, d) = pairs[i];
        let mut n = 1;
        while i + n < pairs.len()
            && pairs[i + n].0 == h + n * len
            && pairs[i + n].1 == d + (n * len) as u64
        {
            n += 1;
        }
        // SAFETY: the caller guarantees both ranges; a merged run is the union of
        // adjacent valid ranges.
        let r = unsafe {
            match dir {
                Direction::Offload => sys::cuMemcpyDtoHAsync_v2(h as *mut _, d, n * len, stream),
                Direction::Onboard => sys::cuMemcpyHtoDAsync_v2(d, h as *const _, n * len, stream),
            }
        };
        check(r, "copy between HBM and host")?;
        i += n;
    }
    Ok(())
}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(TierError::Gpu(format!("{what}: {r:?}")))
    }
}

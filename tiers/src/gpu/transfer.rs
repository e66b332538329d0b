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
use super::{DeviceBlocks, EngineEvent, gpu_err, zero_copy};
use crate::{Result, TierError};

/// How long a transfer's completion is polled before the wait moves to a blocking
/// thread.
const SPIN_BEFORE_BLOCKING: Duration = Duration::from_micros(200);

/// Knobs of a [`TransferEngine`].
#[derive(Clone, Debug)]
pub struct TransferConfig {
    /// Device staging memory per direction (layer-separate pools); raised to one block
    /// if smaller. Default 256 MiB.
    pub staging_bytes: usize,
    /// Device staging memory per layer-wise offload lane (two lanes): the most one
    /// step's layer-wise save may hold. Default 512 MiB.
    pub layered_staging_bytes: usize,
    /// Transfers of blocks in more than one piece (layer-separate) up to this many bytes
    /// in all move in one kernel straight between HBM and mapped pinned host memory, no
    /// staging; larger ones, or host memory that is not pinned, are staged. 0 stages
    /// everything. Default 8 MiB: on the H200 the kernel beat staging by 3-16% for
    /// single 2-4 MiB blocks, tied or lost slightly at 16-32 MiB, lost above; on a tie staging wins,
    /// since it leaves the SMs to the engine for all but the HBM-to-HBM gather.
    pub zero_copy_bytes: usize,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            staging_bytes: 256 << 20,
            layered_staging_bytes: 512 << 20,
            zero_copy_bytes: 8 << 20,
        }
    }
}

/// What one transfer moved and how long it took, from submission to completion.
#[derive(Clone, Copy, Debug)]
pub struct TransferStats {
    /// Blocks moved.
    pub blocks: usize,
    /// Bytes moved.
    pub bytes: usize,
    /// From submission to completion.
    pub elapsed: Duration,
    /// Whether one kernel moved the bytes straight between HBM and mapped host memory
    /// (small transfers, see [`TransferConfig::zero_copy_bytes`]) rather than staging.
    pub zero_copy: bool,
}

impl TransferStats {
    /// Throughput in GB/s (10^9 bytes per second).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// A device buffer that grows on demand.
pub(super) struct DeviceBuf {
    pub(super) ptr: CUdeviceptr,
    len: usize,
}

impl DeviceBuf {
    pub(super) fn ensure(&mut self, len: usize) -> Result<()> {
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

/// Pinned host memory for the piece table, so that its upload is one asynchronous copy
/// on the lane's stream (no host-side wait on the lane or on the engine's stream).
pub(super) struct HostTable {
    ptr: *mut u64,
    cap: usize,
    /// The table's address for kernels (it is mapped: the zero-copy kernel reads it
    /// across PCIe instead of waiting for an upload).
    device: CUdeviceptr,
}

// SAFETY: the table is pinned memory this value owns alone; it is written only through
// `&mut self` (behind its lane's mutex) and read by the GPU in stream order.
unsafe impl Send for HostTable {}
// SAFETY: as above; a shared reference gives no access to the memory.
unsafe impl Sync for HostTable {}

impl HostTable {
    /// Room for `n` addresses. Only called at the start of a transfer, when no queued
    /// work reads the table (every transfer completes, or is synchronised, before it
    /// releases its lane).
    pub(super) fn ensure(&mut self, n: usize) -> Result<&mut [u64]> {
        if self.cap < n {
            if self.cap > 0 {
                // SAFETY: allocated below by malloc_host; nothing queued reads it.
                let _ = unsafe { result::free_host(self.ptr.cast()) };
                self.cap = 0;
                self.device = 0;
            }
            let cap = n.next_power_of_two().max(512);
            // SAFETY: a plain pinned allocation in the bound context, mapped into the
            // device's address space.
            let ptr = unsafe { result::malloc_host(cap * 8, sys::CU_MEMHOSTALLOC_DEVICEMAP) }
                .map_err(gpu_err("allocating the pinned piece table"))?;
            self.ptr = ptr.cast();
            self.cap = cap;
            let mut device: CUdeviceptr = 0;
            // SAFETY: an out-parameter on the stack and the mapped allocation just made.
            let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, ptr, 0) };
            check(r, "mapping the pinned piece table")?;
            self.device = device;
        }
        // SAFETY: `ptr` holds `cap >= n` u64s, owned by this lane (behind its mutex).
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr, n) })
    }
}

impl HostTable {
    pub(super) fn empty() -> HostTable {
        HostTable {
            ptr: std::ptr::null_mut(),
            cap: 0,
            device: 0,
        }
    }

    /// The table's device address (valid after [`ensure`](Self::ensure)).
    pub(super) fn device_ptr(&self) -> CUdeviceptr {
        self.device
    }
}

impl Drop for HostTable {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: allocated by malloc_host, freed once.
            let _ = unsafe { result::free_host(self.ptr.cast()) };
        }
    }
}

/// One direction: its stream, staging buffer and piece-address table (on the device,
/// and its pinned host copy).
pub(super) struct Lane {
    pub(super) stream: Arc<CudaStream>,
    pub(super) staging: DeviceBuf,
    pub(super) table: DeviceBuf,
    pub(super) host_table: HostTable,
}

/// Synchronises a stream if a transfer is abandoned before it completed, so that no
/// copy lands in host memory whose borrow has ended.
pub(super) struct FinishOnDrop<'a>(pub(super) Option<&'a CudaStream>);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            let _ = s.synchronize();
        }
    }
}

/// Moves KV blocks between HBM and pinned host memory on streams of its own: gathers
/// scattered blocks into staging with a kernel and copies them in one DMA (and the
/// reverse), or, for small transfers, one kernel over mapped host memory.
pub struct TransferEngine {
    ctx: Arc<CudaContext>,
    pub(super) kernels: Kernels,
    pub(super) config: TransferConfig,
    offload: Mutex<Lane>,
    onboard: Mutex<Lane>,
    /// Two lanes for layer-wise offloads (see [`super::LayeredOffload`]): one job's
    /// copy to host can run while the next step's layers are gathered on the other.
    pub(super) layered: [Arc<Mutex<Lane>>; 2],
    pub(super) next_layered: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for TransferEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

// SAFETY: the lanes' device pointers are integers and their pinned tables are owned
// memory, all guarded by the mutexes; CUDA objects
// are used with their context bound.
unsafe impl Send for TransferEngine {}
// SAFETY: as above.
unsafe impl Sync for TransferEngine {}

pub(super) enum Direction {
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
                host_table: HostTable::empty(),
            }))
        };
        Ok(TransferEngine {
            ctx: Arc::clone(ctx),
            kernels,
            config,
            offload: lane()?,
            onboard: lane()?,
            layered: [Arc::new(lane()?), Arc::new(lane()?)],
            next_layered: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The context this engine's streams and kernels belong to.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Copies blocks `blocks` of `pool` into `dst` (one slice of one block each, in the
    /// store's layout). `dst` should be pinned memory: pageable memory works, slowly.
    pub async fn offload(
        &self,
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        dst: &mut [&mut [u8]],
    ) -> Result<TransferStats> {
        self.offload_after(pool, blocks, dst, None).await
    }

    /// [`offload`](Self::offload), started on the GPU only after the work `after`
    /// marks (the forward pass that wrote the blocks).
    pub async fn offload_after(
        &self,
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        dst: &mut [&mut [u8]],
        after: Option<&EngineEvent>,
    ) -> Result<TransferStats> {
        let ptrs: Vec<usize> = dst.iter_mut().map(|d| d.as_mut_ptr() as usize).collect();
        let lens: Vec<usize> = dst.iter().map(|d| d.len()).collect();
        // `dst` stays mutably borrowed until the copies completed (or were waited for).
        self.run(Direction::Offload, pool, blocks, &ptrs, &lens, after)
            .await
    }

    /// Copies `src` (one block each, in the store's layout) into blocks `blocks` of
    /// `pool`.
    pub async fn onboard(
        &self,
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        src: &[&[u8]],
    ) -> Result<TransferStats> {
        self.onboard_after(pool, blocks, src, None).await
    }

    /// [`onboard`](Self::onboard), started on the GPU only after the work `after`
    /// marks (kernels that may still read the blocks being overwritten).
    pub async fn onboard_after(
        &self,
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        src: &[&[u8]],
        after: Option<&EngineEvent>,
    ) -> Result<TransferStats> {
        let ptrs: Vec<usize> = src.iter().map(|s| s.as_ptr() as usize).collect();
        let lens: Vec<usize> = src.iter().map(|s| s.len()).collect();
        self.run(Direction::Onboard, pool, blocks, &ptrs, &lens, after)
            .await
    }

    async fn run(
        &self,
        dir: Direction,
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        host: &[usize],
        lens: &[usize],
        after: Option<&EngineEvent>,
    ) -> Result<TransferStats> {
        if !Arc::ptr_eq(pool.context(), &self.ctx) {
            return Err(TierError::Gpu(
                "the blocks belong to another GPU than this transfer engine's".into(),
            ));
        }
        let (pieces_per_block, piece_bytes) = (pool.pieces_per_block(), pool.piece_bytes());
        let block_bytes = pool.block_bytes();
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
        if let Some(event) = after {
            check(
                // SAFETY: a live lane stream and a live recorded event of this context.
                unsafe { sys::cuStreamWaitEvent(cu_stream, event.0, 0) },
                "ordering after the engine's stream",
            )?;
        }
        let total = blocks.len() * block_bytes;
        let zero_copy = if pieces_per_block > 1 && total <= self.config.zero_copy_bytes {
            zero_copy::mapped(host, block_bytes)
        } else {
            None
        };
        if let Some(mapped) = &zero_copy {
            // SAFETY: the lane is idle (taken above, every transfer completes before it
            // gives the lane back); every mapped address is one host block the caller
            // keeps borrowed until this function returns, which is after the stream
            // completed (or `guard` synchronised it).
            unsafe { zero_copy::queue(&self.kernels, &mut lane, &dir, pool, blocks, mapped) }?;
            self.completion(&stream).await?;
            std::mem::forget(guard);
            return Ok(TransferStats {
                blocks: blocks.len(),
                bytes: total,
                elapsed: started.elapsed(),
                zero_copy: true,
            });
        }
        match pieces_per_block {
            1 => {
                let mut pairs = Vec::with_capacity(blocks.len());
                for (&b, &h) in blocks.iter().zip(host) {
                    pairs.push((h, pool.piece_addr(b, 0)?));
                }
                // SAFETY: every device address is one block inside the pool; every host
                // address is a buffer of exactly one block that the caller keeps
                // borrowed until this function returns, which is after the stream
                // completed (or `guard` synchronised it).
                unsafe { copy_runs(&dir, &pairs, block_bytes, cu_stream) }?;
            }
            _ => {
                let per_round = (self.config.staging_bytes / block_bytes).max(1);
                lane.staging
                    .ensure(per_round.min(blocks.len()).max(1) * block_bytes)?;
                // Every piece's device address, in store order, uploaded once by an
                // asynchronous copy on the lane's stream: ordered after the wait for
                // the engine's event, with no host-side wait.
                let n = blocks.len() * pieces_per_block;
                let host_table = lane.host_table.ensure(n)?;
                let mut i = 0;
                for &b in blocks {
                    for piece in 0..pieces_per_block {
                        host_table[i] = pool.piece_addr(b, piece)?;
                        i += 1;
                    }
                }
                let host_table = host_table.as_ptr();
                lane.table.ensure(n * 8)?;
                check(
                    // SAFETY: both tables hold `n * 8` bytes; no queued work touches them
                    // (the lane is idle when a transfer takes it, see HostTable::ensure),
                    // and the host table is not written again before this transfer
                    // completes (or `guard` synchronises the stream).
                    unsafe {
                        sys::cuMemcpyHtoDAsync_v2(
                            lane.table.ptr,
                            host_table.cast(),
                            n * 8,
                            cu_stream,
                        )
                    },
                    "uploading the piece table",
                )?;
                let staging = lane.staging.ptr;
                for (round, chunk) in blocks.chunks(per_round).enumerate() {
                    let first = round * per_round;
                    let table_at = lane.table.ptr + (first * pieces_per_block * 8) as u64;
                    let pieces = (chunk.len() * pieces_per_block) as u32;
                    let cfg = LaunchConfig {
                        grid_dim: (pieces, (piece_bytes as u64).div_ceil(CHUNK_BYTES) as u32, 1),
                        block_dim: (THREADS, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    let (piece_bytes, chunk_bytes) = (piece_bytes as u64, CHUNK_BYTES);
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
                    // inside the blocks, checked by piece_addr) and `pieces * piece_bytes`
                    // bytes of staging (it holds `per_round` blocks); with more than one
                    // piece per block, piece_bytes is a multiple of 16 and every address
                    // 16-byte aligned (validated by HbmPool and EngineKv).
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
            bytes: total,
            elapsed: started.elapsed(),
            zero_copy: false,
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
        pool: &dyn DeviceBlocks,
        blocks: &[u32],
        dst: &mut [&mut [u8]],
    ) -> Result<TransferStats> {
        let piece_bytes = pool.piece_bytes();
        if dst.len() != blocks.len() || dst.iter().any(|d| d.len() != pool.block_bytes()) {
            return Err(TierError::Gpu("one host block per block is needed".into()));
        }
        let lane = self.offload.lock().await;
        self.ctx
            .bind_to_thread()
            .map_err(gpu_err("binding the context"))?;
        let started = Instant::now();
        let guard = FinishOnDrop(Some(&lane.stream));
        for (&b, d) in blocks.iter().zip(dst.iter_mut()) {
            for (i, piece) in d.chunks_exact_mut(piece_bytes).enumerate() {
                let src = pool.piece_addr(b, i)?;
                // SAFETY: `src` is one piece inside the pool and `piece` is exactly as
                // long, borrowed until the stream completed (or `guard` synchronised).
                let r = unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        piece.as_mut_ptr().cast(),
                        src,
                        piece_bytes,
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
            bytes: blocks.len() * pool.block_bytes(),
            elapsed: started.elapsed(),
            zero_copy: false,
        })
    }

    /// Resolves when the work queued on `stream` so far has completed: a CUDA event,
    /// waited for on a blocking thread so that no runtime worker stalls.
    pub(super) async fn completion(&self, stream: &CudaStream) -> Result<()> {
        let event = stream
            .record_event(None)
            .map_err(gpu_err("recording an event"))?;
        // Small transfers finish within microseconds: poll briefly before paying for a
        // hop to a blocking thread.
        let polled = Instant::now();
        while polled.elapsed() < SPIN_BEFORE_BLOCKING {
            if event.try_is_complete().map_err(gpu_err("transfer"))? {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
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
pub(super) unsafe fn copy_runs(
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

pub(super) fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(TierError::Gpu(format!("{what}: {r:?}")))
    }
}

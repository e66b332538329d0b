//! GPU tier (feature `cuda`): one device allocation in HBM cut into fixed-size slots,
//! the top of the hierarchy (G1) as a [`Tier`] like the others.
//!
//! Engines keep their live KV in their own tensors and move it with the
//! [`crate::gpu::TransferEngine`]; this tier is HBM that tierkv owns and holds whole
//! blocks in, so that a block kept on the GPU obeys the same contract (and the same
//! conformance suite) as a block in host memory or on disk.
//!
//! A put is one host-to-device copy into a reserved slot, a get one device-to-host copy
//! out of a slot held by the reader, both synchronous on the calling thread: a slot is
//! at most a few MiB, copied at PCIe speed in well under a millisecond, and with no
//! await between reserving and committing a slot a dropped future cannot leave one
//! half-written. Slot bookkeeping is the one shared with the host and disk tiers, so a
//! removed slot is recycled only when its last reader has copied out of it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, result};

use super::slots::{Reservation, SlotTable};
use super::slotted::SlottedCore;
use super::{PutOutcome, Tier, TierKind};
use crate::tier::host::check_payload;
use crate::{BlockKey, Result, TierCounters, TierError, TierStats, defaults};

/// Copies to and from HBM move 16-byte words best; slots start on this boundary.
const SLOT_ALIGN: usize = 256;

/// Configuration of a [`GpuTier`].
#[derive(Clone, Debug)]
pub struct GpuTierConfig {
    /// Tier name. Default `"gpu"`.
    pub name: String,
    /// Bytes of HBM to allocate; rounded down to whole slots. Default
    /// [`defaults::GPU_CAPACITY`] (1 GiB).
    pub capacity_bytes: u64,
    /// Largest block payload; each slot has this size rounded up to 256 bytes. Default
    /// [`defaults::SLOT_BYTES`] (2 MiB).
    pub slot_bytes: usize,
    /// Which GPU (CUDA ordinal). Default 0.
    pub device: usize,
}

impl Default for GpuTierConfig {
    fn default() -> Self {
        GpuTierConfig {
            name: "gpu".into(),
            capacity_bytes: defaults::GPU_CAPACITY,
            slot_bytes: defaults::SLOT_BYTES,
            device: 0,
        }
    }
}

impl GpuTierConfig {
    /// Bytes one slot occupies: `slot_bytes` rounded up to 256 bytes.
    pub fn slot_stride(&self) -> usize {
        self.slot_bytes.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
    }

    /// How many blocks the tier holds.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_bytes / self.slot_stride().max(1) as u64
    }
}

/// The device allocation behind the slots.
struct Hbm {
    ctx: Arc<CudaContext>,
    base: CUdeviceptr,
}

impl Drop for Hbm {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: allocated by `malloc_sync` in `GpuTier::new` and freed once, here; no
        // copy is in flight (copies are synchronous and hold an `Arc` of the tier).
        let _ = unsafe { result::free_sync(self.base) };
    }
}

struct Inner {
    core: SlottedCore,
    slot_stride: usize,
    hbm: Hbm,
}

impl Inner {
    fn slot_addr(&self, slot: u32) -> CUdeviceptr {
        self.hbm.base + (slot as usize * self.slot_stride) as CUdeviceptr
    }

    fn gpu_error(&self, what: &str, e: cudarc::driver::DriverError) -> TierError {
        TierCounters::add(&self.core.counters.io_errors, 1);
        TierError::Gpu(format!("GPU tier `{}`: {what}: {e}", self.core.name))
    }
}

/// A block pool in HBM. Cheap to clone (shared state).
#[derive(Clone)]
pub struct GpuTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GpuTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTier")
            .field("name", &self.name())
            .field("slot_bytes", &self.slot_bytes())
            .field("capacity_blocks", &self.capacity_blocks())
            .field("blocks", &self.len())
            .finish_non_exhaustive()
    }
}

impl GpuTier {
    /// Allocates the tier's HBM on GPU `config.device`. Fails on a zero slot size or
    /// capacity, without a GPU, or when the memory cannot be had.
    pub fn new(config: GpuTierConfig) -> Result<GpuTier> {
        let name = config.name.clone();
        if config.slot_bytes == 0 {
            return Err(TierError::config(&name, "slot_bytes must be > 0"));
        }
        let slot_stride = config.slot_stride();
        let slots = u32::try_from(config.capacity_blocks())
            .map_err(|_| TierError::config(&name, "more than 2^32 slots"))?;
        if slots == 0 {
            return Err(TierError::config(
                &name,
                format!(
                    "capacity_bytes {} holds no slot of {slot_stride} bytes",
                    config.capacity_bytes
                ),
            ));
        }
        let ctx = crate::gpu::device_context(config.device)?;
        ctx.bind_to_thread()
            .map_err(|e| TierError::Gpu(format!("GPU tier `{name}`: binding the context: {e}")))?;
        let bytes = slots as usize * slot_stride;
        // SAFETY: a plain device allocation in the bound context, owned by `Hbm` and
        // freed in its Drop (also when the code below fails: nothing can fail after it).
        let base = unsafe { result::malloc_sync(bytes) }.map_err(|e| {
            TierError::Gpu(format!(
                "GPU tier `{name}`: allocating {bytes} bytes of HBM: {e}"
            ))
        })?;
        Ok(GpuTier {
            inner: Arc::new(Inner {
                core: SlottedCore::new(
                    name,
                    TierKind::Gpu,
                    config.slot_bytes,
                    SlotTable::new(slots),
                ),
                slot_stride,
                hbm: Hbm { ctx, base },
            }),
        })
    }

    /// The CUDA context the tier's memory belongs to.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.hbm.ctx
    }

    fn bind(&self) -> Result<()> {
        self.inner
            .hbm
            .ctx
            .bind_to_thread()
            .map_err(|e| self.inner.gpu_error("binding the context", e))
    }

    /// Copies the block in `slot` (held by the caller as a reader) out of HBM.
    fn copy_out(&self, slot: u32, len: usize) -> Result<Bytes> {
        self.bind()?;
        let mut out = vec![0u8; len];
        // SAFETY: the caller holds `slot` as a reader, so no put rewrites it and it is
        // not recycled; `len <= slot_bytes <= slot_stride` keeps the copy inside the
        // slot, and `out` is exactly `len` bytes.
        unsafe { result::memcpy_dtoh_sync(&mut out, self.inner.slot_addr(slot)) }
            .map_err(|e| self.inner.gpu_error("copying a block from HBM", e))?;
        Ok(Bytes::from(out))
    }
}

#[async_trait]
impl Tier for GpuTier {
    fn name(&self) -> &str {
        &self.inner.core.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Gpu
    }
    fn slot_bytes(&self) -> usize {
        self.inner.core.slot_bytes
    }
    fn capacity_blocks(&self) -> u64 {
        self.inner.core.capacity_blocks()
    }
    fn payload_bytes(&self) -> u64 {
        self.inner.core.payload_bytes()
    }
    fn len(&self) -> u64 {
        self.inner.core.len()
    }
    fn is_persistent(&self) -> bool {
        false
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome> {
        let inner = &self.inner;
        check_payload(&inner.core.name, inner.core.slot_bytes, &data)?;
        let reservation = inner.core.table().reserve(key);
        let slot = match reservation {
            Reservation::Present => return Ok(PutOutcome::AlreadyPresent),
            Reservation::Full => return Err(inner.core.full()),
            Reservation::Reserved(slot) => slot,
        };
        // No await from here to the commit or abort: the slot cannot be orphaned by a
        // dropped future.
        let copied = self.bind().and_then(|()| {
            // SAFETY: the slot is reserved for this put alone (no reader can acquire it
            // before `commit`, no other put can reserve it); `data.len() <= slot_bytes
            // <= slot_stride` keeps the copy inside the slot.
            unsafe { result::memcpy_htod_sync(inner.slot_addr(slot), &data[..]) }
                .map_err(|e| inner.gpu_error("copying a block to HBM", e))
        });
        if let Err(e) = copied {
            inner.core.table().abort(key, slot);
            return Err(e);
        }
        inner.core.table().commit(slot, data.len() as u64);
        inner.core.count_put(data.len());
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        TierCounters::add(&inner.core.counters.gets, 1);
        let Some((slot, len)) = inner.core.table().acquire(key) else {
            TierCounters::add(&inner.core.counters.misses, 1);
            return Ok(None);
        };
        let copied = self.copy_out(slot, len as usize);
        inner.core.table().release_reader(slot);
        let data = copied?;
        TierCounters::add(&inner.core.counters.hits, 1);
        TierCounters::add(&inner.core.counters.get_bytes, len);
        Ok(Some(data))
    }

    async fn contains(&self, key: BlockKey) -> Result<bool> {
        Ok(self.inner.core.contains(key))
    }

    async fn remove(&self, key: BlockKey) -> Result<bool> {
        Ok(self.inner.core.remove(key))
    }

    async fn keys(&self) -> Result<Vec<(BlockKey, u64)>> {
        Ok(self.inner.core.ready_keys())
    }

    fn stats(&self) -> TierStats {
        self.inner.core.stats()
    }
}

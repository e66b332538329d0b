//! Host-memory tier: one large page-aligned allocation cut into fixed-size slots.
//!
//! Slot allocation is a pop from a free list (O(1)); a put is one copy into the slot;
//! a get hands out a zero-copy [`Bytes`] view of the slot that keeps the slot alive
//! (a removed slot is recycled only when the last view is dropped). No heap allocation
//! of payload size happens on either path.
//!
//! With `shared` the slab is a memfd that [`HostTier::shared_fd`] hands out, so that
//! clients on the same machine map it (the block service passes the descriptor over a
//! Unix socket): they read blocks in place, and write new ones into *staged* slots
//! ([`HostTier::stage`]) that a later `put` adopts without copying.
//!
//! With the `cuda` feature and a GPU present the slab is pinned: its pages are touched
//! from every core and it is registered with `cuMemHostRegister` (measured faster than
//! `cuMemHostAlloc` for large sizes: `tierkv-bench gpu`), so copies to and from HBM run
//! at full PCIe speed straight from the slots.

use std::ptr::NonNull;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::slots::{Reservation, SlotTable};
use super::slotted::SlottedCore;
use super::{PutOutcome, Tier, TierKind};
use crate::defaults;
use crate::{BlockKey, Result, TierCounters, TierError, TierStats};

/// Configuration of a [`HostTier`].
#[derive(Clone, Debug)]
pub struct HostTierConfig {
    /// Tier name. Default `"host"`.
    pub name: String,
    /// Bytes of memory to reserve; rounded down to whole slots. Default
    /// [`defaults::HOST_CAPACITY`] (512 MiB).
    pub capacity_bytes: u64,
    /// Largest block payload; each slot has this size rounded up to 4 KiB. Default
    /// [`defaults::SLOT_BYTES`] (2 MiB).
    pub slot_bytes: usize,
    /// Touch every page at start-up (`MAP_POPULATE`) so that puts never page-fault.
    /// Default true.
    pub prefault: bool,
    /// With the `cuda` feature and a GPU present: pin the slab (`cuMemHostRegister`,
    /// after touching its pages from every core) so that copies to and from HBM run at
    /// full PCIe speed. Without either, nothing happens. Default true.
    pub pin: bool,
    /// Back the slab with a memfd that same-host clients can map. Default false.
    pub shared: bool,
}

impl Default for HostTierConfig {
    fn default() -> Self {
        HostTierConfig {
            name: "host".into(),
            capacity_bytes: defaults::HOST_CAPACITY,
            slot_bytes: defaults::SLOT_BYTES,
            prefault: defaults::HOST_PREFAULT,
            pin: defaults::HOST_PIN,
            shared: false,
        }
    }
}

const PAGE: usize = 4096;

impl HostTierConfig {
    /// Whether the slab will be pinned (and so touched in parallel rather than by
    /// `MAP_POPULATE`).
    fn pin_now(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.pin && crate::gpu::primary_context().is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Bytes one slot occupies: `slot_bytes` rounded up to a page.
    pub fn slot_stride(&self) -> usize {
        self.slot_bytes.div_ceil(PAGE) * PAGE
    }

    /// How many blocks the tier holds.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_bytes / self.slot_stride().max(1) as u64
    }
}

/// A page-aligned memory mapping: anonymous, or of a memfd when shared.
struct Slab {
    ptr: NonNull<u8>,
    len: usize,
    /// The memfd behind a shared slab.
    fd: Option<std::os::fd::OwnedFd>,
    /// The context the slab is registered (pinned) with, if any.
    #[cfg(feature = "cuda")]
    pinned: Option<std::sync::Arc<crate::gpu::CudaContext>>,
}

// SAFETY: the slab is plain memory; all access to its bytes goes through slot
// ownership tracked under `HostState`'s mutex, which serialises writers and readers.
unsafe impl Send for Slab {}
// SAFETY: as above; shared references only read slots that no writer owns.
unsafe impl Sync for Slab {}

/// A memfd of `len` bytes.
fn memfd(len: usize, tier: &str) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let io = |what: &str| {
        TierError::io(
            format!("host tier `{tier}`: {what}"),
            std::io::Error::last_os_error(),
        )
    };
    // SAFETY: a static NUL-terminated name and valid flags; the result is checked.
    let raw = unsafe { libc::memfd_create(c"tierkv-host".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io("memfd_create"));
    }
    // SAFETY: `raw` is a descriptor we just created and own alone.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let off = libc::off_t::try_from(len).map_err(|_| TierError::config(tier, "slab too large"))?;
    // SAFETY: plain syscall on our own descriptor; the result is checked.
    if unsafe { libc::ftruncate(raw, off) } != 0 {
        return Err(io(&format!("sizing the shared slab to {len} bytes")));
    }
    Ok(fd)
}

impl Slab {
    fn map(len: usize, prefault: bool, shared: bool, tier: &str) -> Result<Slab> {
        use std::os::fd::AsRawFd;
        let fd = if shared {
            Some(memfd(len, tier)?)
        } else {
            None
        };
        let flags = match fd {
            Some(_) => libc::MAP_SHARED,
            None => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        } | libc::MAP_NORESERVE
            | if prefault { libc::MAP_POPULATE } else { 0 };
        let raw = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a new mapping with no address hint, of an anonymous region or of our
        // own memfd sized to `len`; the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(TierError::io(
                format!("host tier `{tier}`: mmap of {len} bytes"),
                std::io::Error::last_os_error(),
            ));
        }
        match NonNull::new(ptr.cast::<u8>()) {
            Some(ptr) => Ok(Slab {
                ptr,
                len,
                fd,
                #[cfg(feature = "cuda")]
                pinned: None,
            }),
            None => Err(TierError::config(tier, "mmap returned a null mapping")),
        }
    }

    /// Pins the slab for GPU copies when a GPU is present; a failure leaves it
    /// unpinned (slower copies), with a warning.
    #[cfg(feature = "cuda")]
    fn pin(&mut self, tier: &str) {
        let Some(ctx) = crate::gpu::primary_context() else {
            return;
        };
        let started = std::time::Instant::now();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        crate::gpu::touch_pages(self.ptr.as_ptr(), self.len, threads);
        // SAFETY: the slab's own mapping, unregistered in Drop before it is unmapped.
        match unsafe { crate::gpu::register_host(&ctx, self.ptr.as_ptr(), self.len) } {
            Ok(()) => {
                tracing::info!(tier, bytes = self.len, took = ?started.elapsed(), "host tier pinned for GPU copies");
                self.pinned = Some(ctx);
            }
            Err(e) => tracing::warn!(tier, error = %e, "host tier left unpinned"),
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        if let Some(ctx) = self.pinned.take() {
            // SAFETY: registered in `pin`, unregistered once, before the unmap below.
            let _ = unsafe { crate::gpu::unregister_host(&ctx, self.ptr.as_ptr()) };
        }
        // SAFETY: `ptr`/`len` are exactly the mapping created in `map`, and no view of
        // it outlives the slab: views hold an `Arc` of the tier's inner state.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

struct Inner {
    core: SlottedCore,
    slot_stride: usize,
    slab: Slab,
}

impl Inner {
    fn slot_ptr(&self, slot: u32) -> *mut u8 {
        // SAFETY: `slot < slots.len()` and `slots.len() * slot_stride <= slab.len`, so
        // the offset stays inside the mapping.
        unsafe { self.slab.ptr.as_ptr().add(slot as usize * self.slot_stride) }
    }
}

/// A block pool in host memory. Cheap to clone (shared state).
#[derive(Clone)]
pub struct HostTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HostTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTier")
            .field("name", &self.name())
            .field("slot_bytes", &self.slot_bytes())
            .field("capacity_blocks", &self.capacity_blocks())
            .field("blocks", &self.len())
            .finish_non_exhaustive()
    }
}

impl HostTier {
    /// Allocates the tier's slab (`capacity_blocks` slots of `slot_bytes`, page-aligned,
    /// faulted in now when `prefault`). Fails on a zero slot size or capacity, or when
    /// the memory cannot be had.
    pub fn new(config: HostTierConfig) -> Result<HostTier> {
        let name = config.name.clone();
        if config.slot_bytes == 0 {
            return Err(TierError::config(&name, "slot_bytes must be > 0"));
        }
        let slot_stride = config.slot_stride();
        let slots = config.capacity_blocks();
        if slots == 0 {
            return Err(TierError::config(
                &name,
                format!(
                    "capacity of {} bytes holds no slot of {} bytes",
                    config.capacity_bytes, slot_stride
                ),
            ));
        }
        let slots =
            u32::try_from(slots).map_err(|_| TierError::config(&name, "more than 2^32 slots"))?;
        let len = slots as usize * slot_stride;
        #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
        let mut slab = Slab::map(
            len,
            config.prefault && !config.pin_now(),
            config.shared,
            &name,
        )?;
        #[cfg(feature = "cuda")]
        if config.pin {
            slab.pin(&name);
        }
        Ok(HostTier {
            inner: Arc::new(Inner {
                core: SlottedCore::new(
                    name,
                    TierKind::Host,
                    config.slot_bytes,
                    SlotTable::new(slots),
                ),
                slot_stride,
                slab,
            }),
        })
    }

    /// Whether the slab is pinned for GPU copies.
    pub fn is_pinned(&self) -> bool {
        #[cfg(feature = "cuda")]
        {
            self.inner.slab.pinned.is_some()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }

    /// Address and length of the whole slab (for registering it with a GPU driver).
    pub fn slab(&self) -> (*const u8, usize) {
        (
            self.inner.slab.ptr.as_ptr().cast_const(),
            self.inner.slab.len,
        )
    }

    /// The memfd behind a shared slab (`shared = true`), to hand to same-host clients.
    pub fn shared_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.inner.slab.fd.as_ref().map(|f| f.as_fd())
    }

    /// Bytes one slot occupies in the slab.
    pub fn slot_stride(&self) -> usize {
        self.inner.slot_stride
    }

    /// The offset in the slab of a payload this tier handed out (a `get` view), or
    /// `None` if `data` does not lie in the slab.
    pub fn offset_of(&self, data: &[u8]) -> Option<u64> {
        let base = self.inner.slab.ptr.as_ptr() as usize;
        let p = data.as_ptr() as usize;
        (p >= base && p + data.len() <= base + self.inner.slab.len).then(|| (p - base) as u64)
    }

    /// A free slot for a same-host writer, or `None` when none is free. Its bytes are
    /// the writer's until [`StagedSlot::into_bytes`] hands them to a `put` (which
    /// adopts the slot without copying) or the slot is dropped (and recycled).
    pub fn stage(&self) -> Option<StagedSlot> {
        let slot = self.inner.core.table().stage()?;
        Some(StagedSlot {
            inner: Arc::clone(&self.inner),
            slot,
        })
    }

    /// The staged slot `data` starts, if it is one and `data` is its payload.
    fn staged_slot_of(&self, data: &[u8]) -> Option<u32> {
        let offset = self.offset_of(data)? as usize;
        let slot = u32::try_from(offset / self.inner.slot_stride).ok()?;
        (offset.is_multiple_of(self.inner.slot_stride) && self.inner.core.table().is_staged(slot))
            .then_some(slot)
    }

    fn acquire(&self, key: BlockKey) -> Option<SlotView> {
        let inner = &self.inner;
        TierCounters::add(&inner.core.counters.gets, 1);
        let Some((slot, len)) = inner.core.table().acquire(key) else {
            TierCounters::add(&inner.core.counters.misses, 1);
            return None;
        };
        TierCounters::add(&inner.core.counters.hits, 1);
        TierCounters::add(&inner.core.counters.get_bytes, len);
        Some(SlotView {
            inner: Arc::clone(inner),
            slot,
            ptr: inner.slot_ptr(slot),
            len: len as usize,
        })
    }
}

/// A slot staged for a same-host writer; recycled on drop unless a `put` adopted it.
pub struct StagedSlot {
    inner: Arc<Inner>,
    slot: u32,
}

impl std::fmt::Debug for StagedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedSlot")
            .field("slot", &self.slot)
            .field("offset", &self.offset())
            .finish()
    }
}

impl StagedSlot {
    /// Offset of the slot in the slab.
    pub fn offset(&self) -> u64 {
        self.slot as u64 * self.inner.slot_stride as u64
    }

    /// Bytes the slot can take.
    pub fn capacity(&self) -> usize {
        self.inner.core.slot_bytes
    }

    /// Start of the slot's bytes, for the holder to write into (`capacity` bytes).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.inner.slot_ptr(self.slot)
    }

    /// The first `len` bytes of the slot as a payload (to verify and `put`); the slot
    /// stays held until the last view is dropped.
    pub fn into_bytes(self, len: usize) -> Bytes {
        let len = len.min(self.inner.core.slot_bytes);
        let ptr = self.inner.slot_ptr(self.slot);
        Bytes::from_owner(StagedView {
            staged: self,
            ptr,
            len,
        })
    }
}

impl Drop for StagedSlot {
    fn drop(&mut self) {
        self.inner.core.table().unstage(self.slot);
    }
}

/// A read-only view of a staged slot's payload.
struct StagedView {
    staged: StagedSlot,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the slot stays held (staged or adopted with a reader hold) while the view
// lives; the outside writer has finished writing before the view is made, and the
// server never writes into a staged or ready slot.
unsafe impl Send for StagedView {}
// SAFETY: as above; the view is read-only.
unsafe impl Sync for StagedView {}

impl AsRef<[u8]> for StagedView {
    fn as_ref(&self) -> &[u8] {
        let _held = &self.staged;
        // SAFETY: `ptr..ptr+len` lies inside the slab (len <= slot_bytes), the slab
        // outlives `staged.inner`, and the slot is held for the view's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A read-only view of one slot; keeps the slot from being recycled while alive.
struct SlotView {
    inner: Arc<Inner>,
    slot: u32,
    ptr: *const u8,
    len: usize,
}

// SAFETY: the view only reads a slot that has a registered reader, which no writer
// touches until the reader is released in `Drop`.
unsafe impl Send for SlotView {}
// SAFETY: as above; the view is read-only.
unsafe impl Sync for SlotView {}

impl AsRef<[u8]> for SlotView {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside the slab (len <= slot_stride), the slab
        // outlives `self.inner`, and the slot is not rewritten while it has a reader.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for SlotView {
    fn drop(&mut self) {
        self.inner.core.table().release_reader(self.slot);
    }
}

#[async_trait]
impl Tier for HostTier {
    fn name(&self) -> &str {
        &self.inner.core.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Host
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
        if let Some(slot) = self.staged_slot_of(&data) {
            // Written in place by a same-host client: adopt the slot, no copy.
            let adopted = inner.core.table().adopt(slot, key, data.len() as u64);
            return match adopted {
                Reservation::Present => Ok(PutOutcome::AlreadyPresent),
                Reservation::Full => Err(inner.core.full()),
                Reservation::Reserved(_) => {
                    inner.core.count_put(data.len());
                    Ok(PutOutcome::Stored)
                }
            };
        }
        let reservation = inner.core.table().reserve(key);
        let slot = match reservation {
            Reservation::Present => return Ok(PutOutcome::AlreadyPresent),
            Reservation::Full => return Err(inner.core.full()),
            Reservation::Reserved(slot) => slot,
        };
        // SAFETY: the slot is reserved for this put alone: no reader can acquire it
        // before `commit` and no other put can reserve it. `data.len() <= slot_bytes
        // <= slot_stride` keeps the copy inside the slot.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), inner.slot_ptr(slot), data.len());
        }
        inner.core.table().commit(slot, data.len() as u64);
        inner.core.count_put(data.len());
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>> {
        Ok(self.acquire(key).map(Bytes::from_owner))
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

/// Rejects empty payloads ([`TierError::Empty`]) and payloads larger than the slot
/// ([`TierError::TooLarge`]): what every [`crate::Tier`]'s `put` checks first.
pub fn check_payload(tier: &str, slot_bytes: usize, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Err(TierError::Empty(tier.to_string()));
    }
    if data.len() > slot_bytes {
        return Err(TierError::TooLarge {
            tier: tier.to_string(),
            len: data.len(),
            slot_bytes,
        });
    }
    Ok(())
}

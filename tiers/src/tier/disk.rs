//! NVMe tier: a preallocated file of fixed-size slots, read and written with io_uring
//! and O_DIRECT on dedicated threads, with a RocksDB index from block key to slot so
//! the tier is reopened with its blocks after a restart.
//!
//! Each slot holds the 64-byte [`crate::header`] followed by the payload, rounded up to
//! 4 KiB. Every read verifies the header and the payload's crc32c; a block that fails
//! is counted in `corrupt_blocks`, dropped from the index and reported as a miss.
//!
//! Durability: a put is acknowledged after its O_DIRECT write completed and its index
//! entry went into RocksDB's write-ahead log, which survives a crash of the process.
//! With `sync_writes` the data is written with `RWF_DSYNC` and the WAL is synced too,
//! which also survives a power loss.
//!
//! A deleted or damaged index is rebuilt from the slots' headers at open, loudly
//! (`disk_rebuild`); a damaged one is kept beside as `index.damaged-<secs>`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::disk_index::{
    DISK_FORMAT, DiskIndex, Geometry, META_KEY, index_error, load_table, open_db,
};
use super::disk_rebuild;
use super::host::check_payload;
use super::slots::{Reservation, SlotTable};
use super::slotted::SlottedCore;
use super::{PutOutcome, Tier, TierKind};
use crate::defaults;
use crate::header::{self, HEADER_LEN};
use crate::io::{AlignedBuf, BufPool, IoKind, PooledBuf, UringPool, align_up};
use crate::{BlockKey, Result, TierCounters, TierError, TierStats};

/// Configuration of a [`DiskTier`].
#[derive(Clone, Debug)]
pub struct DiskTierConfig {
    /// Tier name. Default `"disk"`.
    pub name: String,
    /// Directory holding `blocks.dat` (the slot file) and `index/` (RocksDB); created if
    /// missing. Default `./tierkv-data/disk`.
    pub path: PathBuf,
    /// Size of the slot file; rounded down to whole slots. Default
    /// [`defaults::DISK_CAPACITY`] (4 GiB).
    pub capacity_bytes: u64,
    /// Largest block payload; a slot is this plus the 64-byte header, rounded up to
    /// 4 KiB. Default [`defaults::SLOT_BYTES`] (2 MiB).
    pub slot_bytes: usize,
    /// I/Os kept in flight per io_uring thread. Default 32.
    pub queue_depth: u32,
    /// io_uring threads. Default 1.
    pub io_threads: usize,
    /// Open the slot file with O_DIRECT (bypassing the page cache). Turn off only on
    /// filesystems without O_DIRECT support, such as tmpfs. Default true.
    pub direct_io: bool,
    /// Make every put durable against power loss (RWF_DSYNC + synced index WAL).
    /// Default false: durable against process crashes only.
    pub sync_writes: bool,
}

impl Default for DiskTierConfig {
    fn default() -> Self {
        DiskTierConfig {
            name: "disk".into(),
            path: PathBuf::from("tierkv-data/disk"),
            capacity_bytes: defaults::DISK_CAPACITY,
            slot_bytes: defaults::SLOT_BYTES,
            queue_depth: defaults::DISK_QUEUE_DEPTH,
            io_threads: defaults::DISK_IO_THREADS,
            direct_io: defaults::DISK_DIRECT_IO,
            sync_writes: defaults::DISK_SYNC_WRITES,
        }
    }
}

impl DiskTierConfig {
    /// Bytes one slot occupies: header plus `slot_bytes`, rounded up to 4 KiB.
    pub fn slot_stride(&self) -> usize {
        align_up(HEADER_LEN + self.slot_bytes)
    }

    /// How many blocks the tier holds.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_bytes / self.slot_stride() as u64
    }
}

const DATA_FILE: &str = "blocks.dat";

pub(super) struct Inner {
    pub(super) core: SlottedCore,
    dir: PathBuf,
    pub(super) slot_stride: usize,
    sync_writes: bool,
    file: Arc<File>,
    index: DiskIndex,
    bufs: Arc<BufPool>,
    uring: UringPool,
    /// Woken whenever a put's write settled (committed or aborted).
    settled: tokio::sync::Notify,
}

/// A block pool in a file of slots on local NVMe. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DiskTier {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("name", &self.name())
            .field("dir", &self.inner.dir)
            .field("slot_bytes", &self.slot_bytes())
            .field("capacity_blocks", &self.capacity_blocks())
            .field("blocks", &self.len())
            .finish_non_exhaustive()
    }
}

impl DiskTier {
    /// Opens the tier at `config.path`, creating it if empty; reloads the index of a
    /// tier written before. Fails with a clear error if the directory cannot be used or
    /// the existing file's geometry differs from the configuration.
    pub fn open(config: DiskTierConfig) -> Result<DiskTier> {
        let name = config.name.clone();
        if config.slot_bytes == 0 {
            return Err(TierError::config(&name, "slot_bytes must be > 0"));
        }
        if config.queue_depth == 0 || config.queue_depth > 4096 {
            return Err(TierError::config(&name, "queue_depth must be in 1..=4096"));
        }
        let slot_stride = config.slot_stride();
        let slots = config.capacity_blocks();
        if slots == 0 {
            return Err(TierError::config(
                &name,
                format!(
                    "capacity of {} bytes holds no slot of {slot_stride} bytes",
                    config.capacity_bytes
                ),
            ));
        }
        let slots32 =
            u32::try_from(slots).map_err(|_| TierError::config(&name, "more than 2^32 slots"))?;
        let geometry = Geometry {
            slot_stride: slot_stride as u64,
            slots,
        };
        let dir = config.path.clone();
        std::fs::create_dir_all(&dir).map_err(|e| {
            TierError::io(format!("creating disk tier directory {}", dir.display()), e)
        })?;

        let (db, file, table) = open_index_and_file(&name, &dir, &config, geometry, slots32)?;
        let index = DiskIndex::start(&name, &dir, db, config.sync_writes)?;

        let uring = UringPool::new(&name, config.io_threads, config.queue_depth)
            .map_err(|e| TierError::io(format!("disk tier `{name}`: setting up io_uring"), e))?;
        // Staging buffers: one per I/O in flight (at most 512 MiB of them), allocated
        // and faulted in now so that the I/O path never allocates.
        let in_flight = config.queue_depth as usize * config.io_threads.max(1);
        let max_idle = in_flight.clamp(4, (512 << 20) / slot_stride + 4);
        let bufs = BufPool::new(slot_stride, max_idle);
        bufs.prefill(in_flight);
        tracing::info!(
            tier = %name, dir = %dir.display(), slots, slot_stride, blocks = table.len(),
            "disk tier open"
        );
        Ok(DiskTier {
            inner: Arc::new(Inner {
                core: SlottedCore::new(name, TierKind::Disk, config.slot_bytes, table),
                dir,
                slot_stride,
                sync_writes: config.sync_writes,
                file: Arc::new(file),
                index,
                bufs,
                uring,
                settled: tokio::sync::Notify::new(),
            }),
        })
    }

    /// A free slot for `key`; `None` when the block is already present. A block another
    /// put is still writing is waited for: `AlreadyPresent` then means a get finds it
    /// (or, if that write failed, this put takes the slot).
    pub(super) async fn reserve(&self, key: BlockKey) -> Result<Option<u32>> {
        loop {
            let settled = self.inner.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so a settle in between is not missed.
            settled.as_mut().enable();
            let reservation = {
                let mut table = self.inner.core.table();
                if table.is_writing(key) {
                    None
                } else {
                    Some(table.reserve(key))
                }
            };
            match reservation {
                None => settled.await,
                Some(Reservation::Present) => return Ok(None),
                Some(Reservation::Full) => return Err(self.inner.core.full()),
                Some(Reservation::Reserved(slot)) => return Ok(Some(slot)),
            }
        }
    }

    /// Path of the slot file (the conformance suite damages blocks there on purpose).
    #[cfg(any(test, feature = "testing"))]
    pub fn data_file(&self) -> PathBuf {
        self.inner.dir.join(DATA_FILE)
    }

    /// Byte offset of `key`'s slot in the slot file, if the block is present.
    #[cfg(any(test, feature = "testing"))]
    pub fn slot_offset(&self, key: BlockKey) -> Option<u64> {
        let mut table = self.inner.core.table();
        let (slot, _) = table.acquire(key)?;
        table.release_reader(slot);
        Some(slot as u64 * self.inner.slot_stride as u64)
    }
}

fn open_data_file(
    dir: &Path,
    config: &DiskTierConfig,
    geometry: Geometry,
    index: &rocksdb::DB,
) -> Result<(File, Slots)> {
    let path = dir.join(DATA_FILE);
    let expected_len = geometry.slots * geometry.slot_stride;
    let recorded = index.get(META_KEY).map_err(index_error(dir))?;
    let layout_err = |reason: String| TierError::DiskLayout {
        path: path.clone(),
        reason,
    };
    if let Some(v) = &recorded {
        let Some((format, old)) = Geometry::decode(v) else {
            return Err(layout_err("unreadable geometry record in the index".into()));
        };
        if format != DISK_FORMAT {
            return Err(layout_err(format!(
                "written in format {format}, this build reads {DISK_FORMAT}"
            )));
        }
        if old != geometry {
            return Err(layout_err(format!(
                "was created with {} slots of {} bytes, the configuration asks for {} slots of {} bytes; \
                 use the old capacity and slot size or a new directory",
                old.slots, old.slot_stride, geometry.slots, geometry.slot_stride
            )));
        }
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(recorded.is_none());
    if config.direct_io {
        opts.custom_flags(libc::O_DIRECT);
    }
    let file = opts.open(&path).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EINVAL) && config.direct_io {
            " (this filesystem may not support O_DIRECT; set direct_io = false)"
        } else {
            ""
        };
        TierError::io(
            format!("opening disk tier file {}{hint}", path.display()),
            e,
        )
    })?;
    let len = file
        .metadata()
        .map_err(|e| TierError::io(format!("stat {}", path.display()), e))?
        .len();
    if recorded.is_some() {
        if len != expected_len {
            return Err(layout_err(format!(
                "file has {len} bytes, expected {expected_len}; it was truncated or replaced"
            )));
        }
        return Ok((file, Slots::Indexed));
    }
    if len != 0 && len != expected_len {
        return Err(layout_err(format!(
            "file has {len} bytes but no index; expected an empty file or {expected_len} bytes"
        )));
    }
    if len == expected_len {
        // Slots, but no index recorded them: the caller rebuilds it, then records the
        // geometry (a crash before that rebuilds again).
        return Ok((file, Slots::Unindexed));
    }
    preallocate(&file, expected_len).map_err(|e| {
        TierError::io(
            format!("preallocating {expected_len} bytes for {}", path.display()),
            e,
        )
    })?;
    record_geometry(dir, index, geometry)?;
    Ok((file, Slots::Indexed))
}

fn record_geometry(dir: &Path, index: &rocksdb::DB, geometry: Geometry) -> Result<()> {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    index
        .put_opt(META_KEY, geometry.encode(), &wo)
        .map_err(index_error(dir))
}

/// Whether the slot file's blocks are in the index.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slots {
    /// New, or recorded by the index.
    Indexed,
    /// Of the right size but unknown to the index (it was deleted or replaced).
    Unindexed,
}

/// Opens the index and the slot file and loads the slot table. An index RocksDB
/// refuses as damaged is moved aside; a missing or moved-aside index is rebuilt from
/// the slot file's headers. Both are logged loudly. Blocking.
fn open_index_and_file(
    name: &str,
    dir: &Path,
    config: &DiskTierConfig,
    geometry: Geometry,
    slots: u32,
) -> Result<(rocksdb::DB, File, SlotTable)> {
    let mut recovered = false;
    loop {
        let attempt = open_db(dir).and_then(|db| {
            let (file, state) = open_data_file(dir, config, geometry, &db)?;
            if state == Slots::Unindexed {
                if !recovered {
                    tracing::warn!(
                        tier = %name, dir = %dir.display(),
                        "DISK INDEX MISSING beside a slot file: rebuilding it from the slots' headers"
                    );
                }
                let found =
                    disk_rebuild::rebuild_index(dir, &db, &dir.join(DATA_FILE), geometry)?;
                record_geometry(dir, &db, geometry)?;
                tracing::warn!(
                    tier = %name, blocks = found.blocks, skipped = found.skipped,
                    "disk index rebuilt from the slot file"
                );
            }
            let table = load_table(dir, &db, slots)?;
            Ok((db, file, table))
        });
        match attempt {
            Err(TierError::Index { source, .. })
                if !recovered && disk_rebuild::is_damage(&source) =>
            {
                let aside = disk_rebuild::move_aside(dir)?;
                tracing::error!(
                    tier = %name, dir = %dir.display(), moved_to = %aside.display(), error = %source,
                    "DISK INDEX DAMAGED: moved aside; rebuilding it from the slot file"
                );
                recovered = true;
            }
            other => return other,
        }
    }
}

/// Reserves the file's blocks up front (fallocate), falling back to a sparse
/// `set_len` on filesystems that cannot.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let off_len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: plain syscall on an open descriptor; the result is checked.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len),
        _ => Err(err),
    }
}

impl Inner {
    fn io_error(&self, context: &str, e: std::io::Error) -> TierError {
        TierCounters::add(&self.core.counters.io_errors, 1);
        TierError::io(format!("disk tier `{}`: {context}", self.core.name), e)
    }

    async fn write_slot(&self, key: BlockKey, slot: u32, data: &[u8]) -> Result<()> {
        let mut buf = self.bufs.take();
        buf.full_mut()[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
        let (buf, result) = self
            .write_slot_from(key, slot, buf.into_inner(), data.len())
            .await;
        if let Some(buf) = buf {
            drop(PooledBuf::from_parts(buf, &self.bufs));
        }
        result
    }

    /// Writes slot `slot` from `buf`, whose `len` payload bytes already follow the
    /// header's place; hands the buffer back unless the I/O threads are gone.
    pub(super) async fn write_slot_from(
        &self,
        key: BlockKey,
        slot: u32,
        mut buf: AlignedBuf,
        len: usize,
    ) -> (Option<AlignedBuf>, Result<()>) {
        let total = HEADER_LEN + len;
        let padded = align_up(total);
        {
            let b = buf.as_mut_slice();
            let head = header::encode(key, &b[HEADER_LEN..total]);
            b[..HEADER_LEN].copy_from_slice(&head);
            b[total..padded].fill(0);
        }
        if let Err(e) = crate::failpoint::check("disk.write") {
            return (
                Some(buf),
                Err(self.io_error(&format!("writing slot {slot}"), e)),
            );
        }
        let offset = slot as u64 * self.slot_stride as u64;
        let submitted = self
            .uring
            .submit(
                IoKind::Write,
                Arc::clone(&self.file),
                buf,
                offset,
                padded,
                self.sync_writes,
            )
            .await;
        let Ok(done) = submitted else {
            return (None, Err(TierError::Closed(self.core.name.clone())));
        };
        if let Err(e) = done.result {
            let e = self.io_error(&format!("writing slot {slot}"), e);
            return (Some(done.buf), Err(e));
        }
        (Some(done.buf), self.index.put(key, slot, len as u64).await)
    }

    /// Reads and verifies a slot. `Ok(None)`: the slot does not hold this block.
    async fn read_slot(&self, key: BlockKey, slot: u32, len: u64) -> Result<Option<Bytes>> {
        let (buf, result) = self
            .read_slot_into(key, slot, len, self.bufs.take().into_inner())
            .await;
        let Some(buf) = buf else {
            return Err(TierError::Closed(self.core.name.clone()));
        };
        let mut buf = PooledBuf::from_parts(buf, &self.bufs);
        if !result? {
            return Ok(None);
        }
        buf.set_range(HEADER_LEN..HEADER_LEN + len as usize);
        Ok(Some(Bytes::from_owner(buf)))
    }

    /// Reads slot `slot` into `buf` and verifies it holds `key` with `len` bytes
    /// (`Ok(false)`: it does not, counted as corrupt); hands the buffer back unless the
    /// I/O threads are gone.
    pub(super) async fn read_slot_into(
        &self,
        key: BlockKey,
        slot: u32,
        len: u64,
        buf: AlignedBuf,
    ) -> (Option<AlignedBuf>, Result<bool>) {
        let total = HEADER_LEN + len as usize;
        if let Err(e) = crate::failpoint::check("disk.read") {
            return (
                Some(buf),
                Err(self.io_error(&format!("reading slot {slot}"), e)),
            );
        }
        let offset = slot as u64 * self.slot_stride as u64;
        let submitted = self
            .uring
            .submit(
                IoKind::Read,
                Arc::clone(&self.file),
                buf,
                offset,
                align_up(total),
                false,
            )
            .await;
        let Ok(done) = submitted else {
            return (None, Err(TierError::Closed(self.core.name.clone())));
        };
        if let Err(e) = done.result {
            let e = self.io_error(&format!("reading slot {slot}"), e);
            return (Some(done.buf), Err(e));
        }
        let verdict = header::verify(&done.buf.as_slice()[..total], key, Some(len));
        match verdict {
            Ok(_) => (Some(done.buf), Ok(true)),
            Err(why) => {
                TierCounters::add(&self.core.counters.corrupt_blocks, 1);
                tracing::warn!(tier = %self.core.name, %key, slot, %why, "corrupt block on disk; dropping it");
                (Some(done.buf), Ok(false))
            }
        }
    }

    /// Settles a put's slot after its write: committed (and counted) or released.
    pub(super) async fn settle_write(
        &self,
        key: BlockKey,
        slot: u32,
        len: u64,
        written: Result<()>,
    ) -> Result<PutOutcome> {
        let outcome = self.settle_write_inner(key, slot, len, written).await;
        // Puts of the same key waiting for this write may go on.
        self.settled.notify_waiters();
        outcome
    }

    async fn settle_write_inner(
        &self,
        key: BlockKey,
        slot: u32,
        len: u64,
        written: Result<()>,
    ) -> Result<PutOutcome> {
        match written {
            Ok(()) => {
                if !self.core.table().commit(slot, len) {
                    // Removed while being written: drop the index entry we just wrote.
                    self.index.delete(key).await?;
                }
                self.core.count_put(len as usize);
                Ok(PutOutcome::Stored)
            }
            Err(e) => {
                self.core.table().abort(key, slot);
                Err(e)
            }
        }
    }

    /// Settles a get after its read (the slot's reader released): counted, and a slot
    /// that did not hold the block forgotten.
    pub(super) async fn settle_read(
        &self,
        key: BlockKey,
        len: u64,
        found: Result<bool>,
    ) -> Result<bool> {
        match found {
            Ok(true) => {
                TierCounters::add(&self.core.counters.hits, 1);
                TierCounters::add(&self.core.counters.get_bytes, len);
                Ok(true)
            }
            Ok(false) => {
                TierCounters::add(&self.core.counters.misses, 1);
                self.forget(key).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn forget(&self, key: BlockKey) -> Result<bool> {
        let removed = self.core.table().remove(key).is_some();
        if removed {
            self.index.delete(key).await?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &str {
        &self.inner.core.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Disk
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
        true
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome> {
        check_payload(&self.inner.core.name, self.inner.core.slot_bytes, &data)?;
        let Some(slot) = self.reserve(key).await? else {
            return Ok(PutOutcome::AlreadyPresent);
        };
        // The write runs as its own task so that a caller that gives up half-way
        // cannot leave the slot reserved forever or reuse it while the kernel writes.
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let written = inner.write_slot(key, slot, &data).await;
            inner
                .settle_write(key, slot, data.len() as u64, written)
                .await
        });
        task.await
            .map_err(|e| TierError::io("disk put task", std::io::Error::other(e.to_string())))?
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>> {
        let inner = Arc::clone(&self.inner);
        TierCounters::add(&inner.core.counters.gets, 1);
        let Some((slot, len)) = inner.core.table().acquire(key) else {
            TierCounters::add(&inner.core.counters.misses, 1);
            return Ok(None);
        };
        let task = tokio::spawn(async move {
            let result = inner.read_slot(key, slot, len).await;
            inner.core.table().release_reader(slot);
            let (data, found) = match result {
                Ok(data) => (data.clone(), Ok(data.is_some())),
                Err(e) => (None, Err(e)),
            };
            inner.settle_read(key, len, found).await.map(|_| data)
        });
        task.await
            .map_err(|e| TierError::io("disk get task", std::io::Error::other(e.to_string())))?
    }

    async fn contains(&self, key: BlockKey) -> Result<bool> {
        Ok(self.inner.core.contains(key))
    }

    async fn remove(&self, key: BlockKey) -> Result<bool> {
        let removed = self.inner.forget(key).await?;
        if removed {
            self.inner.core.count_remove();
        }
        Ok(removed)
    }

    async fn keys(&self) -> Result<Vec<(BlockKey, u64)>> {
        Ok(self.inner.core.ready_keys())
    }

    fn stats(&self) -> TierStats {
        self.inner.core.stats()
    }
}

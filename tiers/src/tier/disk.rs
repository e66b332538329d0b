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

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use super::disk_index::{
    DISK_FORMAT, DiskIndex, Geometry, META_KEY, index_error, load_table, open_db,
};
use super::host::check_payload;
use super::slots::{Reservation, SlotTable};
use super::{PutOutcome, Tier, TierKind, lock};
use crate::defaults;
use crate::header::{self, HEADER_LEN};
use crate::io::{BufPool, IoKind, PooledBuf, UringPool, align_up};
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

struct Inner {
    name: String,
    dir: PathBuf,
    slot_bytes: usize,
    slot_stride: usize,
    sync_writes: bool,
    file: Arc<File>,
    index: DiskIndex,
    table: Mutex<SlotTable>,
    bufs: Arc<BufPool>,
    uring: UringPool,
    counters: TierCounters,
}

/// A block pool in a file of slots on local NVMe. Cheap to clone (shared state).
#[derive(Clone)]
pub struct DiskTier {
    inner: Arc<Inner>,
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

        let db = open_db(&dir)?;
        let file = open_data_file(&dir, &config, geometry, &db)?;
        let table = load_table(&dir, &db, slots32)?;
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
                name,
                dir,
                slot_bytes: config.slot_bytes,
                slot_stride,
                sync_writes: config.sync_writes,
                file: Arc::new(file),
                index,
                table: Mutex::new(table),
                bufs,
                uring,
                counters: TierCounters::default(),
            }),
        })
    }

    /// Path of the slot file (tests use it to damage blocks on purpose).
    pub fn data_file(&self) -> PathBuf {
        self.inner.dir.join(DATA_FILE)
    }

    /// Byte offset of `key`'s slot in the slot file, if the block is present.
    pub fn slot_offset(&self, key: BlockKey) -> Option<u64> {
        let mut table = lock(&self.inner.table);
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
) -> Result<File> {
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
        return Ok(file);
    }
    if len != 0 && len != expected_len {
        return Err(layout_err(format!(
            "file has {len} bytes but no index; expected an empty file or {expected_len} bytes"
        )));
    }
    preallocate(&file, expected_len).map_err(|e| {
        TierError::io(
            format!("preallocating {expected_len} bytes for {}", path.display()),
            e,
        )
    })?;
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    index
        .put_opt(META_KEY, geometry.encode(), &wo)
        .map_err(index_error(dir))?;
    Ok(file)
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
        TierCounters::add(&self.counters.io_errors, 1);
        TierError::io(format!("disk tier `{}`: {context}", self.name), e)
    }

    async fn write_slot(&self, key: BlockKey, slot: u32, data: &[u8]) -> Result<()> {
        let mut buf = self.bufs.take();
        let total = HEADER_LEN + data.len();
        {
            let b = buf.full_mut();
            b[..HEADER_LEN].copy_from_slice(&header::encode(key, data));
            b[HEADER_LEN..total].copy_from_slice(data);
            let padded = align_up(total);
            b[total..padded].fill(0);
        }
        let offset = slot as u64 * self.slot_stride as u64;
        let done = self
            .uring
            .submit(
                IoKind::Write,
                Arc::clone(&self.file),
                buf.into_inner(),
                offset,
                align_up(total),
                self.sync_writes,
            )
            .await
            .map_err(|_| TierError::Closed(self.name.clone()))?;
        drop(PooledBuf::from_parts(done.buf, &self.bufs));
        done.result
            .map_err(|e| self.io_error(&format!("writing slot {slot}"), e))?;
        self.index.put(key, slot, data.len() as u64).await
    }

    /// Reads and verifies a slot. `Ok(None)`: the slot does not hold this block.
    async fn read_slot(&self, key: BlockKey, slot: u32, len: u64) -> Result<Option<Bytes>> {
        let total = HEADER_LEN + len as usize;
        let offset = slot as u64 * self.slot_stride as u64;
        let done = self
            .uring
            .submit(
                IoKind::Read,
                Arc::clone(&self.file),
                self.bufs.take().into_inner(),
                offset,
                align_up(total),
                false,
            )
            .await
            .map_err(|_| TierError::Closed(self.name.clone()))?;
        let mut buf = PooledBuf::from_parts(done.buf, &self.bufs);
        done.result
            .map_err(|e| self.io_error(&format!("reading slot {slot}"), e))?;
        match header::verify(buf.full(), key, Some(len)) {
            Ok(_) => {
                buf.set_range(HEADER_LEN..total);
                Ok(Some(Bytes::from_owner(buf)))
            }
            Err(why) => {
                TierCounters::add(&self.counters.corrupt_blocks, 1);
                tracing::warn!(tier = %self.name, %key, slot, %why, "corrupt block on disk; dropping it");
                Ok(None)
            }
        }
    }

    async fn forget(&self, key: BlockKey) -> Result<bool> {
        let removed = lock(&self.table).remove(key).is_some();
        if removed {
            self.index.delete(key).await?;
        }
        Ok(removed)
    }
}

#[async_trait]
impl Tier for DiskTier {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Disk
    }
    fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }
    fn capacity_blocks(&self) -> u64 {
        lock(&self.inner.table).capacity()
    }
    fn used_bytes(&self) -> u64 {
        lock(&self.inner.table).used_bytes()
    }
    fn len(&self) -> u64 {
        lock(&self.inner.table).len()
    }
    fn is_persistent(&self) -> bool {
        true
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome> {
        check_payload(&self.inner.name, self.inner.slot_bytes, &data)?;
        // Bind first: the table's lock must be released before `capacity_blocks` takes it.
        let reservation = lock(&self.inner.table).reserve(key);
        let slot = match reservation {
            Reservation::Present => return Ok(PutOutcome::AlreadyPresent),
            Reservation::Full => {
                return Err(TierError::Full {
                    tier: self.inner.name.clone(),
                    capacity_blocks: self.capacity_blocks(),
                });
            }
            Reservation::Reserved(slot) => slot,
        };
        // The write runs as its own task so that a caller that gives up half-way
        // cannot leave the slot reserved forever or reuse it while the kernel writes.
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(async move {
            let len = data.len() as u64;
            match inner.write_slot(key, slot, &data).await {
                Ok(()) => {
                    if !lock(&inner.table).commit(slot, len) {
                        // Removed while being written: drop the index entry we just wrote.
                        inner.index.delete(key).await?;
                    }
                    TierCounters::add(&inner.counters.puts, 1);
                    TierCounters::add(&inner.counters.put_bytes, len);
                    Ok(PutOutcome::Stored)
                }
                Err(e) => {
                    lock(&inner.table).abort(key, slot);
                    Err(e)
                }
            }
        });
        task.await
            .map_err(|e| TierError::io("disk put task", std::io::Error::other(e.to_string())))?
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>> {
        let inner = Arc::clone(&self.inner);
        TierCounters::add(&inner.counters.gets, 1);
        let Some((slot, len)) = lock(&inner.table).acquire(key) else {
            TierCounters::add(&inner.counters.misses, 1);
            return Ok(None);
        };
        let task = tokio::spawn(async move {
            let result = inner.read_slot(key, slot, len).await;
            lock(&inner.table).release_reader(slot);
            match result {
                Ok(Some(data)) => {
                    TierCounters::add(&inner.counters.hits, 1);
                    TierCounters::add(&inner.counters.get_bytes, len);
                    Ok(Some(data))
                }
                Ok(None) => {
                    TierCounters::add(&inner.counters.misses, 1);
                    inner.forget(key).await?;
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        });
        task.await
            .map_err(|e| TierError::io("disk get task", std::io::Error::other(e.to_string())))?
    }

    async fn contains(&self, key: BlockKey) -> Result<bool> {
        Ok(lock(&self.inner.table).contains(key))
    }

    async fn remove(&self, key: BlockKey) -> Result<bool> {
        let removed = self.inner.forget(key).await?;
        if removed {
            TierCounters::add(&self.inner.counters.removes, 1);
        }
        Ok(removed)
    }

    async fn keys(&self) -> Result<Vec<(BlockKey, u64)>> {
        Ok(lock(&self.inner.table).ready_keys())
    }

    fn stats(&self) -> TierStats {
        let (used, blocks) = {
            let t = lock(&self.inner.table);
            (t.used_bytes(), t.len())
        };
        self.inner.counters.snapshot(
            &self.inner.name,
            TierKind::Disk,
            self.capacity_bytes(),
            used,
            blocks,
        )
    }
}

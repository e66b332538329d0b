//! The disk tier's RocksDB index: block key -> (slot, length), plus the slot file's
//! geometry. Opened and loaded once, off the async runtime; every later change goes
//! through one writer thread that groups concurrent changes into one `WriteBatch`
//! (one WAL append, and one WAL sync with `sync_writes`), so no RocksDB write, and no
//! fsync, ever runs on a tokio worker.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::lock;
use super::slots::SlotTable;
use crate::{BlockKey, Result, TierError};

pub(super) const INDEX_DIR: &str = "index";
pub(super) const META_KEY: &[u8] = b"\0meta";
const BLOCK_PREFIX: u8 = b'b';
pub(super) const DISK_FORMAT: u32 = 1;
/// Changes folded into one batch at most.
const MAX_BATCH: usize = 256;

/// The geometry recorded in the index so a reopen with other settings is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Geometry {
    pub(super) slot_stride: u64,
    pub(super) slots: u64,
}

impl Geometry {
    pub(super) fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..4].copy_from_slice(&DISK_FORMAT.to_le_bytes());
        v[4..12].copy_from_slice(&self.slot_stride.to_le_bytes());
        v[12..20].copy_from_slice(&self.slots.to_le_bytes());
        v
    }

    pub(super) fn decode(v: &[u8]) -> Option<(u32, Geometry)> {
        if v.len() != 20 {
            return None;
        }
        let format = u32::from_le_bytes(v[..4].try_into().ok()?);
        let slot_stride = u64::from_le_bytes(v[4..12].try_into().ok()?);
        let slots = u64::from_le_bytes(v[12..20].try_into().ok()?);
        Some((format, Geometry { slot_stride, slots }))
    }
}

pub(super) fn index_key(key: BlockKey) -> [u8; 1 + BlockKey::ENCODED_LEN] {
    let mut k = [0u8; 1 + BlockKey::ENCODED_LEN];
    k[0] = BLOCK_PREFIX;
    k[1..].copy_from_slice(&key.to_bytes());
    k
}

pub(super) fn index_value(slot: u32, len: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&slot.to_le_bytes());
    v[4..].copy_from_slice(&len.to_le_bytes());
    v
}

fn parse_index_value(v: &[u8]) -> Option<(u32, u64)> {
    if v.len() != 12 {
        return None;
    }
    Some((
        u32::from_le_bytes(v[..4].try_into().ok()?),
        u64::from_le_bytes(v[4..].try_into().ok()?),
    ))
}

/// Decodes an index record the way a reopen does (a fuzz target's entry).
pub(crate) fn fuzz_record(key: &[u8], value: &[u8]) -> bool {
    let mut accepted = false;
    if key.first() == Some(&BLOCK_PREFIX)
        && let Some(k) = BlockKey::from_bytes(&key[1..])
        && let Some((slot, len)) = parse_index_value(value)
    {
        assert_eq!(index_key(k)[..], key[..]);
        assert_eq!(index_value(slot, len)[..], value[..]);
        accepted = true;
    }
    if let Some((_format, g)) = Geometry::decode(value) {
        assert_eq!(&Geometry::encode(&g)[4..], &value[4..]);
        accepted = true;
    }
    accepted
}

pub(super) fn index_error(dir: &Path) -> impl FnOnce(rocksdb::Error) -> TierError + '_ {
    move |source| TierError::Index {
        path: dir.join(INDEX_DIR),
        source,
    }
}

/// Opens (creating) the RocksDB index in `dir/index`. Blocking.
pub(super) fn open_db(dir: &Path) -> Result<rocksdb::DB> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    // The index is small (36 bytes a block); keep RocksDB's footprint small too.
    opts.set_max_background_jobs(1);
    opts.set_write_buffer_size(8 << 20);
    rocksdb::DB::open(&opts, dir.join(INDEX_DIR)).map_err(index_error(dir))
}

/// Reads every block entry into a slot table of `slots` slots, deleting entries that
/// do not parse or collide. Blocking.
pub(super) fn load_table(dir: &Path, db: &rocksdb::DB, slots: u32) -> Result<SlotTable> {
    let mut table = SlotTable::new(slots);
    let mut bad = Vec::new();
    for item in db.prefix_iterator([BLOCK_PREFIX]) {
        let (k, v) = item.map_err(index_error(dir))?;
        if k.first() != Some(&BLOCK_PREFIX) {
            break;
        }
        let placed = match (BlockKey::from_bytes(&k[1..]), parse_index_value(&v)) {
            (Some(key), Some((slot, len))) => table.insert_ready(key, slot, len),
            _ => false,
        };
        if !placed {
            bad.push(k);
        }
    }
    if !bad.is_empty() {
        tracing::warn!(dir = %dir.display(), entries = bad.len(), "dropping invalid disk index entries");
        for k in bad {
            db.delete(k).map_err(index_error(dir))?;
        }
    }
    Ok(table)
}

enum Change {
    Put { key: BlockKey, slot: u32, len: u64 },
    Delete(BlockKey),
}

struct Op {
    change: Change,
    done: oneshot::Sender<std::result::Result<(), rocksdb::Error>>,
}

/// The index after opening: changes are applied by its writer thread.
pub(super) struct DiskIndex {
    dir: PathBuf,
    ops: Mutex<Option<Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl DiskIndex {
    /// Starts the writer thread over `db`; `sync`: every batch syncs the WAL.
    pub(super) fn start(name: &str, dir: &Path, db: rocksdb::DB, sync: bool) -> Result<DiskIndex> {
        let (tx, rx) = mpsc::channel();
        let db = Arc::new(db);
        let writer = std::thread::Builder::new()
            .name(format!("{name}-index"))
            .spawn(move || write_loop(&db, rx, sync))
            .map_err(|e| {
                TierError::io(format!("disk tier `{name}`: starting the index writer"), e)
            })?;
        Ok(DiskIndex {
            dir: dir.to_path_buf(),
            ops: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records that `key` lives in `slot` with a payload of `len` bytes.
    pub(super) async fn put(&self, key: BlockKey, slot: u32, len: u64) -> Result<()> {
        crate::failpoint::check("index.write")
            .map_err(|e| TierError::io(format!("disk index {}", self.dir.display()), e))?;
        self.apply(Change::Put { key, slot, len }).await
    }

    /// Forgets `key`.
    pub(super) async fn delete(&self, key: BlockKey) -> Result<()> {
        self.apply(Change::Delete(key)).await
    }

    async fn apply(&self, change: Change) -> Result<()> {
        let (done, result) = oneshot::channel();
        let sent = match lock(&self.ops).as_ref() {
            Some(ops) => ops.send(Op { change, done }).is_ok(),
            None => false,
        };
        let closed = || {
            TierError::io(
                format!("disk index {}", self.dir.display()),
                std::io::Error::other("the index writer has stopped"),
            )
        };
        if !sent {
            return Err(closed());
        }
        result
            .await
            .map_err(|_| closed())?
            .map_err(index_error(&self.dir))
    }
}

impl Drop for DiskIndex {
    fn drop(&mut self) {
        // Closing the channel lets the writer apply what is queued and exit.
        lock(&self.ops).take();
        if let Some(writer) = lock(&self.writer).take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "the disk index writer panicked");
        }
    }
}

fn write_loop(db: &rocksdb::DB, ops: Receiver<Op>, sync: bool) {
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(sync);
    let mut pending = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = ops.recv() {
        pending.push(first);
        while pending.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => pending.push(op),
                Err(_) => break,
            }
        }
        let mut batch = rocksdb::WriteBatch::default();
        for op in &pending {
            match op.change {
                Change::Put { key, slot, len } => batch.put(index_key(key), index_value(slot, len)),
                Change::Delete(key) => batch.delete(index_key(key)),
            }
        }
        let result = db.write_opt(batch, &wo);
        for op in pending.drain(..) {
            // A caller that gave up is fine.
            let _ = op.done.send(result.clone());
        }
    }
}

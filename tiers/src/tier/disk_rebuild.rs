//! Rebuilding the disk tier's index from its slot file, when the index is missing
//! (deleted) or damaged (RocksDB refuses to open it). Every slot starts with the block
//! header, which names the block's key and length under its own checksum, so the
//! index is recomputed from the slots whose headers are intact; a damaged index is
//! moved aside (`index.damaged-<unix seconds>`), never deleted. Every read still
//! verifies the whole block, so a slot whose payload was torn is a miss, not data.
//!
//! Blocks evicted or removed after they were written may come back this way (their
//! slots were not overwritten): they are the same bytes under the same key.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::disk_index::{Geometry, INDEX_DIR, index_error, index_key, index_value};
use crate::header::{HEADER_LEN, read_header};
use crate::{BlockKey, Result, TierError};

/// Index records written per RocksDB batch while rebuilding.
const BATCH: usize = 4096;

/// Whether a failure to open the index means it is damaged (and may be rebuilt), not
/// that it is in use or the disk is failing: corruption, or files of it missing.
pub(super) fn is_damage(e: &rocksdb::Error) -> bool {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => true,
        rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::NotFound => {
            let m = e.to_string();
            m.contains("No such file") && !m.contains("LOCK")
        }
        _ => false,
    }
}

/// Moves a damaged index out of the way; the path it now has.
pub(super) fn move_aside(dir: &Path) -> Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let from = dir.join(INDEX_DIR);
    let mut to = dir.join(format!("{INDEX_DIR}.damaged-{secs}"));
    for n in 1.. {
        if !to.exists() {
            break;
        }
        to = dir.join(format!("{INDEX_DIR}.damaged-{secs}-{n}"));
    }
    std::fs::rename(&from, &to).map_err(|e| {
        TierError::io(
            format!("moving the damaged index {} aside", from.display()),
            e,
        )
    })?;
    Ok(to)
}

/// What a rebuild found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Rebuilt {
    /// Slots whose header names a block: now indexed.
    pub(super) blocks: u64,
    /// Slots with a well-formed header that cannot be this tier's (longer than a slot)
    /// or naming a key another slot already had.
    pub(super) skipped: u64,
}

/// Indexes every slot of `data_file` whose header is intact. Blocking.
pub(super) fn rebuild_index(
    dir: &Path,
    db: &rocksdb::DB,
    data_file: &Path,
    geometry: Geometry,
) -> Result<Rebuilt> {
    let file = std::fs::File::open(data_file)
        .map_err(|e| TierError::io(format!("opening {}", data_file.display()), e))?;
    let mut header = [0u8; HEADER_LEN];
    let mut seen: HashSet<BlockKey> = HashSet::new();
    let mut found = Rebuilt::default();
    let mut batch = rocksdb::WriteBatch::default();
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(true);
    for slot in 0..geometry.slots {
        let offset = slot * geometry.slot_stride;
        file.read_exact_at(&mut header, offset).map_err(|e| {
            TierError::io(format!("reading slot {slot} of {}", data_file.display()), e)
        })?;
        let Ok(h) = read_header(&header) else {
            continue;
        };
        let fits = h.len + HEADER_LEN as u64 <= geometry.slot_stride;
        let Ok(slot32) = u32::try_from(slot) else {
            break;
        };
        if !fits || !seen.insert(h.key) {
            found.skipped += 1;
            continue;
        }
        batch.put(index_key(h.key), index_value(slot32, h.len));
        found.blocks += 1;
        if batch.len() >= BATCH {
            db.write_opt(std::mem::take(&mut batch), &wo)
                .map_err(index_error(dir))?;
        }
    }
    db.write_opt(batch, &wo).map_err(index_error(dir))?;
    Ok(found)
}

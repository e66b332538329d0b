use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::TierKind;

/// Counters every tier keeps; cheap to bump from any thread.
#[derive(Default, Debug)]
pub struct TierCounters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub get_bytes: AtomicU64,
    pub removes: AtomicU64,
    /// Blocks that failed verification on read (reported as misses, then dropped).
    pub corrupt_blocks: AtomicU64,
    pub io_errors: AtomicU64,
}

impl TierCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn snapshot(
        &self,
        name: &str,
        kind: TierKind,
        capacity_bytes: u64,
        slot_bytes: usize,
        payload_bytes: u64,
        blocks: u64,
    ) -> TierStats {
        TierStats {
            name: name.to_string(),
            kind,
            capacity_bytes,
            used_bytes: blocks.saturating_mul(slot_bytes as u64),
            payload_bytes,
            blocks,
            puts: self.puts.load(Relaxed),
            put_bytes: self.put_bytes.load(Relaxed),
            gets: self.gets.load(Relaxed),
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            get_bytes: self.get_bytes.load(Relaxed),
            removes: self.removes.load(Relaxed),
            corrupt_blocks: self.corrupt_blocks.load(Relaxed),
            io_errors: self.io_errors.load(Relaxed),
        }
    }
}

/// A point-in-time copy of a tier's counters and occupancy.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TierStats {
    pub name: String,
    pub kind: TierKind,
    pub capacity_bytes: u64,
    /// The capacity the blocks take (a whole slot each): what fills the tier.
    pub used_bytes: u64,
    /// Sum of the blocks' payload lengths.
    pub payload_bytes: u64,
    pub blocks: u64,
    pub puts: u64,
    pub put_bytes: u64,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    pub get_bytes: u64,
    pub removes: u64,
    pub corrupt_blocks: u64,
    pub io_errors: u64,
}

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::TierKind;

/// Counters every tier keeps; cheap to bump from any thread.
#[derive(Default, Debug)]
pub struct TierCounters {
    /// Blocks stored.
    pub puts: AtomicU64,
    /// Payload bytes stored.
    pub put_bytes: AtomicU64,
    /// Reads.
    pub gets: AtomicU64,
    /// Reads that returned their block.
    pub hits: AtomicU64,
    /// Reads that did not (absent, or failed verification).
    pub misses: AtomicU64,
    /// Payload bytes read.
    pub get_bytes: AtomicU64,
    /// Blocks removed (evictions and explicit removes).
    pub removes: AtomicU64,
    /// Blocks that failed verification on read (reported as misses, then dropped).
    pub corrupt_blocks: AtomicU64,
    /// I/O operations that failed.
    pub io_errors: AtomicU64,
}

impl TierCounters {
    /// Adds `n` to one of the counters.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The counters now, with the tier's identity and occupancy: `used_bytes` is
    /// `blocks` whole slots of `slot_bytes`.
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
    /// The tier's name.
    pub name: String,
    /// Its medium.
    pub kind: TierKind,
    /// Its capacity in bytes.
    pub capacity_bytes: u64,
    /// The capacity the blocks take (a whole slot each): what fills the tier.
    pub used_bytes: u64,
    /// Sum of the blocks' payload lengths.
    pub payload_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// See [`TierCounters::puts`].
    pub puts: u64,
    /// See [`TierCounters::put_bytes`].
    pub put_bytes: u64,
    /// See [`TierCounters::gets`].
    pub gets: u64,
    /// See [`TierCounters::hits`].
    pub hits: u64,
    /// See [`TierCounters::misses`].
    pub misses: u64,
    /// See [`TierCounters::get_bytes`].
    pub get_bytes: u64,
    /// See [`TierCounters::removes`].
    pub removes: u64,
    /// See [`TierCounters::corrupt_blocks`].
    pub corrupt_blocks: u64,
    /// See [`TierCounters::io_errors`].
    pub io_errors: u64,
}

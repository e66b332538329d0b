//! What the slotted tiers (host memory, disk, GPU) share besides their medium: the
//! tier's name and slot size, its [`SlotTable`] and its counters, and the [`Tier`]
//! answers that come from them alone (occupancy, `contains`, `keys`, `stats`, the
//! `Full` error). Each tier keeps only how bytes reach its medium.
//!
//! [`Tier`]: super::Tier

use std::sync::{Mutex, MutexGuard};

use super::slots::SlotTable;
use super::{TierKind, lock};
use crate::{BlockKey, TierCounters, TierError, TierStats};

/// The shared part of a slotted tier.
pub(crate) struct SlottedCore {
    /// The tier's name.
    pub(crate) name: String,
    /// Largest block payload.
    pub(crate) slot_bytes: usize,
    /// The tier's counters.
    pub(crate) counters: TierCounters,
    kind: TierKind,
    /// Fixed at construction, so reading it takes no lock (and an error built while
    /// the table is locked cannot deadlock on it).
    capacity_blocks: u64,
    table: Mutex<SlotTable>,
}

impl SlottedCore {
    pub(crate) fn new(name: String, kind: TierKind, slot_bytes: usize, table: SlotTable) -> Self {
        SlottedCore {
            name,
            slot_bytes,
            counters: TierCounters::default(),
            kind,
            capacity_blocks: table.capacity(),
            table: Mutex::new(table),
        }
    }

    /// The slot table, locked. Keep the guard out of `match` scrutinees (the workspace
    /// lints say why).
    pub(crate) fn table(&self) -> MutexGuard<'_, SlotTable> {
        lock(&self.table)
    }

    pub(crate) fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }

    pub(crate) fn payload_bytes(&self) -> u64 {
        self.table().used_bytes()
    }

    pub(crate) fn len(&self) -> u64 {
        self.table().len()
    }

    pub(crate) fn contains(&self, key: BlockKey) -> bool {
        self.table().contains(key)
    }

    pub(crate) fn ready_keys(&self) -> Vec<(BlockKey, u64)> {
        self.table().ready_keys()
    }

    /// Counts one removed block.
    pub(crate) fn count_remove(&self) {
        TierCounters::add(&self.counters.removes, 1);
    }

    /// Forgets `key` from the table (its slot is recycled when its last user leaves)
    /// and counts it; for tiers with nothing to forget outside the table.
    pub(crate) fn remove(&self, key: BlockKey) -> bool {
        let removed = self.table().remove(key).is_some();
        if removed {
            self.count_remove();
        }
        removed
    }

    /// Counts one stored block of `len` bytes.
    pub(crate) fn count_put(&self, len: usize) {
        TierCounters::add(&self.counters.puts, 1);
        TierCounters::add(&self.counters.put_bytes, len as u64);
    }

    /// The error of a put into a full tier.
    pub(crate) fn full(&self) -> TierError {
        TierError::Full {
            tier: self.name.clone(),
            capacity_blocks: self.capacity_blocks,
        }
    }

    pub(crate) fn stats(&self) -> TierStats {
        let (used, blocks) = {
            let t = self.table();
            (t.used_bytes(), t.len())
        };
        self.counters.snapshot(
            &self.name,
            self.kind,
            self.capacity_blocks * self.slot_bytes as u64,
            self.slot_bytes,
            used,
            blocks,
        )
    }
}

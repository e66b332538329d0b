//! The store's public value types: policies, events, options and statistics.

use std::sync::atomic::AtomicU64;

use serde::Serialize;
use tierkv_tiers::{BlockKey, TierStats};

use crate::config::EvictPolicy;

/// How the store treats one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierPolicy {
    /// Every put also goes to this tier (lower tiers only).
    pub write_through: bool,
    /// What happens to an evicted block.
    pub on_evict: EvictPolicy,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            write_through: false,
            on_evict: EvictPolicy::Demote,
        }
    }
}

/// A block entered or left a tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEventKind {
    /// The block was written into the tier.
    Stored,
    /// The block left the tier (evicted, demoted or removed).
    Removed,
}

/// One change of the store's content, for routers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreEvent {
    /// Increases by one per event.
    pub seq: u64,
    /// Entered or left.
    pub kind: StoreEventKind,
    /// Index of the tier in the store (0 = top).
    pub tier: usize,
    /// The block.
    pub key: BlockKey,
}

#[derive(Default)]
pub(crate) struct PolicyCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) demotions: AtomicU64,
    pub(crate) demotion_failures: AtomicU64,
    pub(crate) promotions: AtomicU64,
    pub(crate) promotions_skipped: AtomicU64,
}

/// Per-tier statistics: the tier's own and the store's policy counters.
#[derive(Clone, Debug, Serialize)]
pub struct TierStoreStats {
    /// The tier's own counters.
    pub tier: TierStats,
    /// Gets served by this tier.
    pub hits: u64,
    /// Gets that reached this tier and found nothing.
    pub misses: u64,
    /// Bytes of the gets this tier served.
    pub bytes_read: u64,
    /// Bytes the store wrote into this tier (puts, demotions, promotions).
    pub bytes_written: u64,
    /// Blocks the store evicted from this tier to make room.
    pub evictions: u64,
    /// Blocks moved from this tier to the next on eviction.
    pub demotions: u64,
    /// Demotions that failed (the block was dropped instead).
    pub demotion_failures: u64,
    /// Blocks copied from this tier into the top tier after a hit.
    pub promotions: u64,
    /// Hits not promoted because the promoter's queue was full.
    pub promotions_skipped: u64,
}

/// A point-in-time view of the whole store.
#[derive(Clone, Debug, Serialize)]
pub struct StoreStats {
    /// Each tier, top first.
    pub tiers: Vec<TierStoreStats>,
    /// Distinct blocks held in any tier.
    pub blocks: u64,
    /// Blocks pinned now (by readers and writers in flight).
    pub pinned: u64,
}

/// Options of a store built from tiers directly.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Copy lower-tier hits into the top tier, in the background. Default true.
    pub promote_on_hit: bool,
    /// Events a subscriber may fall behind by. Default 4096.
    pub event_buffer: usize,
    /// Promotions waiting for the promoter; more hits are not promoted. Default 64.
    pub promote_queue: usize,
    /// The share of a full tier's blocks that a namespace (a tenant) keeps when other
    /// namespaces need room, while some namespace holds more: one tenant's burst
    /// cannot flush another's working set. 0 turns it off. Default 0.125.
    pub namespace_min_share: f64,
    /// The share of a full tier's blocks past which a namespace makes room from its own
    /// blocks instead of others' (free room is still used). 1 turns it off. Default 1.
    pub namespace_max_share: f64,
}

impl StoreOptions {
    pub(crate) fn shares(&self) -> crate::Result<super::index::Shares> {
        let (min, max) = (self.namespace_min_share, self.namespace_max_share);
        if !(0.0..=1.0).contains(&min) || !(0.0..=1.0).contains(&max) || min > max || max == 0.0 {
            return Err(crate::KvStoreError::Config(format!(
                "namespace shares must satisfy 0 <= namespace_min_share ({min}) <= \
                 namespace_max_share ({max}) <= 1, with namespace_max_share > 0"
            )));
        }
        Ok(super::index::Shares { min, max })
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            promote_on_hit: true,
            event_buffer: 4096,
            promote_queue: 64,
            namespace_min_share: 0.125,
            namespace_max_share: 1.0,
        }
    }
}

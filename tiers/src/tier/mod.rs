//! The [`Tier`] trait: a bounded, content-addressed pool of blocks on one medium.
//! One sibling module per medium.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use crate::{BlockKey, Result, TierStats};

pub mod disk;
pub(crate) mod disk_buffers;
pub(crate) mod disk_index;
mod disk_rebuild;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod host;
pub mod object;
mod slots;
mod slotted;

/// Which medium a tier lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TierKind {
    /// GPU memory (HBM) held by tierkv (`GpuTier`, feature `cuda`).
    Gpu,
    /// Host memory ([`crate::HostTier`]).
    Host,
    /// A file on local storage through io_uring ([`crate::DiskTier`]).
    Disk,
    /// Object storage ([`crate::ObjectTier`]).
    Object,
    /// A peer's block service used as a tier (see `tierkv-kvstore`).
    Remote,
}

impl std::fmt::Display for TierKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TierKind::Gpu => "gpu",
            TierKind::Host => "host",
            TierKind::Disk => "disk",
            TierKind::Object => "object",
            TierKind::Remote => "remote",
        })
    }
}

/// What a `put` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The block was written.
    Stored,
    /// The tier already held (or was already writing) a block under this key; blocks
    /// are content-addressed, so nothing was written.
    AlreadyPresent,
}

/// A bounded pool of blocks on one medium.
///
/// Tiers do not evict: a `put` into a full tier fails with [`crate::TierError::Full`],
/// and the caller (the tiered store, which owns the policy) chooses a victim.
/// A block that fails verification on read is reported as a miss (`Ok(None)`), counted
/// in [`TierStats::corrupt_blocks`] and dropped; wrong bytes are never returned.
#[async_trait]
pub trait Tier: Send + Sync + 'static {
    /// The configured name, unique within a store (`host`, `disk`, `s3`, ...).
    fn name(&self) -> &str;
    /// The medium.
    fn kind(&self) -> TierKind;
    /// The largest payload one block may have.
    fn slot_bytes(&self) -> usize;
    /// How many blocks fit.
    fn capacity_blocks(&self) -> u64;
    /// `capacity_blocks * slot_bytes`.
    fn capacity_bytes(&self) -> u64 {
        self.capacity_blocks() * self.slot_bytes() as u64
    }
    /// The capacity the held blocks take: a whole slot each, whatever its payload, so
    /// `used_bytes == capacity_bytes` exactly when the tier is full.
    fn used_bytes(&self) -> u64 {
        self.len().saturating_mul(self.slot_bytes() as u64)
    }
    /// Sum of the payload lengths of the blocks held.
    fn payload_bytes(&self) -> u64;
    /// Number of blocks held (including those being written).
    fn len(&self) -> u64;
    /// `len() == 0`.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether blocks survive a restart of the process.
    fn is_persistent(&self) -> bool;
    /// Whether the tier's content is known to its owner (so a store can index it in
    /// memory). A peer's block service is not: it is asked on a local miss.
    fn is_indexed(&self) -> bool {
        true
    }
    /// Whether the tier takes puts (a read-only peer does not).
    fn accepts_puts(&self) -> bool {
        true
    }
    /// Tells the tier the full name behind a namespace digest. Local media store by
    /// digest and ignore it; a peer's block service needs the name on the wire.
    fn register_namespace(&self, _name: &str) {}

    /// Stores `data` under `key`. A no-op when the key is already present.
    async fn put(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome>;
    /// The block's payload, or `None` if absent or found corrupt.
    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>>;
    /// Whether the tier holds `key` (without reading or verifying its payload).
    async fn contains(&self, key: BlockKey) -> Result<bool>;
    /// Removes a block; `false` if it was not there.
    async fn remove(&self, key: BlockKey) -> Result<bool>;
    /// Every key held, with its payload length: how a store rebuilds its index over a
    /// persistent tier after a restart.
    async fn keys(&self) -> Result<Vec<(BlockKey, u64)>>;

    /// How many leading `keys` the tier holds. Tiers that answer a whole prefix in one
    /// request (a peer's block service) override this.
    async fn lookup_prefix(&self, keys: &[BlockKey]) -> Result<usize> {
        let mut n = 0;
        for key in keys {
            if !self.contains(*key).await? {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// The tier's counters and occupancy now.
    fn stats(&self) -> TierStats;
}

pub(crate) use crate::sync::lock;

//! A metadata-only tier for `replay --simulate`: it keeps which keys it holds and their
//! lengths within the same capacity as the real tier it stands for, and stores no
//! bytes. Under it the real `TieredStore` runs its real policy, so simulated and real
//! replays make the same decisions.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tierkv_tiers::{BlockKey, PutOutcome, Tier, TierCounters, TierError, TierKind, TierStats};

pub(super) struct SimTier {
    name: String,
    kind: TierKind,
    slot_bytes: usize,
    capacity_blocks: u64,
    blocks: Mutex<HashMap<BlockKey, u64>>,
    /// Shared zeroes handed out as "data" (sliced, never copied).
    zeroes: Bytes,
    counters: TierCounters,
}

impl SimTier {
    pub(super) fn new(
        name: &str,
        kind: TierKind,
        slot_bytes: usize,
        capacity_blocks: u64,
    ) -> SimTier {
        SimTier {
            name: name.to_string(),
            kind,
            slot_bytes,
            capacity_blocks,
            blocks: Mutex::new(HashMap::new()),
            zeroes: Bytes::from(vec![0u8; slot_bytes]),
            counters: TierCounters::default(),
        }
    }

    fn blocks(&self) -> std::sync::MutexGuard<'_, HashMap<BlockKey, u64>> {
        tierkv_tiers::sync::lock(&self.blocks)
    }
}

#[async_trait]
impl Tier for SimTier {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> TierKind {
        self.kind
    }
    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    fn capacity_blocks(&self) -> u64 {
        self.capacity_blocks
    }
    fn payload_bytes(&self) -> u64 {
        self.blocks().values().sum()
    }
    fn len(&self) -> u64 {
        self.blocks().len() as u64
    }
    fn is_persistent(&self) -> bool {
        false
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> tierkv_tiers::Result<PutOutcome> {
        tierkv_tiers::check_payload(&self.name, self.slot_bytes, &data)?;
        let mut blocks = self.blocks();
        if blocks.contains_key(&key) {
            return Ok(PutOutcome::AlreadyPresent);
        }
        if blocks.len() as u64 >= self.capacity_blocks {
            return Err(TierError::Full {
                tier: self.name.clone(),
                capacity_blocks: self.capacity_blocks,
            });
        }
        blocks.insert(key, data.len() as u64);
        TierCounters::add(&self.counters.puts, 1);
        TierCounters::add(&self.counters.put_bytes, data.len() as u64);
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, key: BlockKey) -> tierkv_tiers::Result<Option<Bytes>> {
        TierCounters::add(&self.counters.gets, 1);
        let len = self.blocks().get(&key).copied();
        match len {
            Some(len) => {
                TierCounters::add(&self.counters.hits, 1);
                TierCounters::add(&self.counters.get_bytes, len);
                Ok(Some(self.zeroes.slice(..len as usize)))
            }
            None => {
                TierCounters::add(&self.counters.misses, 1);
                Ok(None)
            }
        }
    }

    async fn contains(&self, key: BlockKey) -> tierkv_tiers::Result<bool> {
        Ok(self.blocks().contains_key(&key))
    }

    async fn remove(&self, key: BlockKey) -> tierkv_tiers::Result<bool> {
        let removed = self.blocks().remove(&key).is_some();
        if removed {
            TierCounters::add(&self.counters.removes, 1);
        }
        Ok(removed)
    }

    async fn keys(&self) -> tierkv_tiers::Result<Vec<(BlockKey, u64)>> {
        Ok(self.blocks().iter().map(|(k, l)| (*k, *l)).collect())
    }

    fn stats(&self) -> TierStats {
        let (used, n) = {
            let b = self.blocks();
            (b.values().sum(), b.len() as u64)
        };
        self.counters.snapshot(
            &self.name,
            self.kind,
            self.capacity_bytes(),
            self.slot_bytes,
            used,
            n,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tierkv_tiers::testing::conformance::Capabilities;
    use tierkv_tiers::{Tier, TierKind};

    use super::SimTier;

    // The simulated tier keeps lengths, not bytes: the suite checks lengths only.
    tierkv_tiers::tier_conformance_tests!(sim_tier, Capabilities::metadata_only(), async {
        let tier: Arc<dyn Tier> = Arc::new(SimTier::new("sim", TierKind::Host, 64 << 10, 24));
        (tier, ())
    });
}

//! The tiered store's in-memory index: which tiers hold each block, LRU order per
//! tier, pins and reservations. All of it sits behind one mutex held for short,
//! I/O-free critical sections; `lookup_prefix` walks it in a single pass.

use lru::LruCache;
use tierkv_tiers::{BlockKey, BlockKeyMap, BuildBlockKeyHasher};

/// Bit `t` set: tier `t` holds the block.
pub(crate) type TierMask = u8;

pub(crate) struct StoreIndex {
    pub(crate) location: BlockKeyMap<TierMask>,
    /// Per tier, blocks from most to least recently used.
    pub(crate) lru: Vec<LruCache<BlockKey, (), BuildBlockKeyHasher>>,
    /// Per tier, puts admitted but not yet finished.
    pub(crate) reserved: Vec<u64>,
    /// Blocks that must not be chosen for eviction (being read, transferred or evicted).
    pub(crate) pins: BlockKeyMap<u32>,
    /// Per tier, evictions in progress.
    pub(crate) evicting: Vec<u32>,
}

/// What `reserve` decided.
pub(crate) enum Admission {
    /// The tier holds the block already.
    Present,
    /// Room was reserved; the caller must call `finish_put`.
    Reserved,
    /// Evict this (now pinned) victim first, then try again.
    Evict(BlockKey),
    /// Full and every block pinned, but evictions or puts are in flight: wait for them.
    Wait,
    /// Full, every block pinned, nothing in flight.
    NoRoom,
}

impl StoreIndex {
    pub(crate) fn new(tiers: usize) -> StoreIndex {
        StoreIndex {
            location: BlockKeyMap::default(),
            lru: (0..tiers)
                .map(|_| LruCache::unbounded_with_hasher(BuildBlockKeyHasher))
                .collect(),
            reserved: vec![0; tiers],
            pins: BlockKeyMap::default(),
            evicting: vec![0; tiers],
        }
    }

    pub(crate) fn mask(&self, key: &BlockKey) -> TierMask {
        self.location.get(key).copied().unwrap_or(0)
    }

    pub(crate) fn holds(&self, key: &BlockKey, tier: usize) -> bool {
        self.mask(key) & (1 << tier) != 0
    }

    pub(crate) fn pin(&mut self, key: BlockKey) {
        *self.pins.entry(key).or_insert(0) += 1;
    }

    pub(crate) fn unpin(&mut self, key: &BlockKey) {
        if let Some(n) = self.pins.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(key);
            }
        }
    }

    /// Decides how a put of `key` into `tier` (holding at most `capacity` blocks) goes.
    pub(crate) fn reserve(&mut self, tier: usize, key: BlockKey, capacity: u64) -> Admission {
        if self.holds(&key, tier) {
            self.lru[tier].promote(&key);
            return Admission::Present;
        }
        if self.lru[tier].len() as u64 + self.reserved[tier] < capacity {
            self.reserved[tier] += 1;
            return Admission::Reserved;
        }
        match self.victim(tier) {
            Some(v) => Admission::Evict(v),
            None if self.evicting[tier] > 0 || self.reserved[tier] > 0 => Admission::Wait,
            None => Admission::NoRoom,
        }
    }

    /// The least recently used unpinned block of `tier`, pinned for its evictor.
    pub(crate) fn victim(&mut self, tier: usize) -> Option<BlockKey> {
        let victim = self.lru[tier]
            .iter()
            .rev()
            .map(|(k, _)| *k)
            .find(|k| !self.pins.contains_key(k))?;
        self.pin(victim);
        self.evicting[tier] += 1;
        Some(victim)
    }

    /// Ends the eviction of `victim` from `tier`; `removed`: it left the tier.
    pub(crate) fn end_eviction(&mut self, tier: usize, victim: &BlockKey, removed: bool) {
        self.unpin(victim);
        self.evicting[tier] -= 1;
        if removed {
            self.drop_from(tier, victim);
        }
    }

    /// Ends a reservation; records the block in `tier` if it was stored.
    pub(crate) fn finish_put(&mut self, tier: usize, key: BlockKey, stored: bool) {
        self.reserved[tier] -= 1;
        if stored {
            self.insert(tier, key);
        }
    }

    pub(crate) fn insert(&mut self, tier: usize, key: BlockKey) {
        self.lru[tier].put(key, ());
        *self.location.entry(key).or_insert(0) |= 1 << tier;
    }

    /// Forgets that `tier` holds `key`; true if it did.
    pub(crate) fn drop_from(&mut self, tier: usize, key: &BlockKey) -> bool {
        let had = self.lru[tier].pop(key).is_some();
        if let Some(mask) = self.location.get_mut(key) {
            *mask &= !(1 << tier);
            if *mask == 0 {
                self.location.remove(key);
            }
        }
        had
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_are_least_recent_and_unpinned() {
        let mut ix = StoreIndex::new(2);
        let k = |i| BlockKey::new(0, i);
        for i in 0..3 {
            assert!(matches!(ix.reserve(0, k(i), 3), Admission::Reserved));
            ix.finish_put(0, k(i), true);
        }
        // Touch block 0 so block 1 is the least recently used.
        assert!(matches!(ix.reserve(0, k(0), 3), Admission::Present));
        ix.pin(k(1));
        match ix.reserve(0, k(9), 3) {
            Admission::Evict(v) => assert_eq!(v, k(2), "1 is pinned, 0 was touched"),
            _ => panic!("expected an eviction"),
        }
        // Block 2 is now pinned by its evictor; with 0 pinned too, wait for the eviction.
        ix.pin(k(0));
        assert!(matches!(ix.reserve(0, k(9), 3), Admission::Wait));
        ix.end_eviction(0, &k(2), true);
        assert_eq!(ix.mask(&k(2)), 0);
        assert!(!ix.location.contains_key(&k(2)));
        assert!(matches!(ix.reserve(0, k(9), 3), Admission::Reserved));
        ix.finish_put(0, k(9), true);
        // Everything pinned and nothing in flight: no room.
        ix.pin(k(9));
        assert!(matches!(ix.reserve(0, k(10), 3), Admission::NoRoom));
    }
}

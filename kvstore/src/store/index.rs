//! The tiered store's in-memory index: which tiers hold each block, LRU order per
//! tier, pins and reservations. All of it sits behind one mutex held for short,
//! I/O-free critical sections; `lookup_prefix` walks it in a single pass.
//!
//! Eviction is LRU per tier, bounded by per-namespace (tenant) shares of the tier's
//! blocks (see [`Shares`]): a namespace at its maximum share evicts its own blocks, and
//! a namespace holding no more than its minimum share is not evicted by another.

use std::collections::HashMap;

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
    /// Per tier, blocks held by each namespace digest.
    held: Vec<HashMap<u64, u64>>,
    shares: Shares,
}

/// Per-namespace shares of a tier, as fractions of its capacity in blocks. A slot is
/// taken whole by any block, so counting blocks counts the bytes a tier gives up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shares {
    /// A namespace holding at most this much of a full tier keeps its blocks when
    /// another namespace needs room (while some namespace holds more).
    pub(crate) min: f64,
    /// A namespace holding this much of a full tier makes room from its own blocks.
    pub(crate) max: f64,
}

impl Shares {
    /// `(protected, limit)` in blocks of a tier of `capacity` blocks.
    fn blocks(self, capacity: u64) -> (u64, u64) {
        let protected = (self.min * capacity as f64).floor() as u64;
        let limit = ((self.max * capacity as f64).ceil() as u64).max(1);
        (protected, limit)
    }
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
    pub(crate) fn new(tiers: usize, shares: Shares) -> StoreIndex {
        StoreIndex {
            location: BlockKeyMap::default(),
            lru: (0..tiers)
                .map(|_| LruCache::unbounded_with_hasher(BuildBlockKeyHasher))
                .collect(),
            reserved: vec![0; tiers],
            pins: BlockKeyMap::default(),
            evicting: vec![0; tiers],
            held: vec![HashMap::new(); tiers],
            shares,
        }
    }

    /// Blocks of namespace `ns` in `tier`.
    pub(crate) fn held_by(&self, tier: usize, ns: u64) -> u64 {
        self.held[tier].get(&ns).copied().unwrap_or(0)
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
        match self.victim(tier, Some(key.namespace), capacity) {
            Some(v) => Admission::Evict(v),
            None if self.evicting[tier] > 0 || self.reserved[tier] > 0 => Admission::Wait,
            None => Admission::NoRoom,
        }
    }

    /// The block of `tier` to evict so that namespace `putter` (`None`: not known yet,
    /// as for a staged slot) gets room in a tier of `capacity` blocks, pinned for its
    /// evictor. The least recently used unpinned block, except that
    /// - a putter holding its maximum share evicts its own least recently used block;
    /// - a block of another namespace holding no more than its minimum share is skipped
    ///   while some namespace holds more (when every namespace is that small, LRU
    ///   alone decides).
    pub(crate) fn victim(
        &mut self,
        tier: usize,
        putter: Option<u64>,
        capacity: u64,
    ) -> Option<BlockKey> {
        let (protected, limit) = self.shares.blocks(capacity);
        let size = |ns: &u64| self.held_by(tier, *ns);
        let protects = protected > 0 && self.held[tier].values().any(|&n| n > protected);
        let unpinned = || {
            self.lru[tier]
                .iter()
                .rev()
                .map(|(k, _)| *k)
                .filter(|k| !self.pins.contains_key(k))
        };
        let own = putter
            .filter(|ns| size(ns) >= limit)
            .and_then(|ns| unpinned().find(|k| k.namespace == ns));
        let victim = match own {
            Some(v) => v,
            None => unpinned().find(|k| {
                !protects || Some(k.namespace) == putter || size(&k.namespace) > protected
            })?,
        };
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
        if self.lru[tier].put(key, ()).is_none() {
            *self.held[tier].entry(key.namespace).or_insert(0) += 1;
        }
        *self.location.entry(key).or_insert(0) |= 1 << tier;
    }

    /// Forgets that `tier` holds `key`; true if it did.
    pub(crate) fn drop_from(&mut self, tier: usize, key: &BlockKey) -> bool {
        let had = self.lru[tier].pop(key).is_some();
        if had && let Some(n) = self.held[tier].get_mut(&key.namespace) {
            *n -= 1;
            if *n == 0 {
                self.held[tier].remove(&key.namespace);
            }
        }
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

    const NO_SHARES: Shares = Shares { min: 0.0, max: 1.0 };

    fn fill(ix: &mut StoreIndex, ns: u64, hashes: std::ops::Range<u128>, capacity: u64) {
        for h in hashes {
            let key = BlockKey::new(ns, h);
            loop {
                match ix.reserve(0, key, capacity) {
                    Admission::Reserved => break ix.finish_put(0, key, true),
                    Admission::Evict(v) => ix.end_eviction(0, &v, true),
                    _ => panic!("no room for {key}"),
                }
            }
        }
    }

    #[test]
    fn a_namespace_cannot_flush_another_below_its_minimum_share() {
        // 100 blocks of tenant 1, then 4,096 puts of tenant 2 into a 400-block tier.
        let mut ix = StoreIndex::new(
            1,
            Shares {
                min: 0.25,
                max: 1.0,
            },
        );
        fill(&mut ix, 1, 0..100, 400);
        fill(&mut ix, 2, 0..4096, 400);
        assert_eq!(
            ix.held_by(0, 1),
            100,
            "tenant 1 is within its minimum share"
        );
        assert_eq!(ix.held_by(0, 2), 300);
        // Over its minimum share, the older tenant's blocks are fair game again.
        let mut ix = StoreIndex::new(
            1,
            Shares {
                min: 0.25,
                max: 1.0,
            },
        );
        fill(&mut ix, 1, 0..300, 400);
        fill(&mut ix, 2, 0..4096, 400);
        assert_eq!(ix.held_by(0, 1), 100, "evicted down to its minimum share");
        // Without shares, plain LRU flushes tenant 1 completely.
        let mut ix = StoreIndex::new(1, NO_SHARES);
        fill(&mut ix, 1, 0..100, 400);
        fill(&mut ix, 2, 0..4096, 400);
        assert_eq!(ix.held_by(0, 1), 0);
    }

    #[test]
    fn a_namespace_at_its_maximum_share_evicts_its_own_blocks() {
        let mut ix = StoreIndex::new(1, Shares { min: 0.0, max: 0.5 });
        fill(&mut ix, 1, 0..40, 100);
        fill(&mut ix, 2, 0..1000, 100);
        // Free room is never wasted: tenant 2 grows past its cap while there is room,
        // then holds its place by evicting its own blocks.
        assert_eq!((ix.held_by(0, 1), ix.held_by(0, 2)), (40, 60));
        fill(&mut ix, 3, 0..1000, 100);
        // Tenant 3 took the free room and then evicted the least recently used blocks
        // (tenant 1's, then 2's) until it reached its cap.
        assert_eq!(ix.held_by(0, 3), 50);
        assert_eq!(ix.held_by(0, 1) + ix.held_by(0, 2), 50);
        // With every namespace small (no one over the minimum share), LRU decides.
        let mut ix = StoreIndex::new(1, Shares { min: 0.5, max: 1.0 });
        for ns in 0..4 {
            fill(&mut ix, ns, 0..25, 100);
        }
        fill(&mut ix, 9, 0..10, 100);
        assert_eq!(ix.held_by(0, 0), 15, "the oldest namespace gave the room");
        assert_eq!(ix.held_by(0, 9), 10);
    }

    #[test]
    fn victims_are_least_recent_and_unpinned() {
        let mut ix = StoreIndex::new(2, NO_SHARES);
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

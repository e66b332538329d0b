//! [`CrcCache`]: the crc32c of recently stored or sent blocks.

use std::sync::Mutex;

use tierkv_tiers::BlockKey;

/// crc32c of blocks recently published or fetched. Blocks are content-addressed, so a
/// key's checksum never changes: fetches of hot prefix blocks skip recomputing it.
pub(crate) struct CrcCache(Mutex<lru::LruCache<BlockKey, u32, tierkv_tiers::BuildBlockKeyHasher>>);

impl CrcCache {
    pub(crate) fn new(entries: usize) -> CrcCache {
        let cap =
            std::num::NonZeroUsize::new(entries.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        CrcCache(Mutex::new(lru::LruCache::with_hasher(
            cap,
            tierkv_tiers::BuildBlockKeyHasher,
        )))
    }

    pub(crate) fn get_or_compute(&self, key: BlockKey, data: &[u8]) -> u32 {
        let cached = tierkv_tiers::sync::lock(&self.0).get(&key).copied();
        cached.unwrap_or_else(|| {
            let crc = tierkv_tiers::checksum::crc32c(data);
            self.insert(key, crc);
            crc
        })
    }

    pub(crate) fn insert(&self, key: BlockKey, crc: u32) {
        tierkv_tiers::sync::lock(&self.0).put(key, crc);
    }
}

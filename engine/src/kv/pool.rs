//! [`KvPool`]: fixed-size KV blocks with reference counts and a prefix cache.
//!
//! A block is *referenced* while a running sequence uses it; sequences that share a
//! prefix share its blocks (the count goes up). A full block gets the hash of its
//! prefix chain and stays in the pool after its last reference is dropped, as a
//! *cached* block that a later request with the same prefix can take again. Cached
//! blocks are reclaimed least recently used first when the free list runs dry.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use half::f16;
use half::slice::HalfFloatSliceExt;
use lru::LruCache;
use tierkv_kvstore::{BlockHash, DType, KvLayout};

use crate::{EngineError, Result};

/// Hashes of the blocks the pool holds, readable from other threads (the request
/// handlers use it to skip store fetches of blocks the engine already has).
#[derive(Clone, Default, Debug)]
pub struct ResidentSet(Arc<Mutex<HashSet<u128>>>);

impl ResidentSet {
    /// How many of `hashes`, from the start, the pool holds.
    pub fn prefix_len(&self, hashes: &[BlockHash]) -> usize {
        let set = tierkv_tiers::sync::lock(&self.0);
        hashes.iter().take_while(|h| set.contains(&h.0)).count()
    }

    fn update(&self, f: impl FnOnce(&mut HashSet<u128>)) {
        let mut set = tierkv_tiers::sync::lock(&self.0);
        f(&mut set)
    }
}

/// How the pool's blocks are used now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Blocks referenced by running sequences.
    pub used: usize,
    /// Unreferenced blocks kept for prefix reuse.
    pub cached: usize,
    /// Blocks holding nothing.
    pub free: usize,
}

/// Blocks of KV at f16, the precision the engine computes K and V at (as llama.cpp's
/// default f16 KV cache), laid out exactly as the store keeps them: a block moves to
/// and from the store with one `memcpy`.
pub struct KvPool {
    layout: KvLayout,
    /// Values per block (`layout.block_bytes() / 2`).
    block_floats: usize,
    /// Values of one layer's K (or V) inside a block.
    kv_floats: usize,
    data: Vec<f16>,
    refs: Vec<u32>,
    hash_of: Vec<Option<BlockHash>>,
    by_hash: HashMap<BlockHash, u32>,
    free: Vec<u32>,
    cached: LruCache<u32, ()>,
    resident: ResidentSet,
}

impl std::fmt::Debug for KvPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvPool")
            .field("layout", &self.layout)
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

impl KvPool {
    /// A pool of `num_blocks` blocks of `layout` (which must be f16: the CPU engine
    /// keeps KV in f16).
    pub fn new(layout: KvLayout, num_blocks: usize) -> Result<KvPool> {
        if layout.dtype != DType::F16 {
            return Err(EngineError::Config(format!(
                "the CPU engine keeps KV in f16, not {}",
                layout.dtype.as_str()
            )));
        }
        let cap = NonZeroUsize::new(num_blocks)
            .ok_or_else(|| EngineError::Config("the KV pool needs at least one block".into()))?;
        let block_floats = layout.block_bytes() / 2;
        let total = block_floats.checked_mul(num_blocks).ok_or_else(|| {
            EngineError::Config(format!("{num_blocks} blocks of {layout} overflow"))
        })?;
        Ok(KvPool {
            layout,
            block_floats,
            kv_floats: layout.block_size as usize
                * layout.num_kv_heads as usize
                * layout.head_dim as usize,
            data: vec![f16::ZERO; total],
            refs: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            by_hash: HashMap::new(),
            free: (0..num_blocks as u32).rev().collect(),
            cached: LruCache::new(cap),
            resident: ResidentSet::default(),
        })
    }

    /// The layout of one block.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.refs.len()
    }

    /// A handle on the hashes of the blocks it holds, for other threads.
    pub fn resident(&self) -> ResidentSet {
        self.resident.clone()
    }

    /// Used, cached and free blocks now.
    pub fn usage(&self) -> PoolUsage {
        PoolUsage {
            used: self.num_blocks() - self.free.len() - self.cached.len(),
            cached: self.cached.len(),
            free: self.free.len(),
        }
    }

    /// Blocks an allocation could get now (free plus reclaimable cached blocks).
    pub fn available(&self) -> usize {
        self.free.len() + self.cached.len()
    }

    /// A block for a new sequence's tokens, or `None` when every block is referenced.
    pub fn allocate(&mut self) -> Option<u32> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (id, ()) = self.cached.pop_lru()?;
                self.forget_hash(id);
                id
            }
        };
        self.refs[id as usize] = 1;
        Some(id)
    }

    /// Takes a reference on the cached block with `hash`, if the pool holds one.
    pub fn acquire(&mut self, hash: BlockHash) -> Option<u32> {
        let id = *self.by_hash.get(&hash)?;
        if self.refs[id as usize] == 0 {
            self.cached.pop(&id);
        }
        self.refs[id as usize] += 1;
        Some(id)
    }

    /// Drops one reference; an unreferenced block with a hash stays cached.
    pub fn release(&mut self, id: u32) {
        let r = &mut self.refs[id as usize];
        debug_assert!(*r > 0, "release of an unreferenced block");
        *r = r.saturating_sub(1);
        if *r == 0 {
            if self.hash_of[id as usize].is_some() {
                self.cached.put(id, ());
            } else {
                self.free.push(id);
            }
        }
    }

    /// Marks a full block as holding the prefix `hash`. If another block already
    /// holds that prefix this one stays anonymous (freed, not cached, when released).
    pub fn register(&mut self, id: u32, hash: BlockHash) {
        if self.hash_of[id as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hash_of[id as usize] = Some(hash);
        self.by_hash.insert(hash, id);
        self.resident.update(|s| {
            s.insert(hash.0);
        });
    }

    /// Drops every cached (unreferenced) block: what vLLM's `reset_prefix_cache` does.
    pub fn clear_cache(&mut self) -> usize {
        let mut n = 0;
        while let Some((id, ())) = self.cached.pop_lru() {
            self.forget_hash(id);
            self.free.push(id);
            n += 1;
        }
        n
    }

    fn forget_hash(&mut self, id: u32) {
        if let Some(h) = self.hash_of[id as usize].take() {
            self.by_hash.remove(&h);
            self.resident.update(|s| {
                s.remove(&h.0);
            });
        }
    }

    fn range(&self, id: u32, layer: usize, kv: usize) -> std::ops::Range<usize> {
        let start = id as usize * self.block_floats + (layer * 2 + kv) * self.kv_floats;
        start..start + self.kv_floats
    }

    /// K of one layer of a block: `[token][kv_head][head_dim]`.
    pub fn keys(&self, id: u32, layer: usize) -> &[f16] {
        &self.data[self.range(id, layer, 0)]
    }

    /// V of one layer of a block: `[token][kv_head][head_dim]`.
    pub fn values(&self, id: u32, layer: usize) -> &[f16] {
        &self.data[self.range(id, layer, 1)]
    }

    /// Writes the K and V of one token (each `kv_heads * head_dim` values, already at
    /// f16 precision, so the conversion is exact).
    pub fn write_token(&mut self, id: u32, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let w = k.len();
        let ks = self.range(id, layer, 0).start + slot * w;
        self.data[ks..ks + w].convert_from_f32_slice(k);
        let vs = self.range(id, layer, 1).start + slot * w;
        self.data[vs..vs + w].convert_from_f32_slice(v);
    }

    fn block_bytes(&self, id: u32) -> &[u8] {
        let start = id as usize * self.block_floats;
        let values = &self.data[start..start + self.block_floats];
        // SAFETY: `f16` is a plain 2-byte value with no padding and every bit pattern
        // valid, `u8` has alignment 1, and the byte slice covers exactly `values`,
        // borrowed from `self` for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 2) }
    }

    /// The block as the store keeps it (f16, little-endian, in `KvLayout` order): one
    /// `memcpy`.
    pub fn export(&self, id: u32) -> Bytes {
        Bytes::copy_from_slice(self.block_bytes(id))
    }

    /// Fills a block from a payload that came from the store: one `memcpy`.
    pub fn import(&mut self, id: u32, payload: &[u8]) -> Result<()> {
        let want = self.block_floats * 2;
        if payload.len() != want {
            return Err(EngineError::Store(tierkv_kvstore::KvStoreError::Layout(
                format!(
                    "block payload of {} bytes, {} expects {want}",
                    payload.len(),
                    self.layout,
                ),
            )));
        }
        let start = id as usize * self.block_floats;
        let dst = &mut self.data[start..start + self.block_floats];
        // SAFETY: as in `block_bytes`: `f16` accepts every bit pattern, the byte view
        // covers exactly `dst`, and `dst` is borrowed mutably for its whole use.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), want) };
        dst.copy_from_slice(payload);
        Ok(())
    }

    /// Copies block `src` into block `dst` (copy-on-write of a shared block).
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = self.block_floats;
        self.data
            .copy_within(src as usize * n..src as usize * n + n, dst as usize * n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> KvPool {
        KvPool::new(KvLayout::new(2, 1, 4, DType::F16, 2).unwrap(), n).unwrap()
    }

    #[test]
    fn cached_blocks_are_reused_then_reclaimed_lru() {
        let mut p = pool(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert_eq!(p.allocate(), None, "all referenced");
        p.register(a, BlockHash(1));
        p.register(b, BlockHash(2));
        p.release(a);
        p.release(b);
        assert_eq!(
            p.usage(),
            PoolUsage {
                used: 0,
                cached: 2,
                free: 0
            }
        );
        assert_eq!(p.resident().prefix_len(&[BlockHash(1), BlockHash(2)]), 2);
        // Taking `a` again makes `b` the least recently used.
        assert_eq!(p.acquire(BlockHash(1)), Some(a));
        p.release(a);
        let c = p.allocate().unwrap();
        assert_eq!(c, b, "LRU cached block reclaimed");
        assert_eq!(p.acquire(BlockHash(2)), None);
        assert_eq!(p.resident().prefix_len(&[BlockHash(1), BlockHash(2)]), 1);
        assert_eq!(p.clear_cache(), 1);
        assert_eq!(p.acquire(BlockHash(1)), None);
    }

    #[test]
    fn export_import_round_trips_and_rejects_bad_sizes() {
        let mut p = pool(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        p.write_token(a, 1, 1, &[1.0, 2.0, 3.0, 4.0], &[5.0, 6.0, 7.0, 8.5]);
        let bytes = p.export(a);
        assert_eq!(bytes.len(), p.layout().block_bytes());
        p.import(b, &bytes).unwrap();
        assert_eq!(bytes.len(), 2 * 2 * 2 * 4 * 2, "f16: 2 bytes a value");
        let f = |xs: &[f16]| xs.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
        assert_eq!(f(&p.keys(b, 1)[4..8]), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f(&p.values(b, 1)[4..8]), [5.0, 6.0, 7.0, 8.5]);
        // Little-endian f16, K of layer 1 token 1 at its `KvLayout` offset: layer 1's
        // K after layer 0's K and V (2 x 2 tokens x 4 values), then one token in.
        let off = (2 * 2 * 4 + 4) * 2;
        assert_eq!(&bytes[off..off + 2], &f16::from_f32(1.0).to_le_bytes());
        assert!(p.import(b, &bytes[1..]).is_err());
    }
}

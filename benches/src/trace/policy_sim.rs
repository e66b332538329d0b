//! The store's host -> disk policy replayed directly: the same decisions as a
//! simulated replay through [`TieredStore`](tierkv_kvstore::TieredStore) with
//! metadata-only tiers (`replay --simulate`), without the store around them — no
//! locks, no tasks, no events, no per-block allocations. Blocks are interned to dense
//! ids once per block size, and each tier's LRU order is an intrusive list over arrays,
//! so a point costs a few tens of nanoseconds per block access instead of
//! microseconds. `tune` simulates its shortlist this way; the tests check that it
//! counts exactly what the store-driven replay counts, for every policy.
//!
//! What the store does, as replayed (one namespace, requests one after another):
//! - a request locates its prefix (the leading blocks held anywhere, each in the
//!   highest tier holding it), then reads those blocks in order: a read touches the
//!   block in the highest tier holding it; a read below the top with promotion on
//!   copies the block into the top tier (it keeps its lower copy). A block gone by the
//!   time it is read ends the hits.
//! - the blocks after the hits are stored: a block already held anywhere is touched in
//!   every tier holding it (and copied into a write-through tier lacking it); a new one
//!   is placed in the top tier and then in every write-through tier.
//! - placing into a full tier evicts its least recently used block; an evicted host
//!   block is demoted into the disk tier unless the disk holds it already; an evicted
//!   disk block is dropped.

use std::collections::HashMap;

use super::{TraceRecord, block_hashes};

const NIL: u32 = u32::MAX;

/// A trace's prompt blocks at one block size as dense ids, request by request.
#[derive(Debug)]
pub(crate) struct Interned {
    pub block_tokens: u64,
    /// Every block access, request after request.
    ids: Vec<u32>,
    /// Where each request's blocks end in `ids`.
    ends: Vec<usize>,
    /// Distinct blocks.
    pub distinct: usize,
}

impl Interned {
    pub(crate) fn new(trace: &[TraceRecord], block_tokens: u64) -> Interned {
        let mut map: HashMap<u128, u32> = HashMap::new();
        let mut ids = Vec::new();
        let mut ends = Vec::with_capacity(trace.len());
        for rec in trace {
            for h in block_hashes(rec, block_tokens) {
                let next = map.len() as u32;
                ids.push(*map.entry(h).or_insert(next));
            }
            ends.push(ids.len());
        }
        Interned {
            block_tokens,
            ids,
            ends,
            distinct: map.len(),
        }
    }

    /// Block accesses (full prompt blocks over all requests).
    pub(crate) fn accesses(&self) -> u64 {
        self.ids.len() as u64
    }

    fn requests(&self) -> impl Iterator<Item = &[u32]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.ids[a..b])
    }
}

/// One tier's recency order: an intrusive doubly linked list over block ids, most
/// recent at the head.
struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    len: u64,
    capacity: u64,
}

impl Lru {
    fn new(blocks: usize, capacity: u64) -> Lru {
        Lru {
            prev: vec![NIL; blocks],
            next: vec![NIL; blocks],
            head: NIL,
            tail: NIL,
            len: 0,
            capacity,
        }
    }

    fn unlink(&mut self, k: u32) {
        let (p, n) = (self.prev[k as usize], self.next[k as usize]);
        match p {
            NIL => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NIL => self.tail = p,
            n => self.prev[n as usize] = p,
        }
    }

    fn push_front(&mut self, k: u32) {
        self.prev[k as usize] = NIL;
        self.next[k as usize] = self.head;
        match self.head {
            NIL => self.tail = k,
            h => self.prev[h as usize] = k,
        }
        self.head = k;
    }

    fn touch(&mut self, k: u32) {
        if self.head != k {
            self.unlink(k);
            self.push_front(k);
        }
    }
}

/// The policy and capacities of one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub host_blocks: u64,
    /// `None`: no disk tier.
    pub disk_blocks: Option<u64>,
    pub write_through: bool,
    pub promote: bool,
}

/// What a point's replay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hits {
    pub host: u64,
    pub disk: u64,
}

struct Store {
    tiers: Vec<Lru>,
    /// Bit `t`: tier `t` holds the block.
    mask: Vec<u8>,
    write_through: bool,
    promote: bool,
}

impl Store {
    fn holds(&self, t: usize, k: u32) -> bool {
        self.mask[k as usize] & (1 << t) != 0
    }

    fn insert(&mut self, t: usize, k: u32) {
        self.tiers[t].push_front(k);
        self.tiers[t].len += 1;
        self.mask[k as usize] |= 1 << t;
    }

    fn remove(&mut self, t: usize, k: u32) {
        self.tiers[t].unlink(k);
        self.tiers[t].len -= 1;
        self.mask[k as usize] &= !(1 << t);
    }

    /// Places `k` in tier `t`, evicting its least recent block when full; false when
    /// the tier has no room at all (capacity 0).
    fn place(&mut self, t: usize, k: u32) -> bool {
        if self.holds(t, k) {
            self.tiers[t].touch(k);
            return true;
        }
        if self.tiers[t].len >= self.tiers[t].capacity {
            let victim = self.tiers[t].tail;
            if victim == NIL {
                return false;
            }
            self.evict(t, victim);
        }
        self.insert(t, k);
        true
    }

    /// Evicts `v` from tier `t`, demoting it first when a lower tier lacks it. The
    /// victim stays in its tier while it is demoted (as the store pins it), so the
    /// lower tier's eviction never picks it.
    fn evict(&mut self, t: usize, v: u32) {
        if t + 1 < self.tiers.len() && !self.holds(t + 1, v) {
            // A demotion that finds no room drops the block, as the store does.
            let _ = self.place(t + 1, v);
        }
        self.remove(t, v);
    }

    fn top_holder(&self, k: u32) -> Option<usize> {
        match self.mask[k as usize] {
            0 => None,
            m => Some(m.trailing_zeros() as usize),
        }
    }

    /// A read of `k`: touched where it is read; promoted from below when asked to.
    fn read(&mut self, k: u32) -> bool {
        let Some(t) = self.top_holder(k) else {
            return false;
        };
        self.tiers[t].touch(k);
        if t != 0 && self.promote {
            let _ = self.place(0, k);
        }
        true
    }

    fn store(&mut self, k: u32) {
        let wt = self.write_through && self.tiers.len() > 1;
        if self.mask[k as usize] != 0 {
            for t in 0..self.tiers.len() {
                if self.holds(t, k) {
                    self.tiers[t].touch(k);
                }
            }
            if wt && !self.holds(1, k) {
                let _ = self.place(1, k);
            }
            return;
        }
        if !self.place(0, k) && self.tiers.len() > 1 {
            // The top tier has no room: stored below it, as a demotion would be.
            let _ = self.place(1, k);
        }
        if wt {
            let _ = self.place(1, k);
        }
    }
}

/// Replays `blocks` under `policy`; the hits counted by the tier that held each block
/// when the request looked its prefix up (what the store-driven replay counts).
pub(crate) fn simulate(blocks: &Interned, policy: Policy) -> Hits {
    let n = blocks.distinct;
    let mut tiers = vec![Lru::new(n, policy.host_blocks)];
    if let Some(disk) = policy.disk_blocks {
        tiers.push(Lru::new(n, disk));
    }
    let mut store = Store {
        tiers,
        mask: vec![0; n],
        write_through: policy.write_through,
        promote: policy.promote,
    };
    let mut hits = Hits::default();
    let mut located: Vec<usize> = Vec::new();
    for request in blocks.requests() {
        located.clear();
        located.extend(request.iter().map_while(|&k| store.top_holder(k)));
        let mut hit = 0;
        for (&k, &t) in request.iter().zip(&located) {
            if !store.read(k) {
                break;
            }
            hit += 1;
            match t {
                0 => hits.host += 1,
                _ => hits.disk += 1,
            }
        }
        for &k in &request[hit..] {
            store.store(k);
        }
    }
    hits
}

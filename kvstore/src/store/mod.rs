//! [`TieredStore`]: an ordered list of tiers with a policy.
//!
//! - Puts land in the top tier; tiers marked `write_through` get a copy too.
//! - Each tier evicts its least recently used unpinned block when full; with
//!   `on_evict = demote` (write-back) the victim moves to the next tier down first.
//! - A hit in a lower tier is copied into the top tier (`promote_on_hit`) by a
//!   background promoter, after the reader has its bytes: a read never evicts, demotes
//!   or writes on its own path.
//! - Blocks being read, transferred or evicted are pinned and never chosen as victims.
//! - `lookup_prefix` answers from memory in one pass, without I/O.
//! - Every block entering or leaving a tier emits a [`StoreEvent`].

mod guards;
mod index;
mod promote;
mod types;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use tierkv_tiers::{BlockKey, HostTier, PutOutcome, StagedSlot, Tier, TierError};
use tokio::sync::broadcast;

use crate::config::EvictPolicy;
use crate::{BlockHash, KvStoreError, Namespace, Result};
pub use guards::PinGuard;
use guards::{Eviction, Reservation};
use index::{Admission, StoreIndex};
use types::PolicyCounters;
pub use types::{StoreEvent, StoreEventKind, StoreOptions, StoreStats, TierPolicy, TierStoreStats};

pub(crate) struct TierEntry {
    tier: Arc<dyn Tier>,
    policy: TierPolicy,
    counters: PolicyCounters,
}

pub(crate) struct Inner {
    tiers: Vec<TierEntry>,
    slot_bytes: usize,
    /// The promoter's queue; `None` when promotion is off.
    promotions: Option<tokio::sync::mpsc::Sender<promote::Promotion>>,
    index: Mutex<StoreIndex>,
    events: broadcast::Sender<StoreEvent>,
    seq: AtomicU64,
    /// Woken whenever an eviction or a put finishes, for puts waiting for room.
    room: tokio::sync::Notify,
    /// The top tier when it is a host tier, and whether its slab is shared (memfd)
    /// with same-host clients.
    top_host: Option<(HostTier, bool)>,
}

/// The tiered KV block store. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tiers: Vec<&str> = self.inner.tiers.iter().map(|t| t.tier.name()).collect();
        f.debug_struct("TieredStore")
            .field("tiers", &tiers)
            .field("slot_bytes", &self.slot_bytes())
            .field("blocks", &lock(&self.inner.index).location.len())
            .finish_non_exhaustive()
    }
}

pub(crate) use tierkv_tiers::sync::lock;

impl TieredStore {
    /// The store over opened tiers, top first (what [`TieredStore::builder`] ends with).
    pub(crate) async fn build(
        tiers: Vec<(Arc<dyn Tier>, TierPolicy)>,
        options: StoreOptions,
        top_host: Option<(HostTier, bool)>,
    ) -> Result<TieredStore> {
        if tiers.is_empty() || tiers.len() > 8 {
            return Err(KvStoreError::Config(format!(
                "a store needs 1 to 8 tiers, got {}",
                tiers.len()
            )));
        }
        if !tiers[0].0.is_indexed() {
            return Err(KvStoreError::Config(format!(
                "tier `{}` cannot be the top tier: it is a peer, not local storage",
                tiers[0].0.name()
            )));
        }
        let slot_bytes = tiers.iter().map(|(t, _)| t.slot_bytes()).min().unwrap_or(0);
        let mut index = StoreIndex::new(tiers.len(), options.shares()?);
        for (i, (tier, _)) in tiers
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| t.is_indexed())
        {
            for (key, _) in tier.keys().await? {
                index.insert(i, key);
            }
        }
        let (events, _) = broadcast::channel(options.event_buffer.max(1));
        let (promotions, promotion_queue) = if options.promote_on_hit && tiers.len() > 1 {
            let (tx, rx) = tokio::sync::mpsc::channel(options.promote_queue.max(1));
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let store = TieredStore {
            inner: Arc::new(Inner {
                tiers: tiers
                    .into_iter()
                    .map(|(tier, policy)| TierEntry {
                        tier,
                        policy,
                        counters: PolicyCounters::default(),
                    })
                    .collect(),
                slot_bytes,
                promotions,
                index: Mutex::new(index),
                events,
                seq: AtomicU64::new(0),
                room: tokio::sync::Notify::new(),
                top_host,
            }),
        };
        if let Some(queue) = promotion_queue {
            promote::spawn(Arc::downgrade(&store.inner), queue);
        }
        Ok(store)
    }

    fn key(ns: &Namespace, hash: BlockHash) -> BlockKey {
        BlockKey::new(ns.id(), hash.0)
    }

    /// Stores one block of `ns`; its payload must be exactly the layout's block size.
    pub async fn put(&self, ns: &Namespace, hash: BlockHash, data: Bytes) -> Result<PutOutcome> {
        let expected = ns.layout().block_bytes();
        if data.len() != expected {
            return Err(KvStoreError::WrongBlockSize {
                layout: ns.layout().to_string(),
                expected,
                got: data.len(),
            });
        }
        self.put_key(Self::key(ns, hash), data).await
    }

    /// Stores a block under a raw key (the block service, benchmarks); the payload only
    /// has to fit the slot size.
    pub async fn put_key(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome> {
        let top = self.inner.tiers[0].tier.name();
        if data.is_empty() {
            return Err(TierError::Empty(top.to_string()).into());
        }
        if data.len() > self.inner.slot_bytes {
            return Err(TierError::TooLarge {
                tier: top.to_string(),
                len: data.len(),
                slot_bytes: self.inner.slot_bytes,
            }
            .into());
        }
        let unwritten = {
            let mut ix = lock(&self.inner.index);
            (ix.mask(&key) != 0).then(|| {
                for t in 0..self.inner.tiers.len() {
                    if ix.holds(&key, t) {
                        ix.lru[t].promote(&key);
                    }
                }
                self.write_through_tiers()
                    .filter(|&t| !ix.holds(&key, t))
                    .collect::<Vec<_>>()
            })
        };
        if let Some(unwritten) = unwritten
            && self.complete_write_through(key, unwritten).await?
        {
            return Ok(PutOutcome::AlreadyPresent);
        }
        match self.place(0, key, data.clone()).await {
            // Every block of the top tier is pinned by a reader: the block goes to the
            // next tier that takes it (as a demotion would), rather than failing.
            Err(e @ KvStoreError::NoRoom { .. }) => {
                if !self.inner.tiers[1..].iter().any(|e| e.tier.accepts_puts()) {
                    return Err(e);
                }
                tracing::debug!(key = %key, error = %e, "top tier pinned full; storing below it");
                self.demote(0, key, data.clone()).await?;
            }
            other => {
                other?;
            }
        }
        let copies = self
            .write_through_tiers()
            .map(|t| self.place(t, key, data.clone()));
        for result in join_all(copies).await {
            result?;
        }
        Ok(PutOutcome::Stored)
    }

    /// The tiers below the top that every put is copied into.
    fn write_through_tiers(&self) -> impl Iterator<Item = usize> + '_ {
        (1..self.inner.tiers.len()).filter(|&t| {
            self.inner.tiers[t].policy.write_through && self.inner.tiers[t].tier.accepts_puts()
        })
    }

    /// A put of a block already held: copies the payload *as stored* into the
    /// write-through tiers that lack it, so that an earlier put whose copy failed is
    /// completed by its retry instead of acknowledged without it. False when the block
    /// left the store meanwhile (the put then stores the caller's payload).
    async fn complete_write_through(&self, key: BlockKey, unwritten: Vec<usize>) -> Result<bool> {
        if unwritten.is_empty() {
            return Ok(true);
        }
        let Some(stored) = self.read_key(key, false).await? else {
            return Ok(false);
        };
        let copies = unwritten
            .into_iter()
            .map(|t| self.place(t, key, stored.clone()));
        for result in join_all(copies).await {
            result?;
        }
        Ok(true)
    }

    /// Puts `data` into tier `t`, evicting (and demoting) to make room.
    fn place(&self, t: usize, key: BlockKey, data: Bytes) -> BoxFuture<'_, Result<PutOutcome>> {
        Box::pin(async move {
            let entry = &self.inner.tiers[t];
            if !entry.tier.is_indexed() {
                // A peer: it owns its capacity and eviction.
                let len = data.len() as u64;
                let outcome = entry.tier.put(key, data).await?;
                if outcome == PutOutcome::Stored {
                    entry.counters.bytes_written.fetch_add(len, Relaxed);
                }
                return Ok(outcome);
            }
            let capacity = entry.tier.capacity_blocks();
            let no_room = || KvStoreError::NoRoom {
                tier: entry.tier.name().to_string(),
                capacity_blocks: capacity,
            };
            let mut tier_full_retries = 0;
            let outcome = loop {
                // Registered before looking, so a wake-up between the look and the wait
                // is not lost.
                let room = self.inner.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                let admission = lock(&self.inner.index).reserve(t, key, capacity);
                match admission {
                    Admission::Present => return Ok(PutOutcome::AlreadyPresent),
                    Admission::Evict(victim) => {
                        self.evict(t, victim).await?;
                        continue;
                    }
                    Admission::Wait => {
                        room.await;
                        continue;
                    }
                    Admission::NoRoom => return Err(no_room()),
                    Admission::Reserved => {}
                }
                let reservation = Reservation {
                    inner: &self.inner,
                    tier: t,
                    key,
                };
                let result = entry.tier.put(key, data.clone()).await;
                reservation.finish(result.is_ok());
                match result {
                    // The medium still holds slots of removed blocks that are being read
                    // (zero-copy views): make room elsewhere in the tier and try again.
                    Err(TierError::Full { .. }) if tier_full_retries < 8 => {
                        tier_full_retries += 1;
                        let victim =
                            lock(&self.inner.index).victim(t, Some(key.namespace), capacity);
                        match victim {
                            Some(v) => self.evict(t, v).await?,
                            None => return Err(no_room()),
                        }
                    }
                    other => break other?,
                }
            };
            let len = data.len() as u64;
            if outcome == PutOutcome::Stored {
                entry.counters.bytes_written.fetch_add(len, Relaxed);
                self.emit(StoreEventKind::Stored, t, key);
            }
            Ok(outcome)
        })
    }

    /// Removes `victim` (pinned by `reserve`) from tier `t`, demoting it first when the
    /// policy says so. A block that cannot be demoted is dropped from this tier all the
    /// same (it is a cache); the failure is counted and logged.
    async fn evict(&self, t: usize, victim: BlockKey) -> Result<()> {
        let inner = &self.inner;
        let eviction = Eviction {
            inner,
            tier: t,
            victim,
        };
        let entry = &inner.tiers[t];
        let demote = entry.policy.on_evict == EvictPolicy::Demote
            && inner.tiers[t + 1..].iter().any(|e| e.tier.accepts_puts());
        if demote && !self.held_below(t, &victim) {
            let moved = match entry.tier.get(victim).await {
                Ok(Some(data)) => self.demote(t, victim, data).await,
                Ok(None) => Ok(()),
                Err(e) => Err(e.into()),
            };
            match moved {
                Ok(()) => entry.counters.demotions.fetch_add(1, Relaxed),
                Err(e) => {
                    tracing::warn!(tier = entry.tier.name(), key = %victim, error = %e, "demotion failed; dropping the block");
                    entry.counters.demotion_failures.fetch_add(1, Relaxed)
                }
            };
        }
        let removed = entry.tier.remove(victim).await;
        eviction.finish(removed.is_ok());
        removed?;
        entry.counters.evictions.fetch_add(1, Relaxed);
        self.emit(StoreEventKind::Removed, t, victim);
        Ok(())
    }

    /// A slot of the top host tier for an in-place writer (the GPU offload path copies
    /// a block straight into it; a `put` of [`StagedSlot::into_bytes`] then adopts it),
    /// evicting (and demoting) the least recently used block when none is free. `None`
    /// when the top tier is not a host tier or nothing can be evicted.
    pub async fn stage_top(&self) -> Result<Option<StagedSlot>> {
        let Some((host, _)) = self.inner.top_host.as_ref() else {
            return Ok(None);
        };
        for _ in 0..8 {
            if let Some(slot) = host.stage() {
                return Ok(Some(slot));
            }
            let capacity = self.inner.tiers[0].tier.capacity_blocks();
            let victim = lock(&self.inner.index).victim(0, None, capacity);
            match victim {
                Some(v) => self.evict(0, v).await?,
                None => return Ok(None),
            }
        }
        Ok(host.stage())
    }

    /// Whether a tier below `t` that takes puts already holds `key`.
    fn held_below(&self, t: usize, key: &BlockKey) -> bool {
        let ix = lock(&self.inner.index);
        (t + 1..self.inner.tiers.len())
            .any(|n| self.inner.tiers[n].tier.accepts_puts() && ix.holds(key, n))
    }

    /// Moves an evicted block of tier `t` down: into the next tier that takes it, so a
    /// tier whose blocks are all pinned by readers passes it on instead of losing it.
    async fn demote(&self, t: usize, key: BlockKey, data: Bytes) -> Result<()> {
        let mut last = None;
        for next in t + 1..self.inner.tiers.len() {
            if !self.inner.tiers[next].tier.accepts_puts() {
                continue;
            }
            match self.place(next, key, data.clone()).await {
                Ok(_) => return Ok(()),
                Err(e @ KvStoreError::NoRoom { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The block's payload from the highest tier holding it, or `None`.
    pub async fn get(&self, ns: &Namespace, hash: BlockHash) -> Result<Option<Bytes>> {
        self.get_key(Self::key(ns, hash)).await
    }

    /// The block's payload by raw key; a lower-tier hit is promoted in the background.
    pub async fn get_key(&self, key: BlockKey) -> Result<Option<Bytes>> {
        self.read_key(key, true).await
    }

    /// Like [`TieredStore::get_key`]; `promote = false` leaves the local tiers as they
    /// are (what the block service does for a peer's fetch unless configured
    /// otherwise). A block that came from a peer (a tier that is not indexed) is always
    /// kept locally: caching what peers hold is what such a tier is for.
    pub async fn read_key(&self, key: BlockKey, promote: bool) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        let mut tried: u16 = 0;
        let mut last_error = None;
        loop {
            let next = {
                let mut ix = lock(&inner.index);
                let candidates = u16::from(ix.mask(&key)) & !tried;
                (candidates != 0).then(|| {
                    let t = candidates.trailing_zeros() as usize;
                    ix.lru[t].promote(&key);
                    ix.pin(key);
                    t
                })
            };
            let Some(t) = next else {
                if let Some(data) = self.get_unindexed(key, tried).await? {
                    return Ok(Some(data));
                }
                for e in &inner.tiers[tried.count_ones() as usize..] {
                    if e.tier.is_indexed() {
                        e.counters.misses.fetch_add(1, Relaxed);
                    }
                }
                return match last_error {
                    Some(e) => Err(e),
                    None => Ok(None),
                };
            };
            let _pin = PinGuard {
                inner: Arc::clone(inner),
                keys: vec![key],
            };
            let entry = &inner.tiers[t];
            tried |= (1u16 << (t + 1)) - 1;
            match entry.tier.get(key).await {
                Ok(Some(data)) => {
                    for e in &inner.tiers[..t] {
                        e.counters.misses.fetch_add(1, Relaxed);
                    }
                    self.record_hit(t, key, &data, promote);
                    return Ok(Some(data));
                }
                Ok(None) => {
                    // Gone or corrupt in that tier: forget it there, try lower tiers.
                    if lock(&inner.index).drop_from(t, &key) {
                        self.emit(StoreEventKind::Removed, t, key);
                    }
                }
                Err(e) => {
                    tracing::warn!(tier = entry.tier.name(), key = %key, error = %e, "read failed; trying lower tiers");
                    last_error = Some(e.into());
                }
            }
        }
    }

    /// Asks the tiers that are not indexed (peers) for `key`, top first, skipping those
    /// in `tried`; a hit is promoted into the top tier.
    async fn get_unindexed(&self, key: BlockKey, tried: u16) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        for (t, entry) in inner.tiers.iter().enumerate() {
            if entry.tier.is_indexed() || tried & (1 << t) != 0 {
                continue;
            }
            let found = match entry.tier.get(key).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(tier = entry.tier.name(), key = %key, error = %e, "peer read failed");
                    entry.counters.misses.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let Some(data) = found else {
                entry.counters.misses.fetch_add(1, Relaxed);
                continue;
            };
            self.record_hit(t, key, &data, true);
            return Ok(Some(data));
        }
        Ok(None)
    }

    /// Counts a hit in tier `t` and, for a lower tier, queues its promotion into the
    /// top tier (done in the background: the caller has its data either way).
    fn record_hit(&self, t: usize, key: BlockKey, data: &Bytes, promote: bool) {
        let entry = &self.inner.tiers[t];
        entry.counters.hits.fetch_add(1, Relaxed);
        entry
            .counters
            .bytes_read
            .fetch_add(data.len() as u64, Relaxed);
        if t != 0 && promote {
            self.queue_promotion(key, data, t);
        }
    }

    /// Like [`TieredStore::lookup_prefix`], then asks the peers (tiers that are not
    /// indexed) for the blocks after the local prefix.
    pub async fn lookup_prefix_deep(&self, ns: &Namespace, hashes: &[BlockHash]) -> usize {
        let local = self.lookup_prefix(ns, hashes);
        let rest: Vec<BlockKey> = hashes[local..].iter().map(|h| Self::key(ns, *h)).collect();
        if rest.is_empty() {
            return local;
        }
        let mut best = 0;
        for entry in self.inner.tiers.iter().filter(|e| !e.tier.is_indexed()) {
            match entry.tier.lookup_prefix(&rest).await {
                Ok(n) => best = best.max(n),
                Err(e) => {
                    tracing::warn!(tier = entry.tier.name(), error = %e, "peer lookup failed")
                }
            }
        }
        local + best
    }

    /// [`TieredStore::locate_prefix`] by namespace digest and raw hashes (the block
    /// service's form).
    pub fn locate_prefix_keys(&self, namespace: u64, hashes: &[u128]) -> Vec<usize> {
        let ix = lock(&self.inner.index);
        hashes
            .iter()
            .map(|h| ix.mask(&BlockKey::new(namespace, *h)))
            .take_while(|&m| m != 0)
            .map(|m| m.trailing_zeros() as usize)
            .collect()
    }

    /// How many leading blocks of `hashes` are held in any tier, answered from memory.
    pub fn lookup_prefix(&self, ns: &Namespace, hashes: &[BlockHash]) -> usize {
        let id = ns.id();
        let ix = lock(&self.inner.index);
        hashes
            .iter()
            .take_while(|h| ix.location.contains_key(&BlockKey::new(id, h.0)))
            .count()
    }

    /// For the longest cached prefix of `hashes`, the index of the highest tier holding
    /// each block.
    pub fn locate_prefix(&self, ns: &Namespace, hashes: &[BlockHash]) -> Vec<usize> {
        let raw: Vec<u128> = hashes.iter().map(|h| h.0).collect();
        self.locate_prefix_keys(ns.id(), &raw)
    }

    /// Makes `ns` known to every tier that needs its name (peers' block services).
    pub fn register_namespace(&self, ns: &Namespace) {
        for entry in self.inner.tiers.iter() {
            entry.tier.register_namespace(ns.name());
        }
    }

    /// Whether any tier the store indexes holds the block (no I/O; a peer's block
    /// service is not asked).
    pub fn contains(&self, ns: &Namespace, hash: BlockHash) -> bool {
        lock(&self.inner.index).mask(&Self::key(ns, hash)) != 0
    }

    /// Removes a block from every tier; true if any held it.
    pub async fn remove(&self, ns: &Namespace, hash: BlockHash) -> Result<bool> {
        self.remove_key(Self::key(ns, hash)).await
    }

    /// [`TieredStore::remove`] by raw key.
    pub async fn remove_key(&self, key: BlockKey) -> Result<bool> {
        let mask = lock(&self.inner.index).mask(&key);
        for t in 0..self.inner.tiers.len() {
            if mask & (1 << t) != 0 {
                self.inner.tiers[t].tier.remove(key).await?;
                if lock(&self.inner.index).drop_from(t, &key) {
                    self.emit(StoreEventKind::Removed, t, key);
                }
            }
        }
        Ok(mask != 0)
    }

    /// Pins blocks (those present) so they are not evicted until the guard drops, e.g.
    /// while they are being transferred to a GPU or a peer.
    pub fn pin(&self, ns: &Namespace, hashes: &[BlockHash]) -> PinGuard {
        let mut ix = lock(&self.inner.index);
        let keys: Vec<_> = hashes
            .iter()
            .map(|h| Self::key(ns, *h))
            .filter(|k| ix.mask(k) != 0)
            .collect();
        for k in &keys {
            ix.pin(*k);
        }
        PinGuard {
            inner: Arc::clone(&self.inner),
            keys,
        }
    }

    /// A stream of every block entering or leaving a tier from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.inner.events.subscribe()
    }

    fn emit(&self, kind: StoreEventKind, tier: usize, key: BlockKey) {
        let seq = self.inner.seq.fetch_add(1, Relaxed) + 1;
        // No subscriber is fine.
        let _ = self.inner.events.send(StoreEvent {
            seq,
            kind,
            tier,
            key,
        });
    }

    /// The tiers, top first.
    pub fn tiers(&self) -> Vec<Arc<dyn Tier>> {
        self.inner
            .tiers
            .iter()
            .map(|e| Arc::clone(&e.tier))
            .collect()
    }

    /// The top tier when its slab is shared with same-host clients.
    pub fn shared_host(&self) -> Option<&HostTier> {
        self.inner
            .top_host
            .as_ref()
            .and_then(|(host, shared)| shared.then_some(host))
    }

    /// The top tier when it is a host tier: a same-process writer (the GPU offload
    /// path) stages slots there and fills them in place, and a `put` of the staged
    /// bytes adopts the slot without a copy. Pinned when the slab is pinned.
    pub fn top_host(&self) -> Option<&HostTier> {
        self.inner.top_host.as_ref().map(|(host, _)| host)
    }

    /// Largest payload a put accepts.
    pub fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }

    /// Blocks of the namespaces with these digests: per tier, and distinct in any
    /// tier (what a caller limited to those namespaces may see of the store).
    pub fn blocks_of(&self, namespaces: &[u64]) -> (Vec<u64>, u64) {
        let ix = lock(&self.inner.index);
        let per_tier = (0..self.inner.tiers.len())
            .map(|t| namespaces.iter().map(|&ns| ix.held_by(t, ns)).sum())
            .collect();
        let distinct = ix
            .location
            .keys()
            .filter(|k| namespaces.contains(&k.namespace))
            .count() as u64;
        (per_tier, distinct)
    }

    /// Every tier's counters and occupancy, and the store's, now.
    pub fn stats(&self) -> StoreStats {
        let (blocks, pinned) = {
            let ix = lock(&self.inner.index);
            (ix.location.len() as u64, ix.pins.len() as u64)
        };
        StoreStats {
            tiers: self
                .inner
                .tiers
                .iter()
                .map(|e| {
                    let c = &e.counters;
                    TierStoreStats {
                        tier: e.tier.stats(),
                        hits: c.hits.load(Relaxed),
                        misses: c.misses.load(Relaxed),
                        bytes_read: c.bytes_read.load(Relaxed),
                        bytes_written: c.bytes_written.load(Relaxed),
                        evictions: c.evictions.load(Relaxed),
                        demotions: c.demotions.load(Relaxed),
                        demotion_failures: c.demotion_failures.load(Relaxed),
                        promotions: c.promotions.load(Relaxed),
                        promotions_skipped: c.promotions_skipped.load(Relaxed),
                    }
                })
                .collect(),
            blocks,
            pinned,
        }
    }
}

//! [`TieredStoreBuilder`]: one door to a store built in code (the way foyer's
//! `HybridCacheBuilder` is). Tiers are added top first; whatever is not set takes the
//! default documented once, in [`tierkv_tiers::defaults`] and [`StoreOptions`] — the
//! same store an empty config file gives. This and the config factory
//! (`TieredStore::open`) are where media are named; the store core only sees `Tier`s.

use std::sync::Arc;

use tierkv_tiers::{
    DiskTier, DiskTierConfig, HostTier, HostTierConfig, ObjectTier, ObjectTierConfig, Tier,
    defaults,
};

use crate::{
    KvStoreError, RemoteTier, RemoteTierConfig, Result, StoreOptions, TierPolicy, TieredStore,
};

/// A tier waiting to be opened.
enum PendingTier {
    Host(HostTierConfig),
    Disk(DiskTierConfig),
    Object(ObjectTierConfig),
    Remote(RemoteTierConfig),
    Built(Arc<dyn Tier>),
}

/// Builds a [`TieredStore`]; see [`TieredStore::builder`].
pub struct TieredStoreBuilder {
    slot_bytes: usize,
    options: StoreOptions,
    tiers: Vec<(PendingTier, TierPolicy)>,
}

impl std::fmt::Debug for TieredStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredStoreBuilder")
            .field("slot_bytes", &self.slot_bytes)
            .field("options", &self.options)
            .field("tiers", &self.tiers.len())
            .finish()
    }
}

impl TieredStore {
    /// A builder with no tiers, slots of [`defaults::SLOT_BYTES`] and the default
    /// [`StoreOptions`].
    ///
    /// ```no_run
    /// # async fn f() -> tierkv_kvstore::Result<()> {
    /// use tierkv_kvstore::TieredStore;
    /// use tierkv_tiers::{DiskTierConfig, HostTierConfig};
    /// let store = TieredStore::builder()
    ///     .slot_bytes(4 << 20)
    ///     .host(HostTierConfig { capacity_bytes: 8 << 30, ..Default::default() })
    ///     .disk(DiskTierConfig { path: "/nvme/tierkv".into(), ..Default::default() })
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> TieredStoreBuilder {
        TieredStoreBuilder {
            slot_bytes: defaults::SLOT_BYTES,
            options: StoreOptions::default(),
            tiers: Vec::new(),
        }
    }
}

impl TieredStoreBuilder {
    /// Largest block payload, set on every tier this builder opens (so they agree).
    /// Default [`defaults::SLOT_BYTES`].
    pub fn slot_bytes(mut self, bytes: usize) -> Self {
        self.slot_bytes = bytes;
        self
    }

    /// Everything but the tiers (promotion, event buffer). Default
    /// [`StoreOptions::default`].
    pub fn options(mut self, options: StoreOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a host-memory tier below the ones added so far.
    pub fn host(self, config: HostTierConfig) -> Self {
        self.push(PendingTier::Host(config))
    }

    /// Adds an NVMe tier (io_uring slot file + RocksDB index).
    pub fn disk(self, config: DiskTierConfig) -> Self {
        self.push(PendingTier::Disk(config))
    }

    /// Adds an object-storage tier (S3-compatible or a local directory).
    pub fn object(self, config: ObjectTierConfig) -> Self {
        self.push(PendingTier::Object(config))
    }

    /// Adds a peer's block service as a tier (never the top one).
    pub fn remote(self, config: RemoteTierConfig) -> Self {
        self.push(PendingTier::Remote(config))
    }

    /// Adds a tier opened by the caller (its slot size is its own).
    pub fn tier(self, tier: Arc<dyn Tier>) -> Self {
        self.push(PendingTier::Built(tier))
    }

    /// Sets the policy of the tier added last. Default [`TierPolicy::default`]
    /// (write-back: demote on eviction; no write-through).
    pub fn policy(mut self, policy: TierPolicy) -> Self {
        if let Some(last) = self.tiers.last_mut() {
            last.1 = policy;
        }
        self
    }

    fn push(mut self, tier: PendingTier) -> Self {
        self.tiers.push((tier, TierPolicy::default()));
        self
    }

    /// Opens every tier (creating directories and files as needed), indexes what
    /// persistent tiers kept from an earlier run, and starts the store.
    pub async fn build(self) -> Result<TieredStore> {
        let slot_bytes = self.slot_bytes;
        let mut tiers: Vec<(Arc<dyn Tier>, TierPolicy)> = Vec::new();
        let mut top_host = None;
        for (pending, policy) in self.tiers {
            let tier: Arc<dyn Tier> = match pending {
                PendingTier::Host(mut c) => {
                    c.slot_bytes = slot_bytes;
                    let shared = c.shared;
                    let host = HostTier::new(c)?;
                    if tiers.is_empty() {
                        top_host = Some((host.clone(), shared));
                    }
                    Arc::new(host)
                }
                PendingTier::Disk(mut c) => {
                    c.slot_bytes = slot_bytes;
                    // Opening replays RocksDB's log: blocking work off the runtime.
                    let tier = tokio::task::spawn_blocking(move || DiskTier::open(c))
                        .await
                        .map_err(|e| KvStoreError::Config(format!("opening disk tier: {e}")))??;
                    Arc::new(tier)
                }
                PendingTier::Object(mut c) => {
                    c.slot_bytes = slot_bytes;
                    Arc::new(ObjectTier::open(c).await?)
                }
                PendingTier::Remote(mut c) => {
                    c.slot_bytes = slot_bytes;
                    Arc::new(RemoteTier::new(c)?)
                }
                PendingTier::Built(tier) => tier,
            };
            tiers.push((tier, policy));
        }
        TieredStore::build(tiers, self.options, top_host).await
    }
}

//! A peer's block service used as a tier: a decode worker's store falls through to the
//! blocks a prefill worker published. Read-only by default; read-write publishes puts
//! (and demotions) to the peer. The peer owns its content, so this tier is not indexed
//! locally: the store asks it on a local miss, and `lookup_prefix` asks it in one call.

use async_trait::async_trait;
use bytes::Bytes;
use tierkv_tiers::{BlockKey, PutOutcome, Tier, TierCounters, TierError, TierKind, TierStats};

use crate::namespace_names::{DEFAULT_NAMES, NamespaceNames};
use crate::service::{BlockClient, BlockClientConfig};

/// Configuration of a [`RemoteTier`].
#[derive(Clone, Debug)]
pub struct RemoteTierConfig {
    /// Default `"remote"`.
    pub name: String,
    /// How to reach the peer. No default: the peer's address is required.
    pub client: BlockClientConfig,
    /// Refuse puts. Default true.
    pub read_only: bool,
    /// Namespaces this tier serves; more can be added with
    /// [`RemoteTier::register_namespace`].
    pub namespaces: Vec<String>,
    /// Largest block. Default 2 MiB.
    pub slot_bytes: usize,
}

/// A peer's block service as a tier.
pub struct RemoteTier {
    name: String,
    client: BlockClient,
    read_only: bool,
    slot_bytes: usize,
    names: NamespaceNames,
    counters: TierCounters,
}

impl std::fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTier")
            .field("name", &self.name)
            .field("addr", &self.client.addr())
            .field("read_only", &self.read_only)
            .field("slot_bytes", &self.slot_bytes)
            .finish_non_exhaustive()
    }
}

impl RemoteTier {
    /// Connects lazily: a peer that is down makes reads miss, not the store fail.
    pub fn new(config: RemoteTierConfig) -> crate::Result<RemoteTier> {
        let tier = RemoteTier {
            client: BlockClient::new(config.client)?,
            name: config.name,
            read_only: config.read_only,
            slot_bytes: config.slot_bytes,
            names: NamespaceNames::new(DEFAULT_NAMES),
            counters: TierCounters::default(),
        };
        for ns in &config.namespaces {
            tier.register_namespace(ns);
        }
        Ok(tier)
    }

    /// Lets the tier serve keys of `namespace` (keys carry only its digest).
    pub fn register_namespace(&self, namespace: &str) {
        self.names.remember(namespace);
    }

    fn namespace(&self, key: &BlockKey) -> Option<String> {
        self.names.name(key.namespace)
    }

    fn unavailable(&self, e: crate::KvStoreError) -> TierError {
        TierCounters::add(&self.counters.io_errors, 1);
        TierError::Unavailable {
            tier: self.name.clone(),
            reason: "the peer's block service failed".into(),
            source: Some(Box::new(e)),
        }
    }
}

#[async_trait]
impl Tier for RemoteTier {
    fn register_namespace(&self, name: &str) {
        RemoteTier::register_namespace(self, name)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Remote
    }
    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    /// The peer bounds itself; locally the tier is unbounded.
    fn capacity_blocks(&self) -> u64 {
        u64::MAX / self.slot_bytes.max(1) as u64
    }
    fn payload_bytes(&self) -> u64 {
        0
    }
    fn len(&self) -> u64 {
        0
    }
    fn is_persistent(&self) -> bool {
        false
    }
    fn is_indexed(&self) -> bool {
        false
    }
    fn accepts_puts(&self) -> bool {
        !self.read_only
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> tierkv_tiers::Result<PutOutcome> {
        if self.read_only {
            return Err(TierError::ReadOnly(self.name.clone()));
        }
        tierkv_tiers::check_payload(&self.name, self.slot_bytes, &data)?;
        let Some(ns) = self.namespace(&key) else {
            return Err(TierError::Unavailable {
                tier: self.name.clone(),
                reason: format!(
                    "namespace {:016x} is not registered with this tier",
                    key.namespace
                ),
                source: None,
            });
        };
        let len = data.len() as u64;
        let summary = self
            .client
            .publish(&ns, &[(key.hash, data)])
            .await
            .map_err(|e| self.unavailable(e))?;
        if !summary.rejected.is_empty() {
            return Err(TierError::Unavailable {
                tier: self.name.clone(),
                reason: "the peer rejected the block".into(),
                source: None,
            });
        }
        TierCounters::add(&self.counters.puts, 1);
        TierCounters::add(&self.counters.put_bytes, len);
        Ok(if summary.stored > 0 {
            PutOutcome::Stored
        } else {
            PutOutcome::AlreadyPresent
        })
    }

    async fn get(&self, key: BlockKey) -> tierkv_tiers::Result<Option<Bytes>> {
        TierCounters::add(&self.counters.gets, 1);
        let Some(ns) = self.namespace(&key) else {
            TierCounters::add(&self.counters.misses, 1);
            return Ok(None);
        };
        let mut blocks = self
            .client
            .fetch(&ns, &[key.hash])
            .await
            .map_err(|e| self.unavailable(e))?;
        match blocks.pop().flatten() {
            Some(data) => {
                TierCounters::add(&self.counters.hits, 1);
                TierCounters::add(&self.counters.get_bytes, data.len() as u64);
                Ok(Some(data))
            }
            None => {
                TierCounters::add(&self.counters.misses, 1);
                Ok(None)
            }
        }
    }

    async fn contains(&self, key: BlockKey) -> tierkv_tiers::Result<bool> {
        Ok(self.lookup_prefix(&[key]).await? == 1)
    }

    /// The peer evicts on its own; a remote block cannot be removed from here.
    async fn remove(&self, _key: BlockKey) -> tierkv_tiers::Result<bool> {
        Ok(false)
    }

    async fn keys(&self) -> tierkv_tiers::Result<Vec<(BlockKey, u64)>> {
        Ok(Vec::new())
    }

    async fn lookup_prefix(&self, keys: &[BlockKey]) -> tierkv_tiers::Result<usize> {
        let Some(first) = keys.first() else {
            return Ok(0);
        };
        let Some(ns) = self.namespace(first) else {
            return Ok(0);
        };
        let same_ns = keys.iter().take_while(|k| k.namespace == first.namespace);
        let hashes: Vec<u128> = same_ns.map(|k| k.hash).collect();
        let (hits, _) = self
            .client
            .lookup(&ns, &hashes)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(hits as usize)
    }

    fn stats(&self) -> TierStats {
        self.counters
            .snapshot(&self.name, TierKind::Remote, 0, self.slot_bytes, 0, 0)
    }
}

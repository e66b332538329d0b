//! Where blocks live: a [`TieredStore`] in this process, or a `tierkv serve` sidecar
//! reached through a [`BlockClient`]. Both answer the same calls.

use std::time::Duration;

use bytes::Bytes;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig};
use tierkv_kvstore::{BlockHash, Namespace, PutOutcome, TieredStore};
use tokio::sync::watch;

use crate::error::{PyTierkvError, Result};

/// A block service started on an embedded store.
#[derive(Debug)]
pub(crate) struct Served {
    pub addr: String,
    pub stop: watch::Sender<bool>,
    /// The service's task; it holds a handle to the store until it ends.
    pub task: tokio::task::JoinHandle<()>,
}

/// The two kinds of store a Python engine can use.
pub(crate) enum Backend {
    Embedded {
        store: TieredStore,
        served: std::sync::Mutex<Option<Served>>,
    },
    Sidecar(BlockClient),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Embedded { store, .. } => f
                .debug_struct("Embedded")
                .field("tiers", &store.tiers().len())
                .finish(),
            Backend::Sidecar(c) => f.debug_tuple("Sidecar").field(&c.addr()).finish(),
        }
    }
}

/// Options of a sidecar connection (every default in one place).
#[derive(Clone, Debug)]
pub(crate) struct SidecarOptions {
    /// Bearer token. Default none.
    pub token: Option<String>,
    /// Per call. Default 60 s.
    pub timeout: Duration,
    /// Retries of a failed call. Default 3.
    pub retries: u32,
}

impl Backend {
    pub(crate) fn sidecar(addr: &str, options: SidecarOptions) -> Result<Backend> {
        let mut config = BlockClientConfig::new(addr);
        config.token = options.token;
        config.timeout = options.timeout;
        config.retries = options.retries;
        Ok(Backend::Sidecar(BlockClient::new(config)?))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Backend::Embedded { .. } => "embedded",
            Backend::Sidecar(_) => "sidecar",
        }
    }

    /// Stores blocks; returns how many were new (the rest were already present).
    pub(crate) async fn put_many(&self, ns: &Namespace, blocks: Vec<(u128, Bytes)>) -> Result<u64> {
        let expected = ns.layout().block_bytes();
        if let Some((_, bad)) = blocks.iter().find(|(_, d)| d.len() != expected) {
            return Err(PyTierkvError::PayloadSize {
                namespace: ns.name().to_string(),
                expected,
                got: bad.len(),
            });
        }
        match self {
            Backend::Embedded { store, .. } => {
                let puts = blocks
                    .into_iter()
                    .map(|(h, data)| store.put(ns, BlockHash(h), data));
                let mut stored = 0;
                for outcome in futures::future::join_all(puts).await {
                    if outcome? == PutOutcome::Stored {
                        stored += 1;
                    }
                }
                Ok(stored)
            }
            Backend::Sidecar(client) => {
                let summary = client.publish(ns.name(), &blocks).await?;
                if let Some(h) = summary.rejected.first() {
                    return Err(PyTierkvError::Argument(format!(
                        "the block service rejected block {h:032x} (checksum mismatch)"
                    )));
                }
                Ok(summary.stored)
            }
        }
    }

    /// The payloads of `hashes`, `None` where a block is missing (or failed its checksum).
    pub(crate) async fn get_many(
        &self,
        ns: &Namespace,
        hashes: &[u128],
    ) -> Result<Vec<Option<Bytes>>> {
        let blocks = match self {
            Backend::Embedded { store, .. } => {
                let gets = hashes.iter().map(|&h| store.get(ns, BlockHash(h)));
                let mut out = Vec::with_capacity(hashes.len());
                for got in futures::future::join_all(gets).await {
                    out.push(got?);
                }
                out
            }
            Backend::Sidecar(client) => client.fetch(ns.name(), hashes).await?,
        };
        // A payload of the wrong size is not a block of this namespace: never data.
        let expected = ns.layout().block_bytes();
        Ok(blocks
            .into_iter()
            .map(|b| b.filter(|d| d.len() == expected))
            .collect())
    }

    /// How many leading blocks of the chain `hashes` are held (no payload I/O).
    pub(crate) async fn lookup(&self, ns: &Namespace, hashes: &[u128]) -> Result<usize> {
        match self {
            Backend::Embedded { store, .. } => {
                let chain: Vec<BlockHash> = hashes.iter().map(|&h| BlockHash(h)).collect();
                Ok(store.lookup_prefix(ns, &chain))
            }
            Backend::Sidecar(client) => Ok(client.lookup(ns.name(), hashes).await?.0 as usize),
        }
    }

    /// The store's figures as JSON: per tier (name, kind, capacity, used, blocks, hits,
    /// misses, bytes, evictions, corrupt blocks) and the number of distinct blocks.
    pub(crate) async fn stats(&self) -> Result<serde_json::Value> {
        match self {
            Backend::Embedded { store, .. } => {
                let s = store.stats();
                let tiers: Vec<serde_json::Value> = s
                    .tiers
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.tier.name,
                            "kind": t.tier.kind.to_string(),
                            "capacity_bytes": t.tier.capacity_bytes,
                            "used_bytes": t.tier.used_bytes,
                            "blocks": t.tier.blocks,
                            "hits": t.hits,
                            "misses": t.misses,
                            "bytes_read": t.bytes_read,
                            "bytes_written": t.bytes_written,
                            "evictions": t.evictions,
                            "demotions": t.demotions,
                            "promotions": t.promotions,
                            "corrupt_blocks": t.tier.corrupt_blocks,
                        })
                    })
                    .collect();
                Ok(serde_json::json!({"blocks": s.blocks, "tiers": tiers}))
            }
            Backend::Sidecar(client) => {
                let s = client.stats().await?;
                let tiers: Vec<serde_json::Value> = s
                    .tiers
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "name": t.name,
                            "kind": t.kind,
                            "capacity_bytes": t.capacity_bytes,
                            "used_bytes": t.used_bytes,
                            "blocks": t.blocks,
                            "hits": t.hits,
                            "misses": t.misses,
                            "bytes_read": t.bytes_read,
                            "bytes_written": t.bytes_written,
                            "evictions": t.evictions,
                            "corrupt_blocks": t.corrupt_blocks,
                        })
                    })
                    .collect();
                Ok(serde_json::json!({"blocks": s.blocks, "tiers": tiers}))
            }
        }
    }
}

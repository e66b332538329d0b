//! Block identity, KV layout and the tiered KV block store.
//!
//! - [`KvLayout`]: the geometry of one block (all layers, K and V) and its byte order.
//! - [`Namespace`]: what makes KV payloads incompatible or private; seeds the hash chain.
//! - [`BlockHash`] and [`hash_blocks`]: the prefix hash chain over token ids.
//! - [`TieredStore`]: an ordered list of tiers with eviction, demotion, promotion,
//!   pinning, an in-memory `lookup_prefix` and an event stream.
//! - [`StoreConfig`]: the TOML configuration of a store.
//! - [`service`]: the gRPC block service (server, client) and [`RemoteTier`], a peer's
//!   service used as a tier.
//!
//! # A store: put, get, look up a prefix
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierkv_kvstore::Result<()> {
//! use bytes::Bytes;
//! use tierkv_kvstore::{DType, KvLayout, Namespace, TieredStore, hash_blocks};
//! use tierkv_tiers::HostTierConfig;
//!
//! // Two layers, two KV heads of 64 at f16, 16 tokens per block: 16 KiB a block.
//! let layout = KvLayout::new(2, 2, 64, DType::F16, 16)?;
//! let ns = Namespace::new("my-model", layout)?;
//! let store = TieredStore::builder()
//!     .slot_bytes(layout.block_bytes())
//!     .host(HostTierConfig { capacity_bytes: 16 << 20, prefault: false, ..Default::default() })
//!     .build()
//!     .await?;
//!
//! // A 48-token prompt is three blocks; the engine stores the KV of the first two.
//! let prompt: Vec<u32> = (0..48).collect();
//! let hashes = hash_blocks(&ns, &prompt);
//! for h in &hashes[..2] {
//!     store.put(&ns, *h, Bytes::from(vec![7u8; layout.block_bytes()])).await?;
//! }
//! // A later request with the same prefix reuses them instead of recomputing.
//! assert_eq!(store.lookup_prefix(&ns, &hashes), 2);
//! let block = store.get(&ns, hashes[0]).await?.expect("stored");
//! assert_eq!(block.len(), layout.block_bytes());
//! # Ok(())
//! # }
//! ```
//!
//! # A block service: serve a store, publish to it and fetch from it
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierkv_kvstore::Result<()> {
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use tierkv_kvstore::metrics::Metrics;
//! use tierkv_kvstore::service::{BlockClient, BlockClientConfig, ServiceConfig, serve};
//! use tierkv_kvstore::{DType, KvLayout, Namespace, TieredStore};
//! use tierkv_tiers::HostTierConfig;
//!
//! let layout = KvLayout::new(2, 2, 64, DType::F16, 16)?;
//! let ns = Namespace::new("my-model", layout)?;
//! let store = TieredStore::builder()
//!     .slot_bytes(layout.block_bytes())
//!     .host(HostTierConfig { capacity_bytes: 16 << 20, prefault: false, ..Default::default() })
//!     .build()
//!     .await?;
//!
//! // A prefill worker's sidecar: the store behind a gRPC port (loopback: no token needed).
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
//! let addr = listener.local_addr().expect("bound").to_string();
//! let config = ServiceConfig::default();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = serve(store, &config, listener, Arc::new(Metrics::new()), async move {
//!     let _ = stopped.await;
//! });
//!
//! // The prefill worker publishes a block; a decode worker fetches it.
//! let workers = async move {
//!     let client = BlockClient::new(BlockClientConfig::new(addr))?;
//!     let block = Bytes::from(vec![42u8; layout.block_bytes()]);
//!     let summary = client.publish(ns.name(), &[(0xabc, block.clone())]).await?;
//!     assert_eq!(summary.stored, 1);
//!     let fetched = client.fetch(ns.name(), &[0xabc, 0xdef]).await?;
//!     assert_eq!(fetched, vec![Some(block), None]);
//!     let _ = stop.send(());
//!     Ok::<_, tierkv_kvstore::KvStoreError>(())
//! };
//! let (served, used) = tokio::join!(server, workers);
//! served?;
//! used?;
//! # Ok(())
//! # }
//! ```

mod builder;
mod config;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod layout;
pub mod metrics;
mod namespace;
mod namespace_names;
mod remote_tier;
pub mod service;
pub mod store;

pub use builder::TieredStoreBuilder;
pub use config::{
    ByteSize, DiskSection, EvictPolicy, GpuSection, HostSection, ObjectSection, RemoteSection,
    S3Config, StoreConfig, TierConfig, TierSection,
};
pub use error::{KvStoreError, Result};
pub use hash::{BlockHash, hash_blocks, hash_next};
pub use layout::{DType, KvLayout};
pub use namespace::{Namespace, NamespaceKey, namespace_id};
pub use remote_tier::{RemoteTier, RemoteTierConfig};
pub use store::{
    PinGuard, StoreEvent, StoreEventKind, StoreOptions, StoreStats, TierPolicy, TierStoreStats,
    TieredStore,
};
pub use tierkv_tiers::{BlockKey, PutOutcome, Tier, TierKind, TierStats, sync};

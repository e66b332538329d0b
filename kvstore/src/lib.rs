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
    ByteSize, DiskSection, EvictPolicy, HostSection, ObjectSection, RemoteSection, S3Config,
    StoreConfig, TierConfig, TierSection,
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
pub use tierkv_tiers::{BlockKey, PutOutcome, Tier, TierKind, TierStats};

//! The config-to-tiers factory: [`TieredStore::open`] builds every tier a
//! [`StoreConfig`] names, so the store core itself names no medium.

use std::sync::Arc;

use tierkv_tiers::{DiskTier, HostTier, ObjectTier, Tier};

use super::{StoreConfig, TierConfig};
use crate::{KvStoreError, Result, StoreOptions, TierPolicy, TieredStore};

impl TieredStore {
    /// Opens every configured tier (creating directories and files as needed) and
    /// indexes the blocks that persistent tiers kept from an earlier run.
    pub async fn open(config: &StoreConfig) -> Result<TieredStore> {
        config.validate()?;
        let mut tiers: Vec<(Arc<dyn Tier>, TierPolicy)> = Vec::new();
        let mut shared_host = None;
        for tc in &config.tiers {
            let s = tc.section();
            let policy = TierPolicy {
                write_through: s.write_through(),
                on_evict: s.on_evict(),
            };
            let tier: Arc<dyn Tier> = match tc {
                TierConfig::Host(h) => {
                    let host = HostTier::new(config.host_config(h))?;
                    if tiers.is_empty() && h.shared {
                        shared_host = Some(host.clone());
                    }
                    Arc::new(host)
                }
                TierConfig::Disk(d) => {
                    let dc = config.disk_config(d);
                    // Opening replays RocksDB's log: blocking work off the runtime.
                    let tier = tokio::task::spawn_blocking(move || DiskTier::open(dc))
                        .await
                        .map_err(|e| KvStoreError::Config(format!("opening disk tier: {e}")))??;
                    Arc::new(tier)
                }
                TierConfig::Object(o) => Arc::new(ObjectTier::open(config.object_config(o)).await?),
                TierConfig::Remote(r) => Arc::new(crate::RemoteTier::new(config.remote_config(r))?),
            };
            tiers.push((tier, policy));
        }
        TieredStore::build(
            tiers,
            StoreOptions {
                promote_on_hit: config.promote_on_hit,
                event_buffer: config.event_buffer,
                promote_queue: config.promote_queue,
            },
            shared_host,
        )
        .await
    }
}

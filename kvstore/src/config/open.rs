//! The config-to-tiers factory: [`TieredStore::open`] turns a [`StoreConfig`] into the
//! [`TieredStore::builder`] calls it stands for, so the store core names no medium.

use super::{StoreConfig, TierConfig};
use crate::{Result, TierPolicy, TieredStore};

#[cfg(feature = "cuda")]
fn gpu_tier(
    config: &StoreConfig,
    g: &super::GpuSection,
) -> Result<std::sync::Arc<dyn tierkv_tiers::Tier>> {
    Ok(std::sync::Arc::new(tierkv_tiers::GpuTier::new(
        config.gpu_config(g),
    )?))
}

#[cfg(not(feature = "cuda"))]
fn gpu_tier(
    _: &StoreConfig,
    g: &super::GpuSection,
) -> Result<std::sync::Arc<dyn tierkv_tiers::Tier>> {
    Err(crate::KvStoreError::Config(format!(
        "tier `{}`: kind = \"gpu\" needs a build with the `cuda` feature; this one has none",
        g.name
    )))
}

impl TieredStore {
    /// Opens every configured tier (creating directories and files as needed) and
    /// indexes the blocks that persistent tiers kept from an earlier run.
    pub async fn open(config: &StoreConfig) -> Result<TieredStore> {
        config.validate()?;
        let mut builder = TieredStore::builder()
            .slot_bytes(config.slot_bytes.0 as usize)
            .options(config.store_options());
        for tc in &config.tiers {
            let s = tc.section();
            builder = match tc {
                TierConfig::Host(h) => builder.host(config.host_config(h)),
                TierConfig::Disk(d) => builder.disk(config.disk_config(d)),
                TierConfig::Object(o) => builder.object(config.object_config(o)),
                TierConfig::Remote(r) => builder.remote(config.remote_config(r)),
                TierConfig::Gpu(g) => builder.tier(gpu_tier(config, g)?),
            }
            .policy(TierPolicy {
                write_through: s.write_through(),
                on_evict: s.on_evict(),
            });
        }
        builder.build().await
    }
}

//! [`EngineConfig`]: the `[engine]` table of the engine's configuration file.

use serde::{Deserialize, Serialize};
use tierkv_kvstore::{ByteSize, DType, KvLayout};

use crate::model::ModelConfig;
use crate::{EngineError, Result};

/// Knobs of the engine. Every field has a default that works on a laptop.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Tokens per KV block. Default 16 (the Qwen3-32B deployment uses 128).
    pub block_size: u32,
    /// Memory of the engine's KV pool. Default 1 GiB.
    pub kv_pool: ByteSize,
    /// Requests decoded together at most; more wait in a queue. Default 16.
    pub max_running: usize,
    /// Tokens computed per step at most: decode tokens first, then a chunk of a
    /// waiting prompt, so a long prompt never stalls running decodes. Default 256.
    pub max_batch_tokens: usize,
    /// Caps the model's context length. Default: the model's own.
    pub max_context: Option<usize>,
    /// Look up and load prompt prefixes from the store. Default true.
    pub load_from_store: bool,
    /// Publish every completed block to the store. Default true.
    pub publish_to_store: bool,
    /// Blocks waiting to be published at most; beyond that a block is skipped (and
    /// counted) rather than stalling decoding. Default 64.
    pub publish_queue: usize,
    /// Blocks fetched from the store in parallel for one request. Default 8.
    pub fetch_concurrency: usize,
    /// Threads of the model's compute pool (the scheduler runs on one of them).
    /// Default 0: one per core.
    pub threads: usize,
    /// The cluster's secret that keys salted namespaces (`TIERKV_NAMESPACE_KEY`, read
    /// by the binary; see [`tierkv_kvstore::NamespaceKey`]). Every worker and frontend
    /// of a cluster needs the same one. Never in a config file. Default none.
    #[serde(skip)]
    pub namespace_key: Option<tierkv_kvstore::NamespaceKey>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_pool: ByteSize(1 << 30),
            max_running: 16,
            max_batch_tokens: 256,
            max_context: None,
            load_from_store: true,
            publish_to_store: true,
            publish_queue: 64,
            fetch_concurrency: 8,
            threads: 0,
            namespace_key: None,
        }
    }
}

impl EngineConfig {
    /// An error naming the first setting that cannot work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::Config(m.to_string()));
        if self.block_size == 0 || self.block_size > 4096 {
            return bad("block_size must be 1..=4096");
        }
        if self.max_running == 0 || self.max_batch_tokens == 0 {
            return bad("max_running and max_batch_tokens must be positive");
        }
        if self.publish_queue == 0 || self.fetch_concurrency == 0 {
            return bad("publish_queue and fetch_concurrency must be positive");
        }
        Ok(())
    }

    /// The KV layout of a block of `model` (f16, as the CPU engine keeps it).
    pub fn kv_layout(&self, model: &ModelConfig) -> Result<KvLayout> {
        Ok(KvLayout::new(
            model.num_layers as u32,
            model.num_kv_heads as u32,
            model.head_dim as u32,
            DType::F16,
            self.block_size,
        )?)
    }

    /// Blocks in the pool: `kv_pool` divided by the block size, at least one.
    pub fn num_blocks(&self, layout: &KvLayout) -> usize {
        (self.kv_pool.0 as usize / layout.block_bytes().max(1)).max(1)
    }

    /// `threads`, or the number of cores when it is 0.
    pub fn compute_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The context limit for `model`: `max_context` if set, capped by the model's.
    pub fn max_context(&self, model: &ModelConfig) -> usize {
        self.max_context
            .map_or(model.max_context, |c| c.min(model.max_context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_lists_the_defaults() {
        #[derive(Deserialize)]
        struct File {
            engine: EngineConfig,
            disagg: crate::pd::DisaggConfig,
        }
        let text = include_str!("../../../deploy/engine.example.toml");
        let file: File = toml::from_str(text).expect("deploy/engine.example.toml parses");
        assert_eq!(file.engine, EngineConfig::default());
        assert_eq!(file.disagg, crate::pd::DisaggConfig::default());
        assert!(
            toml::from_str::<File>("[engine]\nblock_sise = 16\n[disagg]\n").is_err(),
            "unknown keys are refused"
        );
        let bad = EngineConfig {
            block_size: 0,
            ..EngineConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

//! [`FrontendConfig`]: the `[frontend]` table of `tierkv frontend --config`.

use serde::{Deserialize, Serialize};

use super::routing::Policy;
use crate::discovery::{EtcdConfig, WorkerSpec};
use crate::{Result, ServingError};

/// The frontend's configuration (`[frontend]` of its TOML file); every default here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendConfig {
    /// `round-robin` or `kv-aware`. Default `kv-aware`.
    pub router: Policy,
    /// kv-aware: how many requests in a worker's queue one block it would have to
    /// prefill is worth. Default 1.0.
    pub overlap_weight: f64,
    /// How often each worker's queue is read, in milliseconds. Default 200.
    pub load_poll_ms: u64,
    /// How long a joining worker may take to answer `/internal/info`, in seconds.
    /// Default 60.
    pub worker_start_timeout_s: u64,
    /// Workers known from the start. Default none.
    pub workers: Vec<WorkerSpec>,
    /// Discover workers in etcd as well. Default: no etcd.
    pub etcd: Option<EtcdConfig>,
    /// Conditional disaggregation for decode workers that leave it to the frontend
    /// (vLLM); tierkv decode workers apply their own `[disagg]`.
    pub prefill: PrefillConfig,
    /// The cluster's secret that keys salted namespaces (`TIERKV_NAMESPACE_KEY`, read
    /// by the binary; see [`tierkv_kvstore::NamespaceKey`]). Every worker and frontend
    /// of a cluster needs the same one. Never in a config file. Default none.
    #[serde(skip)]
    pub namespace_key: Option<tierkv_kvstore::NamespaceKey>,
}

/// `[frontend.prefill]`: when the frontend has a prefill worker compute a vLLM decode
/// worker's prompt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrefillConfig {
    /// Only when at least this many prompt tokens are not in the decode worker's
    /// store; shorter or mostly cached prompts are computed there. Default 512.
    pub remote_prefill_min_tokens: usize,
    /// Skip a prefill worker with more requests than this queued or running; with
    /// every one over it, the decode worker computes the prompt. Default 4.
    pub max_prefill_queue: usize,
    /// A prefill request not answered within this many milliseconds is given up and
    /// the decode worker computes the prompt. Default 30000.
    pub prefill_timeout_ms: u64,
}

impl Default for PrefillConfig {
    fn default() -> Self {
        PrefillConfig {
            remote_prefill_min_tokens: crate::pd::DEFAULT_REMOTE_PREFILL_MIN_TOKENS,
            max_prefill_queue: crate::pd::DEFAULT_MAX_PREFILL_QUEUE,
            prefill_timeout_ms: crate::pd::DEFAULT_PREFILL_TIMEOUT_MS,
        }
    }
}

impl PrefillConfig {
    /// The decision rule these settings make.
    pub fn policy(&self) -> crate::pd::PrefillPolicy {
        crate::pd::PrefillPolicy {
            remote_prefill_min_tokens: self.remote_prefill_min_tokens,
            max_prefill_queue: self.max_prefill_queue,
        }
    }
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            router: Policy::KvAware,
            overlap_weight: 1.0,
            load_poll_ms: 200,
            worker_start_timeout_s: 60,
            workers: Vec::new(),
            etcd: None,
            prefill: PrefillConfig::default(),
            namespace_key: None,
        }
    }
}

impl FrontendConfig {
    /// An error naming the first setting that cannot work.
    pub fn validate(&self) -> Result<()> {
        if !(self.overlap_weight.is_finite() && self.overlap_weight >= 0.0) {
            return Err(ServingError::Config(
                "frontend.overlap_weight must be a non-negative number".into(),
            ));
        }
        if self.load_poll_ms == 0 {
            return Err(ServingError::Config(
                "frontend.load_poll_ms must be positive".into(),
            ));
        }
        if self.prefill.prefill_timeout_ms == 0 {
            return Err(ServingError::Config(
                "frontend.prefill.prefill_timeout_ms must be positive".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.workers {
            if !names.insert(&w.name) {
                return Err(ServingError::Config(format!(
                    "frontend.workers: the name {:?} is used twice",
                    w.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct File {
        frontend: FrontendConfig,
    }

    #[test]
    fn the_example_file_lists_the_defaults() {
        let text = include_str!("../../../../deploy/frontend.example.toml");
        let file: File = toml::from_str(text).expect("deploy/frontend.example.toml parses");
        assert_eq!(file.frontend, FrontendConfig::default());
        assert!(toml::from_str::<File>("[frontend]\nrouter = \"random\"\n").is_err());
        let twice = "[frontend]\n[[frontend.workers]]\nname = \"a\"\nrole = \"decode\"\nhttp = \"http://x\"\n[[frontend.workers]]\nname = \"a\"\nrole = \"prefill\"\nhttp = \"http://y\"\n";
        let file: File = toml::from_str(twice).expect("parses");
        assert!(file.frontend.validate().is_err(), "duplicate names refused");
    }
}

//! How the frontend picks a decode worker.

mod kv_aware;
mod round_robin;

use serde::{Deserialize, Serialize};

pub use kv_aware::KvAware;
pub use round_robin::RoundRobin;

/// A decode worker as the router scores it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The worker's name.
    pub name: String,
    /// Leading blocks of the prompt the worker holds (any tier).
    pub overlap_blocks: usize,
    /// Requests it is serving or queueing.
    pub active: usize,
}

/// A rule for ranking decode workers.
pub trait RoutingPolicy: Send + Sync {
    /// Its name in configurations and metrics.
    fn name(&self) -> &'static str;
    /// Candidates in order of preference (the first is the choice, the rest are
    /// fallbacks if it fails), for a prompt of `prompt_blocks` full blocks.
    fn rank(&self, prompt_blocks: usize, candidates: &[Candidate]) -> Vec<usize>;
}

/// Which policy the frontend uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Each worker in turn, whatever it holds.
    RoundRobin,
    /// The worker with the least work: queued requests plus the blocks of the prompt
    /// it would have to prefill (see [`KvAware`]). The default.
    #[default]
    KvAware,
}

impl std::str::FromStr for Policy {
    type Err = crate::ServingError;
    fn from_str(s: &str) -> crate::Result<Policy> {
        match s {
            "round-robin" => Ok(Policy::RoundRobin),
            "kv-aware" => Ok(Policy::KvAware),
            o => Err(crate::ServingError::Config(format!(
                "router {o:?}: expected round-robin or kv-aware"
            ))),
        }
    }
}

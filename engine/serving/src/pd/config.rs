//! [`DisaggConfig`]: the `[disagg]` table of the engine's configuration file.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Result, ServingError};

/// What a worker does in a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Prefills and decodes its own requests (a single engine). The default.
    #[default]
    Aggregated,
    /// Computes prompts for decode workers and publishes their KV blocks.
    Prefill,
    /// Decodes; prefills remotely when that is cheaper (see [`DisaggConfig`]).
    Decode,
}

impl Role {
    /// Its name in flags and configurations.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = ServingError;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "aggregated" => Ok(Role::Aggregated),
            "prefill" => Ok(Role::Prefill),
            "decode" => Ok(Role::Decode),
            other => Err(ServingError::Config(format!(
                "role {other:?}: expected aggregated, prefill or decode"
            ))),
        }
    }
}

/// Conditional disaggregation, as a decode worker applies it per request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DisaggConfig {
    /// This worker's role (`--role` overrides). Default `aggregated`.
    pub role: Role,
    /// Prefill remotely only when at least this many prompt tokens are not cached
    /// locally; shorter prompts are cheaper to compute here than to ship. Default 512.
    pub remote_prefill_min_tokens: usize,
    /// Skip a prefill worker whose queue (running + waiting + prefilling) is longer
    /// than this; with every one over it, prefill locally. Default 4.
    pub max_prefill_queue: usize,
    /// Give up on a remote prefill after this long and compute locally. Default 30000.
    pub prefill_timeout_ms: u64,
}

/// Defaults shared by `[disagg]` (tierkv decode workers) and `[frontend.prefill]`
/// (the frontend choosing for vLLM decode workers).
/// Default `remote_prefill_min_tokens`: shorter uncached prompts prefill locally.
pub const DEFAULT_REMOTE_PREFILL_MIN_TOKENS: usize = 512;
/// Default `max_prefill_queue`: prefill workers with more queued prompts are busy.
pub const DEFAULT_MAX_PREFILL_QUEUE: usize = 4;
/// Default `prefill_timeout_ms`: a remote prefill slower than this is done locally.
pub const DEFAULT_PREFILL_TIMEOUT_MS: u64 = 30_000;

impl Default for DisaggConfig {
    fn default() -> Self {
        DisaggConfig {
            role: Role::Aggregated,
            remote_prefill_min_tokens: DEFAULT_REMOTE_PREFILL_MIN_TOKENS,
            max_prefill_queue: DEFAULT_MAX_PREFILL_QUEUE,
            prefill_timeout_ms: DEFAULT_PREFILL_TIMEOUT_MS,
        }
    }
}

impl DisaggConfig {
    /// The conditional-disaggregation thresholds.
    pub fn policy(&self) -> super::PrefillPolicy {
        super::PrefillPolicy {
            remote_prefill_min_tokens: self.remote_prefill_min_tokens,
            max_prefill_queue: self.max_prefill_queue,
        }
    }

    /// An error naming the first setting that cannot work.
    pub fn validate(&self) -> Result<()> {
        if self.prefill_timeout_ms == 0 {
            return Err(ServingError::Config(
                "disagg.prefill_timeout_ms must be positive".into(),
            ));
        }
        Ok(())
    }
}

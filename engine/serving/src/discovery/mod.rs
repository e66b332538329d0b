//! How the frontend learns which workers exist: a static list from its configuration,
//! or etcd, where workers register themselves under a prefix with a lease (so a worker
//! that dies disappears when its lease expires) and the frontend watches the prefix.

mod etcd;
mod static_list;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use etcd::{EtcdClient, EtcdConfig, EtcdDiscovery, Registration};
pub use static_list::StaticDiscovery;

use crate::pd::Role;

/// A worker as discovery knows it: enough to reach it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WorkerSpec {
    /// Unique in the cluster.
    pub name: String,
    /// What it does in the cluster.
    pub role: Role,
    /// Base URL of its HTTP API, e.g. `http://10.0.0.5:8000`.
    pub http: String,
    /// Address of its block service, e.g. `10.0.0.5:9000`.
    pub blocks: Option<String>,
    /// What runs there. Default `tierkv` (a `tierkv engine`).
    #[serde(default, skip_serializing_if = "WorkerEngine::is_tierkv")]
    pub engine: WorkerEngine,
    /// vLLM workers: the canonical name of the KV namespace its TierkvConnector hashes
    /// blocks in (TP rank 0; the connector logs it and writes it to its rendezvous
    /// file), so that the frontend hashes prompts the same way. A tierkv engine says
    /// it in `/internal/info` instead. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl WorkerSpec {
    /// A tierkv engine worker.
    pub fn tierkv(name: String, role: Role, http: String, blocks: Option<String>) -> WorkerSpec {
        WorkerSpec {
            name,
            role,
            http,
            blocks,
            engine: WorkerEngine::Tierkv,
            namespace: None,
        }
    }
}

/// The engine behind a worker's HTTP address: it decides how the frontend talks to it.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerEngine {
    /// `tierkv engine`: the internal API (`/internal/generate`, `/internal/load`); a
    /// decode worker fetches remote prefills itself.
    #[default]
    Tierkv,
    /// `vllm serve` with TierkvConnector: the OpenAI API with `kv_transfer_params`;
    /// the frontend runs the prefill-then-decode flow and reads `/metrics` for load.
    Vllm,
}

impl WorkerEngine {
    /// Whether it is [`WorkerEngine::Tierkv`].
    pub fn is_tierkv(&self) -> bool {
        *self == WorkerEngine::Tierkv
    }
    /// Its name in configurations: `tierkv` or `vllm`.
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkerEngine::Tierkv => "tierkv",
            WorkerEngine::Vllm => "vllm",
        }
    }
}

impl std::str::FromStr for WorkerEngine {
    type Err = crate::ServingError;
    fn from_str(s: &str) -> crate::Result<WorkerEngine> {
        match s {
            "tierkv" => Ok(WorkerEngine::Tierkv),
            "vllm" => Ok(WorkerEngine::Vllm),
            other => Err(crate::ServingError::Config(format!(
                "engine {other:?}: expected tierkv or vllm"
            ))),
        }
    }
}

/// A change in the set of workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A worker joined (or changed its addresses).
    Up(WorkerSpec),
    /// The worker of this name left.
    Down(String),
}

/// A source of worker changes.
pub trait Discovery: Send + 'static {
    /// Starts watching; changes arrive on the receiver until it is dropped.
    fn watch(self: Box<Self>) -> mpsc::Receiver<Change>;
}

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
    pub role: Role,
    /// Base URL of its HTTP API, e.g. `http://10.0.0.5:8000`.
    pub http: String,
    /// Address of its block service, e.g. `10.0.0.5:9000`.
    pub blocks: Option<String>,
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

//! The worker side of prefill/decode disaggregation: an engine in a role
//! ([`PdWorker`]), the internal HTTP API it serves to the frontend and the other
//! workers ([`internal_api`]), and a decode worker's path to its prefill workers
//! (asking one to prefill, fetching the blocks it published). The protocol itself —
//! roles, the local-or-remote decision, the wire messages, and a request's whole path
//! through a cluster — is `tierkv_serving::pd`, re-exported here.

pub mod internal_api;
mod remote_prefill;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use remote_prefill::{RemotePrefill, ToPrefillWorkers};
pub use tierkv_serving::pd::*;

use crate::{Engine, GenerateRequest, Result};

/// An engine in a role of a disaggregated cluster: what the internal API serves.
#[derive(Clone)]
pub struct PdWorker {
    /// The engine it runs.
    pub engine: Engine,
    role: Role,
    /// Name and block service address advertised to the cluster.
    name: String,
    blocks: Option<String>,
    /// Decode role: the path to the prefill workers.
    remote: Option<Arc<RemotePrefill>>,
    /// Remote prefills this worker is serving (prefill role).
    prefilling: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PdWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdWorker")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl PdWorker {
    /// `peers`: the credentials this worker presents to other workers.
    pub fn new(
        engine: Engine,
        disagg: DisaggConfig,
        name: String,
        blocks: Option<String>,
        peers: PeerCredentials,
    ) -> Result<PdWorker> {
        disagg.validate()?;
        let remote = (disagg.role == Role::Decode)
            .then(|| RemotePrefill::new(disagg.clone(), Arc::clone(engine.metrics()), peers))
            .transpose()?
            .map(Arc::new);
        Ok(PdWorker {
            engine,
            role: disagg.role,
            name,
            blocks,
            remote,
            prefilling: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// What it does in the cluster.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A request from the frontend with the prefill workers it attached: a decode
    /// worker may hand its prompt to one of them.
    fn request(&self, wire: WireRequest) -> GenerateRequest {
        let candidates = wire.prefill_candidates.clone();
        let mut req = wire.into_request();
        req.prefill_elsewhere = self.remote.as_ref().map(|remote| {
            Arc::new(ToPrefillWorkers {
                remote: Arc::clone(remote),
                candidates,
            }) as Arc<dyn crate::scheduler::PrefillElsewhere>
        });
        req
    }

    /// The worker's queue, as `/internal/load` reports it.
    pub fn load(&self) -> WorkerLoad {
        let m = self.engine.metrics();
        WorkerLoad {
            running: m.running.get().max(0) as usize,
            waiting: m.waiting.get().max(0) as usize,
            prefilling: self.prefilling.load(Ordering::Relaxed),
        }
    }

    /// Counts a remote prefill being served until the guard drops.
    fn prefilling(&self) -> impl Drop + Send + 'static {
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.prefilling.fetch_add(1, Ordering::Relaxed);
        Guard(Arc::clone(&self.prefilling))
    }
}

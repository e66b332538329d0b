//! `tierkv frontend`: the OpenAI API in front of a cluster. It tokenizes, hashes the
//! prompt's blocks exactly as the workers do, picks a decode (or aggregated) worker
//! with its [`routing`] policy, tells it which prefill workers hold how much of the
//! prompt and how busy they are, and streams the worker's tokens back as text.

mod config;
mod registry;
pub mod routing;
mod worker_client;

use std::sync::Arc;
use std::time::Duration;

use tierkv_kvstore::hash_blocks;

pub use config::{FrontendConfig, PrefillConfig};
pub use registry::Registry;

use self::registry::PrefillReservation;

use self::routing::{Candidate, KvAware, Policy, RoundRobin, RoutingPolicy};
use self::worker_client::StartError;
use crate::api::{Backend, Routed};
use crate::discovery::Discovery;
use crate::metrics::FrontendMetrics;
use crate::pd::{PrefillCandidate, Role, WireRequest};
use crate::request::GenerateRequest;
use crate::text::{ModelConfig, TextCodec};
use crate::{Result, ServingError};

/// The frontend; cheap to clone.
#[derive(Clone)]
pub struct Frontend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("model_id", &self.inner.model_id)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

struct Inner {
    codec: Arc<TextCodec>,
    model_config: ModelConfig,
    model_id: String,
    registry: Arc<Registry>,
    policy: Box<dyn RoutingPolicy>,
    /// Held while scoring workers and reserving the choice, so that concurrent
    /// requests see each other's choices instead of all picking the same idle worker.
    deciding: std::sync::Mutex<()>,
    http: reqwest::Client,
    metrics: Arc<FrontendMetrics>,
    prefill: PrefillConfig,
    namespace_key: Option<tierkv_kvstore::NamespaceKey>,
}

impl Frontend {
    /// A frontend for the model `model_id` (tokenized by `codec`) that learns its
    /// workers from `discovery`; `workers` holds the API key, block token and TLS it
    /// presents to the workers, if they ask for them. Must be called inside a tokio
    /// runtime.
    pub fn start(
        codec: TextCodec,
        model_config: ModelConfig,
        model_id: String,
        config: &FrontendConfig,
        discovery: Vec<Box<dyn Discovery>>,
        workers: crate::pd::PeerCredentials,
    ) -> Result<Frontend> {
        config.validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .default_headers(crate::api::bearer_headers(workers.api_key.as_deref())?)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ServingError::Config(format!("HTTP client: {e}")))?;
        let metrics = Arc::new(FrontendMetrics::new());
        let registry = Registry::new(
            model_id.clone(),
            http.clone(),
            Arc::clone(&metrics),
            Duration::from_millis(config.load_poll_ms),
            Duration::from_secs(config.worker_start_timeout_s),
            workers,
        );
        for d in discovery {
            registry.follow(d.watch());
        }
        let policy: Box<dyn RoutingPolicy> = match config.router {
            Policy::RoundRobin => Box::new(RoundRobin::default()),
            Policy::KvAware => Box::new(KvAware::new(config.overlap_weight)),
        };
        Ok(Frontend {
            inner: Arc::new(Inner {
                codec: Arc::new(codec),
                model_config,
                model_id,
                registry,
                policy,
                deciding: std::sync::Mutex::new(()),
                http,
                metrics,
                prefill: config.prefill.clone(),
                namespace_key: config.namespace_key.clone(),
            }),
        })
    }

    /// The workers it routes to.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The reachable prefill workers for a prompt, best first (most overlap, then
    /// shortest queue), and the first one reserved until the request's first token, so
    /// that a burst spreads over them.
    fn prefill_candidates(
        &self,
        hashes: &[tierkv_kvstore::BlockHash],
    ) -> (Vec<PrefillCandidate>, Option<PrefillReservation>) {
        let i = &self.inner;
        let workers: Vec<_> = i
            .registry
            .workers(&[Role::Prefill])
            .into_iter()
            .filter(|w| w.reachable())
            .filter_map(|w| w.spec.blocks.clone().map(|b| (w, b)))
            .collect();
        let _deciding = tierkv_kvstore::sync::lock(&i.deciding);
        let mut order: Vec<(PrefillCandidate, usize)> = workers
            .iter()
            .enumerate()
            .map(|(k, (w, blocks))| {
                let c = PrefillCandidate {
                    name: w.spec.name.clone(),
                    http: w.spec.http.clone(),
                    blocks: blocks.clone(),
                    overlap_blocks: w.overlap(hashes),
                    queue: w.prefill_queue(),
                };
                (c, k)
            })
            .collect();
        order.sort_by_key(|(c, _)| (std::cmp::Reverse(c.overlap_blocks), c.queue));
        let reservation = order.first().map(|(_, k)| workers[*k].0.reserve_prefill());
        (order.into_iter().map(|(c, _)| c).collect(), reservation)
    }

    async fn route(&self, req: GenerateRequest) -> Result<Routed> {
        let i = &self.inner;
        i.metrics.requests.inc();
        let ns = i.registry.namespace().ok_or_else(|| {
            ServingError::Unavailable("no worker has joined the cluster yet".into())
        })?;
        let ns = match (&req.cache_salt, &i.namespace_key) {
            (Some(salt), Some(key)) => ns.with_key(key.clone())?.salted(salt.clone())?,
            (Some(salt), None) => ns.salted(salt.clone())?,
            (None, _) => ns,
        };
        let hashes = hash_blocks(&ns, &req.prompt);
        let decoders = i.registry.workers(&[Role::Decode, Role::Aggregated]);
        if decoders.is_empty() {
            return Err(ServingError::Unavailable(
                "no decode worker is available".into(),
            ));
        }
        let (candidates, mut prefill_reservation) = self.prefill_candidates(&hashes);
        let wire = WireRequest::from_request(&req, candidates);
        let overlaps: Vec<usize> = decoders.iter().map(|w| w.overlap(&hashes)).collect();
        let mut failures = Vec::new();
        let mut tried = vec![false; decoders.len()];
        loop {
            // Score and reserve under one lock: requests arriving together spread.
            let (idx, reservation, candidate) = {
                let _deciding = tierkv_kvstore::sync::lock(&i.deciding);
                let candidates: Vec<Candidate> = decoders
                    .iter()
                    .zip(&overlaps)
                    .map(|(w, &o)| Candidate {
                        name: w.spec.name.clone(),
                        overlap_blocks: o,
                        active: w.active(),
                    })
                    .collect();
                let Some(idx) = i
                    .policy
                    .rank(hashes.len(), &candidates)
                    .into_iter()
                    .find(|&k| !tried[k])
                else {
                    break;
                };
                let reservation = decoders[idx].reserve(&i.metrics);
                (idx, reservation, candidates[idx].clone())
            };
            tried[idx] = true;
            let cx = worker_client::Context {
                http: &i.http,
                metrics: &i.metrics,
                prefill: &i.prefill,
            };
            let block = ns.layout().block_size as usize;
            match worker_client::start(
                &cx,
                reservation,
                prefill_reservation.take(),
                &wire,
                candidate.overlap_blocks * block,
            )
            .await
            {
                Ok(events) => {
                    i.metrics
                        .routed
                        .with_label_values(&[&candidate.name, i.policy.name()])
                        .inc();
                    i.metrics
                        .overlap_blocks
                        .observe(candidate.overlap_blocks as f64);
                    tracing::debug!(worker = %candidate.name, overlap = candidate.overlap_blocks, active = candidate.active, "routed");
                    return Ok(Routed {
                        events,
                        worker: Some(candidate.name),
                    });
                }
                Err(StartError::Rejected(e)) => return Err(e),
                Err(StartError::Failed(e)) => {
                    // The prompt was not prefilled: count it against its prefill worker
                    // again for the next attempt.
                    prefill_reservation = self.prefill_candidates(&hashes).1;
                    tracing::warn!(worker = %candidate.name, error = %e, "worker refused a request; trying the next");
                    i.metrics
                        .worker_failures
                        .with_label_values(&[&candidate.name])
                        .inc();
                    failures.push(format!("{}: {e}", candidate.name));
                }
            }
        }
        Err(ServingError::Unavailable(format!(
            "every decode worker failed: {}",
            failures.join("; ")
        )))
    }
}

impl Backend for Frontend {
    fn codec(&self) -> &Arc<TextCodec> {
        &self.inner.codec
    }
    fn model_id(&self) -> &str {
        &self.inner.model_id
    }
    fn model_config(&self) -> &ModelConfig {
        &self.inner.model_config
    }
    fn max_context(&self) -> usize {
        self.inner
            .registry
            .max_context()
            .unwrap_or(self.inner.model_config.max_context)
    }
    fn default_max_tokens(&self, prompt_len: usize) -> usize {
        self.max_context().saturating_sub(prompt_len)
    }
    async fn generate(&self, req: GenerateRequest) -> Result<Routed> {
        self.route(req).await
    }
    fn render_metrics(&self) -> String {
        self.inner.metrics.render()
    }
}

/// The frontend's HTTP routes: the OpenAI API.
pub fn router(frontend: Frontend) -> axum::Router {
    crate::api::openai_routes::<Frontend>().with_state(frontend)
}

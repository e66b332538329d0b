//! The decode side of disaggregation: decide per request whether a prefill worker
//! should compute the prompt, ask it, and fetch the blocks it published. A request's
//! [`ToPrefillWorkers`] is the scheduler's [`PrefillElsewhere`] seam.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tierkv_kvstore::service::BlockClient;
use tierkv_kvstore::{BlockHash, Namespace, TierKind};

use super::{
    DisaggConfig, PeerCredentials, PrefillCandidate, PrefillDecision, PrefillReply, WireRequest,
    decide,
};
use crate::metrics::EngineMetrics;
use crate::scheduler::{PrefillElsewhere, Prefilled};
use crate::{EngineError, GenerateRequest, KvSource, Result};

/// A decode worker's path to its prefill workers, shared by its requests.
pub(super) struct RemotePrefill {
    config: DisaggConfig,
    http: reqwest::Client,
    /// One block service client per prefill worker, shared by requests.
    peers: Mutex<HashMap<String, BlockClient>>,
    /// Presented to the prefill workers' block services (token, TLS).
    credentials: PeerCredentials,
    metrics: Arc<EngineMetrics>,
}

impl RemotePrefill {
    pub(super) fn new(
        config: DisaggConfig,
        metrics: Arc<EngineMetrics>,
        peers: PeerCredentials,
    ) -> Result<RemotePrefill> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .default_headers(crate::api::bearer_headers(peers.api_key.as_deref())?)
            .build()
            .map_err(|e| EngineError::Config(format!("HTTP client: {e}")))?;
        Ok(RemotePrefill {
            config,
            http,
            peers: Mutex::new(HashMap::new()),
            credentials: peers,
            metrics,
        })
    }

    fn decided(&self, decision: &str) {
        self.metrics
            .prefill_decisions
            .with_label_values(&[decision])
            .inc();
    }

    /// Conditional disaggregation for `req`, whose first `have` blocks are cached
    /// here. `None`: compute locally (short prompt, every prefill worker busy, or the
    /// remote path failed).
    pub(super) async fn prefill(
        &self,
        candidates: &[PrefillCandidate],
        req: &mut GenerateRequest,
        ns: &Namespace,
        hashes: &[BlockHash],
        have: usize,
    ) -> Option<Prefilled> {
        let block = ns.layout().block_size as usize;
        let target = match decide(
            &self.config.policy(),
            req.prompt.len(),
            have * block,
            candidates,
        ) {
            PrefillDecision::Remote(c) => c.clone(),
            PrefillDecision::Local(why) => {
                self.decided(why.as_str());
                return None;
            }
        };
        if req.sampling.temperature > 0.0 && req.sampling.seed.is_none() {
            // Both workers must draw from the same generator.
            req.sampling.seed = Some(random_seed());
        }
        let started = Instant::now();
        let timeout = Duration::from_millis(self.config.prefill_timeout_ms);
        let reply = match tokio::time::timeout(timeout, self.call(&target, req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(worker = %target.name, error = %e, "remote prefill failed; prefilling locally");
                self.decided("fallback");
                return None;
            }
            Err(_) => {
                tracing::warn!(worker = %target.name, ?timeout, "remote prefill timed out; prefilling locally");
                self.decided("fallback");
                return None;
            }
        };
        self.metrics
            .remote_prefill_seconds
            .observe(started.elapsed().as_secs_f64());
        let upto = reply.blocks.min(hashes.len());
        let blocks = if upto > have {
            self.fetch(&target, ns, &hashes[have..upto]).await
        } else {
            Vec::new()
        };
        self.decided("remote");
        Some(Prefilled {
            first_token: reply.first_token,
            blocks,
        })
    }

    async fn call(&self, target: &PrefillCandidate, req: &GenerateRequest) -> Result<PrefillReply> {
        let body = serde_json::to_vec(&WireRequest::from_request(req, Vec::new()))
            .map_err(|e| EngineError::Unavailable(format!("encoding a prefill request: {e}")))?;
        let err = |e: reqwest::Error| EngineError::Unavailable(format!("prefill worker: {e}"));
        let resp = self
            .http
            .post(format!("{}/internal/prefill", target.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(err)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(err)?;
        if !status.is_success() {
            return Err(EngineError::Unavailable(format!(
                "prefill worker answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| EngineError::Unavailable(format!("prefill worker's answer: {e}")))
    }

    fn peer(&self, addr: &str) -> Result<BlockClient> {
        let mut peers = tierkv_tiers::sync::lock(&self.peers);
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let mut config = self.credentials.block_client(addr);
        config.retries = 1;
        config.timeout = Duration::from_millis(self.config.prefill_timeout_ms);
        let client = BlockClient::new(config)?;
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// The leading blocks of `want` the prefill worker returns intact; the first
    /// missing or corrupt one ends the list (the rest is computed here).
    async fn fetch(
        &self,
        target: &PrefillCandidate,
        ns: &Namespace,
        want: &[BlockHash],
    ) -> Vec<(Bytes, KvSource)> {
        let started = Instant::now();
        let keys: Vec<u128> = want.iter().map(|h| h.0).collect();
        let got = match self.peer(&target.blocks) {
            Ok(c) => c.fetch(ns.name(), &keys).await.map_err(EngineError::from),
            Err(e) => Err(e),
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(worker = %target.name, error = %e, "fetching prefilled blocks failed; computing them");
                self.metrics.peer_fetch_failures.inc();
                return Vec::new();
            }
        };
        let block_bytes = ns.layout().block_bytes();
        let mut out = Vec::with_capacity(got.len());
        for b in got {
            match b {
                Some(data) if data.len() == block_bytes => {
                    out.push((data, KvSource::Tier(TierKind::Remote)))
                }
                _ => {
                    self.metrics.peer_fetch_failures.inc();
                    break;
                }
            }
        }
        let bytes: usize = out.iter().map(|(d, _)| d.len()).sum();
        self.metrics.peer_blocks_fetched.inc_by(out.len() as u64);
        self.metrics.peer_bytes_fetched.inc_by(bytes as u64);
        self.metrics
            .peer_fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        out
    }
}

/// One request's prefill workers (best first, from the frontend), as the scheduler's
/// [`PrefillElsewhere`].
pub(super) struct ToPrefillWorkers {
    pub(crate) remote: Arc<RemotePrefill>,
    pub(crate) candidates: Vec<PrefillCandidate>,
}

impl std::fmt::Debug for ToPrefillWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToPrefillWorkers")
            .field("candidates", &self.candidates)
            .finish()
    }
}

impl PrefillElsewhere for ToPrefillWorkers {
    fn prefill<'a>(
        &'a self,
        req: &'a mut GenerateRequest,
        ns: &'a Namespace,
        hashes: &'a [BlockHash],
        have: usize,
    ) -> BoxFuture<'a, Option<Prefilled>> {
        Box::pin(self.remote.prefill(&self.candidates, req, ns, hashes, have))
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

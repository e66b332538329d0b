//! The prefill/decode protocol between the frontend and the workers: worker roles,
//! the decode side's choice between local and remote prefill, and the internal HTTP
//! API's messages (token ids in, token events out, as newline-delimited JSON).
//!
//! A request's path in a disaggregated cluster: the frontend tokenizes it and picks a
//! decode worker (`/internal/generate`), attaching the prefill workers it knows with
//! their KV overlap and queue length. The decode worker looks up what it already holds;
//! if the uncached part is long enough and a prefill worker's queue is short enough it
//! asks that worker (`/internal/prefill`) to compute the prompt. The prefill worker
//! computes it, publishes every full block to its store and answers with the first
//! token and how many blocks it published. The decode worker fetches the blocks it
//! lacks from the prefill worker's block service, computes the rest (the last partial
//! block) and goes on decoding. Any failure on that path falls back to computing
//! locally: the tokens are the same either way. (The worker side is `tierkv-engine`'s
//! `pd` module.)

mod config;
mod decision;

use serde::{Deserialize, Serialize};

pub use config::{
    DEFAULT_MAX_PREFILL_QUEUE, DEFAULT_PREFILL_TIMEOUT_MS, DEFAULT_REMOTE_PREFILL_MIN_TOKENS,
    DisaggConfig, Role,
};
pub use decision::{LocalReason, PrefillDecision, PrefillPolicy, decide};

use crate::request::{FinishReason, GenEvent, GenerateRequest, SamplingParams, Usage};

/// A prefill worker the decode worker may use, as the frontend sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrefillCandidate {
    /// The worker's name.
    pub name: String,
    /// Base URL of its HTTP API, e.g. `http://127.0.0.1:8001`.
    pub http: String,
    /// Address of its block service, e.g. `127.0.0.1:9001`.
    pub blocks: String,
    /// Leading blocks of the prompt it already holds.
    pub overlap_blocks: usize,
    /// Requests it is computing or queueing.
    pub queue: usize,
}

/// A generation request between frontend and workers (token ids).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireRequest {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Seed of the sampler. Default: random.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Tokens that end the generation, besides the model's end tokens. Default none.
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end tokens. Default false.
    #[serde(default)]
    pub ignore_eos: bool,
    /// The tenant's salt of the KV namespace (vLLM's `cache_salt`). Default none.
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Prefill workers, best first (decode role only).
    #[serde(default)]
    pub prefill_candidates: Vec<PrefillCandidate>,
}

impl WireRequest {
    /// The wire form of `r`, with these prefill candidates.
    pub fn from_request(r: &GenerateRequest, candidates: Vec<PrefillCandidate>) -> WireRequest {
        WireRequest {
            prompt: r.prompt.clone(),
            max_tokens: r.max_tokens,
            temperature: r.sampling.temperature,
            top_p: r.sampling.top_p,
            seed: r.sampling.seed,
            stop_token_ids: r.stop_token_ids.clone(),
            ignore_eos: r.ignore_eos,
            cache_salt: r.cache_salt.clone(),
            prefill_candidates: candidates,
        }
    }

    /// The request without its prefill candidates (a decode worker keeps those).
    pub fn into_request(self) -> GenerateRequest {
        GenerateRequest {
            prompt: self.prompt,
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            },
            stop_token_ids: self.stop_token_ids,
            ignore_eos: self.ignore_eos,
            cache_salt: self.cache_salt,
            prefill_elsewhere: None,
            await_publish: false,
        }
    }
}

/// What a worker presents to the other workers of its cluster: their HTTP API key,
/// their block services' bearer token and, with mutual TLS, its certificate.
#[derive(Clone, Default)]
pub struct PeerCredentials {
    /// The workers' HTTP API key. Default none.
    pub api_key: Option<String>,
    /// The bearer token of the workers' block services. Default none.
    pub block_token: Option<String>,
    /// TLS to the peers' block services (`https://`): the cluster CA and this
    /// member's certificate. Default none (plain HTTP/2).
    pub block_tls: Option<tierkv_kvstore::service::ClientTls>,
}

impl std::fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("PeerCredentials")
            .field("api_key", &redacted(&self.api_key))
            .field("block_token", &redacted(&self.block_token))
            .field("block_tls", &self.block_tls)
            .finish()
    }
}

impl PeerCredentials {
    /// A block service client configuration for the peer at `addr`, with this
    /// worker's token and TLS.
    pub fn block_client(
        &self,
        addr: impl Into<String>,
    ) -> tierkv_kvstore::service::BlockClientConfig {
        let mut config = tierkv_kvstore::service::BlockClientConfig::new(addr);
        config.token = self.block_token.clone();
        if let Some(tls) = &self.block_tls {
            tls.apply(&mut config);
        }
        config
    }
}

/// One line of a `/internal/generate` response.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WireEvent {
    /// The request was scheduled; `usage` says how much of the prompt was cached.
    Admitted {
        /// Token counts so far.
        usage: Usage,
    },
    /// A generated token.
    Token {
        /// Its id.
        id: u32,
    },
    /// The generation ended.
    Finished {
        /// `stop` or `length`.
        reason: String,
        /// Final token counts.
        usage: Usage,
    },
    /// The generation failed.
    Error {
        /// Why.
        message: String,
    },
}

impl WireEvent {
    /// The wire form of an engine event (`None` for events that stay inside a worker).
    pub fn from_event(e: &GenEvent) -> Option<WireEvent> {
        Some(match e {
            GenEvent::Admitted(u) => WireEvent::Admitted { usage: u.clone() },
            GenEvent::Token(t) => WireEvent::Token { id: *t },
            GenEvent::Finished { reason, usage } => WireEvent::Finished {
                reason: reason.as_str().to_string(),
                usage: usage.clone(),
            },
            GenEvent::Error(m) => WireEvent::Error { message: m.clone() },
            GenEvent::Published(_) => return None,
        })
    }

    /// The engine event this line stands for.
    pub fn into_event(self) -> GenEvent {
        match self {
            WireEvent::Admitted { usage } => GenEvent::Admitted(usage),
            WireEvent::Token { id } => GenEvent::Token(id),
            WireEvent::Finished { reason, usage } => GenEvent::Finished {
                reason: if reason == "stop" {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                },
                usage,
            },
            WireEvent::Error { message } => GenEvent::Error(message),
        }
    }
}

/// A prefill worker's answer to `/internal/prefill`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PrefillReply {
    /// The first generated token (sampled with the request's parameters).
    pub first_token: u32,
    /// Leading full blocks of the prompt now in the worker's store.
    pub blocks: usize,
    /// Token counts of the prefill.
    pub usage: Usage,
}

/// What `/internal/info` says about a worker: enough for a frontend to hash prompts
/// exactly as the worker does, and to reach its block service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerInfo {
    /// Its name in the cluster.
    pub name: String,
    /// What it does.
    pub role: Role,
    /// The model it serves.
    pub model_id: String,
    /// The layout of its KV blocks.
    pub layout: tierkv_kvstore::KvLayout,
    /// The longest context a request may use.
    pub max_context: usize,
    /// Address of its block service, if it serves one.
    pub blocks: Option<String>,
}

/// What `/internal/load` says: the worker's queue.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerLoad {
    /// Requests being computed.
    pub running: usize,
    /// Requests queued.
    pub waiting: usize,
    /// Remote prefills this worker is serving right now.
    pub prefilling: usize,
}

//! A generation request in token ids, what it reports while it runs, and the one seam
//! through which a cluster may compute its prompt elsewhere: what every serving
//! process (engine, frontend, worker clients) speaks.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use tierkv_kvstore::{BlockHash, Namespace};

/// How a request samples. Defaults follow OpenAI: temperature 1, top_p 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax). Default 1.0.
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p`. Default 1.0.
    pub top_p: f32,
    /// Seed of the request's random generator. Default: a fresh random seed.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
        }
    }
}

/// Where the KV of a prompt token came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvSource {
    /// Computed by the model in this request.
    Computed,
    /// Blocks still in the engine's own KV pool.
    Engine,
    /// A store tier of this kind ("host", "disk", "object", "remote").
    Tier(tierkv_kvstore::TierKind),
}

impl KvSource {
    /// Its name in usage reports and metrics.
    pub fn label(&self) -> String {
        match self {
            KvSource::Computed => "computed".into(),
            KvSource::Engine => "engine".into(),
            KvSource::Tier(k) => k.to_string(),
        }
    }
}

/// A generation request in token ids.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Extra tokens that end the generation (besides the model's end-of-sequence).
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Per-tenant salt: blocks are only shared between requests with the same salt.
    pub cache_salt: Option<String>,
    /// Another worker that may compute the prompt (a decode worker's prefill workers).
    pub prefill_elsewhere: Option<Arc<dyn PrefillElsewhere>>,
    /// Publish every full prompt block (also reused ones) without skipping, and report
    /// each stored block as [`GenEvent::Published`]: what a prefill worker does before
    /// it answers.
    pub await_publish: bool,
}

impl GenerateRequest {
    /// Greedy decoding of exactly `max_tokens` tokens (end-of-sequence ignored), no
    /// salt: what benchmarks and equality tests want.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
        GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                seed: None,
            },
            stop_token_ids: Vec::new(),
            ignore_eos: true,
            ..GenerateRequest::default()
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence or stop token.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub fn as_str(&self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token accounting of a finished request.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV was reused (engine pool or store) rather than computed.
    pub cached_tokens: usize,
    /// Reused prompt tokens by source label ("engine", "host", "disk", ...).
    pub cached_by_source: Vec<(String, usize)>,
}

/// What a running request reports, in order: `Admitted`, `Token`s, then `Finished` or
/// `Error`.
#[derive(Debug)]
pub enum GenEvent {
    /// The request was admitted; the usage so far says how much of the prompt's KV
    /// was reused.
    Admitted(Usage),
    /// A generated token's id.
    Token(u32),
    /// The generation ended.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Final token counts.
        usage: Usage,
    },
    /// The request failed (the message says why).
    Error(String),
    /// A block of the prompt is in the store (only with `await_publish`).
    Published(BlockHash),
}

/// What a prefill elsewhere produced.
#[derive(Debug)]
pub struct Prefilled {
    /// The first generated token (sampled with the request's parameters).
    pub first_token: u32,
    /// KV blocks continuing the prefix this engine already holds, in chain order.
    pub blocks: Vec<(Bytes, KvSource)>,
}

/// Another worker that may compute a request's prompt.
pub trait PrefillElsewhere: Send + Sync + std::fmt::Debug {
    /// Prefills `req`, whose first `have` blocks (of `hashes`, in `ns`) this engine
    /// holds already. `None`: the engine computes the prompt itself (short prompt, no
    /// worker free, or that path failed — the tokens are the same either way). It may
    /// fix what the engine would otherwise choose (a sampling seed), so that both
    /// workers sample alike.
    fn prefill<'a>(
        &'a self,
        req: &'a mut GenerateRequest,
        ns: &'a Namespace,
        hashes: &'a [BlockHash],
        have: usize,
    ) -> BoxFuture<'a, Option<Prefilled>>;
}

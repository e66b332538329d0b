//! tierkv's inference engine: a Llama / Qwen3 model on the CPU (candle) whose paged KV
//! cache sits on the tiered block store, with continuous batching and an
//! OpenAI-compatible HTTP API.
//!
//! - [`model`]: loading GGUF and Hugging Face models, the forward pass, paged attention.
//! - [`kv`]: the KV block pool with prefix caching.
//! - [`scheduler`]: the [`Engine`] handle and its worker thread.
//! - [`api`]: the OpenAI-compatible HTTP server.
//! - [`pd`]: prefill/decode roles and the internal API between workers.
//! - [`frontend`]: the router in front of a cluster of workers.
//! - [`discovery`]: how workers and the frontend find each other (static lists, etcd).
//!
//! # KV-aware routing and conditional disaggregation
//!
//! What the frontend decides for every request: which decode worker (the one with the
//! least work, counting the prompt blocks it would have to prefill) and whether its
//! prompt is worth a prefill worker (enough uncached tokens, a prefill worker free).
//!
//! ```
//! use tierkv_engine::frontend::routing::{Candidate, KvAware, RoutingPolicy};
//! use tierkv_engine::pd::{LocalReason, PrefillCandidate, PrefillDecision, PrefillPolicy, decide};
//!
//! let router = KvAware::new(1.0);
//! let decoders = [
//!     Candidate { name: "decode-0".into(), overlap_blocks: 0, active: 1 },
//!     Candidate { name: "decode-1".into(), overlap_blocks: 30, active: 3 },
//! ];
//! // A 32-block prompt: decode-1 holds 30 of its blocks, so it wins despite its queue.
//! assert_eq!(router.rank(32, &decoders)[0], 1);
//!
//! let policy = PrefillPolicy { remote_prefill_min_tokens: 512, max_prefill_queue: 4 };
//! let prefill = [PrefillCandidate {
//!     name: "prefill-0".into(),
//!     http: "http://10.0.0.2:8000".into(),
//!     blocks: "10.0.0.2:7070".into(),
//!     overlap_blocks: 0,
//!     queue: 1,
//! }];
//! // 4,096 uncached tokens go to the prefill worker; 96 are computed where they are.
//! assert!(matches!(decide(&policy, 4096, 0, &prefill), PrefillDecision::Remote(_)));
//! assert_eq!(decide(&policy, 4096, 4000, &prefill), PrefillDecision::Local(LocalReason::Short));
//! ```

pub mod api;
pub mod discovery;
mod error;
pub mod frontend;
#[doc(hidden)]
pub mod fuzzing;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod pd;
pub mod scheduler;

pub use error::{EngineError, Result};
pub use scheduler::{
    Engine, EngineConfig, FinishReason, GenEvent, GenerateRequest, KvSource, SamplingParams, Usage,
};

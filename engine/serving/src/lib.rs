//! What every tierkv serving process shares, without the model: the OpenAI API over
//! any backend, the text side of a model (tokenizer, chat template, shape — read from
//! GGUF metadata or a Hugging Face directory, never the weights), generation requests
//! and their events, the prefill/decode protocol between workers, discovery, and the
//! frontend that routes requests to workers. `tierkv-engine` runs the model behind it.
//!
//! - [`api`]: the OpenAI-compatible HTTP routes over a [`api::Backend`].
//! - [`text`]: [`text::TextCodec`] and [`text::ModelConfig`], from [`text::load_text`].
//! - [`request`]: [`request::GenerateRequest`], [`request::GenEvent`], usage.
//! - [`pd`]: roles, the conditional-disaggregation decision, the internal API's messages.
//! - [`discovery`]: static worker lists and etcd.
//! - [`frontend`]: the router in front of a cluster of workers.
//!
//! # KV-aware routing and conditional disaggregation
//!
//! What the frontend decides for every request: which decode worker (the one with the
//! least work, counting the prompt blocks it would have to prefill) and whether its
//! prompt is worth a prefill worker (enough uncached tokens, a prefill worker free).
//!
//! ```
//! use tierkv_serving::frontend::routing::{Candidate, KvAware, RoutingPolicy};
//! use tierkv_serving::pd::{LocalReason, PrefillCandidate, PrefillDecision, PrefillPolicy, decide};
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
pub mod fuzzing;
pub mod metrics;
pub mod pd;
pub mod request;
pub mod request_log;
pub mod text;

pub use error::{Result, ServingError};

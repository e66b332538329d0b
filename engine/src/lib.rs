//! tierkv's inference engine: a Llama / Qwen3 model on the CPU (candle) whose paged KV
//! cache sits on the tiered block store, with continuous batching and an
//! OpenAI-compatible HTTP API.
//!
//! - [`model`]: loading GGUF and Hugging Face models, the forward pass, paged attention.
//! - [`kv`]: the KV block pool with prefix caching.
//! - [`scheduler`]: the [`Engine`] handle and its worker thread.
//! - [`api`]: the OpenAI-compatible HTTP server over the engine.
//! - [`pd`]: the worker side of prefill/decode disaggregation (the internal API,
//!   fetching a remote prefill's blocks).
//!
//! What a serving process needs without the model — the OpenAI routes over any
//! backend, tokenizer and chat template, the PD protocol, discovery and the
//! frontend/router — is the `tierkv-serving` crate, which this one builds on.

pub mod api;
mod error;
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

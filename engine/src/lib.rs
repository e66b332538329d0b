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

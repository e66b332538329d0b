//! tierkv's inference engine: a Llama / Qwen3 model on the CPU (candle) whose paged KV
//! cache sits on the tiered block store, with continuous batching and an
//! OpenAI-compatible HTTP API.
//!
//! - [`model`]: loading GGUF and Hugging Face models, the forward pass, paged attention.
//! - [`kv`]: the KV block pool with prefix caching.
//! - [`scheduler`]: the [`Engine`] handle and its worker thread.
//! - [`api`]: the OpenAI-compatible HTTP server.

pub mod api;
mod error;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod scheduler;

pub use error::{EngineError, Result};
pub use scheduler::{
    Engine, EngineConfig, FinishReason, GenEvent, GenerateRequest, KvSource, SamplingParams, Usage,
};

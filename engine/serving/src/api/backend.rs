//! What the OpenAI API serves from: an engine in this process (`tierkv_engine::Engine`),
//! or a frontend that routes each request to a worker.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::Result;
use crate::request::{GenEvent, GenerateRequest};
use crate::text::{ModelConfig, TextCodec};

/// A request on its way: its events, and the worker serving it when it was routed.
#[derive(Debug)]
pub struct Routed {
    /// The request's events.
    pub events: UnboundedReceiver<GenEvent>,
    /// The worker serving it (routed requests only).
    pub worker: Option<String>,
}

/// What the OpenAI routes serve from ([`crate::api::openai_routes`]).
pub trait Backend: Clone + Send + Sync + 'static {
    /// The model's tokenizer and chat template.
    fn codec(&self) -> &Arc<TextCodec>;
    /// The name the model is served under.
    fn model_id(&self) -> &str;
    /// The model's shape.
    fn model_config(&self) -> &ModelConfig;
    /// The longest context a request may use (prompt plus generated tokens).
    fn max_context(&self) -> usize;
    /// `max_tokens` for a request that does not say.
    fn default_max_tokens(&self, prompt_len: usize) -> usize;
    /// Starts `req`; its events follow on the returned channel.
    fn generate(&self, req: GenerateRequest) -> impl Future<Output = Result<Routed>> + Send;
    /// Prometheus text for `/metrics`.
    fn render_metrics(&self) -> String;
}

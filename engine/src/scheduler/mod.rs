//! The engine: one worker thread runs the model with continuous batching over the
//! paged KV pool; [`Engine`] is the async handle requests come through.
//!
//! A request's life: the handle tokenizes nothing (that is the API's job); it hashes
//! the prompt's full blocks, asks the pool which leading blocks it still holds, fetches
//! the blocks after those from the [`TieredStore`] (host, disk, object, peers), and
//! hands everything to the worker. The worker takes the pool's blocks, copies the
//! fetched ones in, computes only the remaining tokens (in chunks, batched with the
//! decode steps of running requests) and streams tokens back. Every block that fills
//! up is published to the store by a background task: the worker never waits on it.

mod config;
mod fetch;
pub mod sampler;
mod sequence;
mod worker;

use std::sync::Arc;
use std::time::Instant;

use tierkv_kvstore::{BlockHash, Namespace, TieredStore, hash_blocks};
use tokio::sync::{mpsc, oneshot};

pub use config::EngineConfig;
pub use tierkv_serving::request::{
    FinishReason, GenEvent, GenerateRequest, KvSource, PrefillElsewhere, Prefilled, SamplingParams,
    Usage,
};
pub use tierkv_serving::request_log::{RequestLog, TRACE_BLOCK_TOKENS, TraceRecord, parse_trace};

use crate::kv::{KvPool, PoolUsage, ResidentSet};
use crate::metrics::EngineMetrics;
use crate::model::{LoadedModel, ModelConfig, TextCodec};
use crate::{EngineError, Result};

pub(crate) enum Command {
    Add(Box<sequence::NewSequence>),
    ResetPrefixCache(oneshot::Sender<usize>),
    Usage(oneshot::Sender<PoolUsage>),
}

/// Handle to a running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model_id", &self.inner.model_id)
            .field("namespace", &self.inner.namespace.name())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

struct Inner {
    commands: std::sync::mpsc::Sender<Command>,
    store: TieredStore,
    namespace: Namespace,
    resident: ResidentSet,
    codec: Arc<TextCodec>,
    model_config: ModelConfig,
    model_id: String,
    config: EngineConfig,
    metrics: Arc<EngineMetrics>,
    /// Where each request is logged, once set (`tierkv engine --request-log`).
    request_log: std::sync::OnceLock<RequestLog>,
}

impl Engine {
    /// Starts the worker thread for `loaded` over `store`.
    pub fn start(
        loaded: LoadedModel,
        store: TieredStore,
        config: EngineConfig,
        metrics: Arc<EngineMetrics>,
    ) -> Result<Engine> {
        config.validate()?;
        let LoadedModel { model, codec, id } = loaded;
        let model_config = model.config().clone();
        let layout = config.kv_layout(&model_config)?;
        let mut namespace = Namespace::new(id.clone(), layout)?;
        if let Some(key) = &config.namespace_key {
            namespace = namespace.with_key(key.clone())?;
        }
        store.register_namespace(&namespace);
        let num_blocks = config.num_blocks(&layout);
        let pool = KvPool::new(layout, num_blocks)?;
        let resident = pool.resident();
        tracing::info!(
            model = %id, layout = %layout, blocks = num_blocks,
            block_mib = layout.block_bytes() as f64 / (1 << 20) as f64,
            "KV pool ready"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let publish =
            fetch::spawn_publisher(store.clone(), config.publish_queue, Arc::clone(&metrics));
        let worker =
            worker::Worker::new(model, pool, config.clone(), publish, Arc::clone(&metrics));
        // The worker runs inside its own compute pool, so the model's parallel kernels
        // share `threads` cores with it instead of spinning beside it.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.compute_threads())
            .thread_name(|i| format!("tierkv-compute-{i}"))
            .build()
            .map_err(|e| EngineError::Config(format!("compute pool: {e}")))?;
        std::thread::Builder::new()
            .name("tierkv-engine".into())
            .spawn(move || pool.install(move || worker.run(rx)))
            .map_err(EngineError::Io)?;
        Ok(Engine {
            inner: Arc::new(Inner {
                commands: tx,
                store,
                namespace,
                resident,
                codec: Arc::new(codec),
                model_config,
                model_id: id,
                config,
                metrics,
                request_log: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The model's tokenizer and chat template.
    pub fn codec(&self) -> &Arc<TextCodec> {
        &self.inner.codec
    }
    /// The model's shape.
    pub fn model_config(&self) -> &ModelConfig {
        &self.inner.model_config
    }
    /// The name the API serves the model under.
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }
    /// The KV namespace of unsalted requests.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }
    /// The store its KV blocks go to.
    pub fn store(&self) -> &TieredStore {
        &self.inner.store
    }
    /// Its configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }
    /// Its metrics.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.inner.metrics
    }
    /// Logs every request from now on to `log` (the first call wins).
    pub fn log_requests(&self, log: RequestLog) {
        let _ = self.inner.request_log.set(log);
    }

    /// The namespace of a request with this salt.
    pub fn namespace_for(&self, cache_salt: Option<&str>) -> Result<Namespace> {
        match cache_salt {
            Some(salt) => {
                let ns = self.inner.namespace.salted(salt)?;
                self.inner.store.register_namespace(&ns);
                Ok(ns)
            }
            None => Ok(self.inner.namespace.clone()),
        }
    }

    /// The longest context a request may use (prompt plus generated tokens).
    pub fn max_context(&self) -> usize {
        self.inner.config.max_context(&self.inner.model_config)
    }

    /// `max_tokens` for a request that does not say: what is left of the context
    /// (and of the KV pool) after the prompt.
    pub fn default_max_tokens(&self, prompt_len: usize) -> usize {
        let block = self.inner.namespace.layout().block_size as usize;
        let pool_tokens = self.inner.config.num_blocks(self.inner.namespace.layout()) * block;
        self.max_context()
            .min(pool_tokens)
            .saturating_sub(prompt_len)
    }

    /// Checks a request, finds and fetches its cached prefix, and queues it. Tokens
    /// arrive on the returned channel; dropping it cancels the request.
    pub async fn generate(
        &self,
        mut req: GenerateRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>> {
        let arrived = Instant::now();
        let i = &self.inner;
        if req.prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let vocab = i.model_config.vocab_size;
        if let Some(bad) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "prompt token {bad} is outside the vocabulary ({vocab})"
            )));
        }
        let max_ctx = self.max_context();
        // Saturating: `max_tokens` comes from the client and may be anything.
        let wanted = req.prompt.len().saturating_add(req.max_tokens.max(1));
        if wanted > max_ctx {
            return Err(EngineError::InvalidRequest(format!(
                "this model's maximum context length is {max_ctx} tokens; the request asks for {} ({} in the prompt, {} to generate)",
                req.prompt.len().saturating_add(req.max_tokens),
                req.prompt.len(),
                req.max_tokens
            )));
        }
        let block = i.namespace.layout().block_size as usize;
        let pool_tokens = i.config.num_blocks(i.namespace.layout()) * block;
        if wanted > pool_tokens {
            return Err(EngineError::InvalidRequest(format!(
                "the request needs {wanted} tokens of KV but the whole KV pool holds {pool_tokens}"
            )));
        }
        let ns = self.namespace_for(req.cache_salt.as_deref())?;
        let hashes: Vec<BlockHash> = hash_blocks(&ns, &req.prompt);
        if let Some(log) = i.request_log.get() {
            log.record(req.prompt.len(), req.max_tokens, block as u32, &hashes);
        }
        let resident = i.resident.prefix_len(&hashes);
        let mut fetched = if i.config.load_from_store {
            fetch::fetch_prefix(&i.store, &ns, &hashes, resident, i.config.fetch_concurrency).await
        } else {
            fetch::Fetched::default()
        };
        let mut first_token = None;
        if let Some(elsewhere) = req.prefill_elsewhere.clone() {
            let have = resident + fetched.blocks.len();
            if let Some(r) = elsewhere.prefill(&mut req, &ns, &hashes, have).await {
                fetched.blocks.extend(r.blocks);
                first_token = Some(r.first_token);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = sequence::NewSequence {
            req,
            ns,
            hashes,
            fetched_from: resident,
            fetched,
            first_token,
            events: tx,
            arrived,
        };
        i.commands
            .send(Command::Add(Box::new(seq)))
            .map_err(|_| EngineError::Unavailable("the engine worker has stopped".into()))?;
        Ok(rx)
    }

    /// Drops every unreferenced block from the engine's KV pool (the store keeps its
    /// copies). Returns how many blocks were dropped.
    pub async fn reset_prefix_cache(&self) -> Result<usize> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::ResetPrefixCache(tx))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the engine worker has stopped".into()))
    }

    /// The KV pool's block counts.
    pub async fn pool_usage(&self) -> Result<PoolUsage> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Usage(tx))?;
        rx.await
            .map_err(|_| EngineError::Unavailable("the engine worker has stopped".into()))
    }

    fn send(&self, c: Command) -> Result<()> {
        self.inner
            .commands
            .send(c)
            .map_err(|_| EngineError::Unavailable("the engine worker has stopped".into()))
    }
}

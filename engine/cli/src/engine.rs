//! `tierkv engine`: the inference engine daemon, its KV cache on the tiered store,
//! serving the OpenAI API (and, like `tierkv serve`, the block service so that peers
//! can fetch its blocks).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;
use tierkv_engine::metrics::EngineMetrics;
use tierkv_engine::pd::{DisaggConfig, PdWorker, Role, internal_api};
use tierkv_engine::{Engine, EngineConfig};
use tierkv_kvstore::{ByteSize, StoreConfig, TieredStore};
use tierkv_serving::discovery::{EtcdClient, EtcdConfig, WorkerSpec};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub(crate) struct EngineArgs {
    /// A `.gguf` file (Llama family) or a Hugging Face Qwen3 directory.
    #[arg(long)]
    pub model: PathBuf,
    /// HTTP address of the OpenAI API (`127.0.0.1:0` picks a free port; printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Base directory of the store's tiers (overrides the file's `store.data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Configuration file: an `[engine]` table and a `[store]` table (the format of
    /// `tierkv serve --config`). Without it: the defaults of both.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokens per KV block (overrides `engine.block_size`).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Name the API serves the model under. Default: the file or directory name.
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Address of the block service (gRPC) through which peers fetch this engine's
    /// blocks (`:0` picks a free port; printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub block_service_listen: String,
    /// Role in a disaggregated cluster (overrides `disagg.role`): aggregated, prefill
    /// or decode.
    #[arg(long)]
    pub role: Option<Role>,
    /// Name in the cluster. Default: `<role>-<port>`.
    #[arg(long)]
    pub name: Option<String>,
    /// Prefill remotely only when at least this many prompt tokens are uncached
    /// (overrides `disagg.remote_prefill_min_tokens`).
    #[arg(long)]
    pub remote_prefill_min_tokens: Option<usize>,
    /// Register in etcd (`--etcd`), so that frontends watching it find this worker.
    #[command(flatten)]
    pub registry: crate::edge::EtcdArgs,
    /// Host name or IP that peers use to reach this worker. Default: the listen
    /// address's IP (127.0.0.1 when it listens on every interface).
    #[arg(long)]
    pub advertise_host: Option<String>,
    /// Append one JSON line per request (arrival time, prompt and output lengths, the
    /// prompt's block hashes; never its tokens) to this file: a trace for
    /// `tierkv-bench replay` and `tune`. Default: no log.
    #[arg(long)]
    pub request_log: Option<PathBuf>,
    #[command(flatten)]
    pub access: crate::edge::HttpAccessArgs,
}

/// The engine's configuration file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EngineFile {
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub disagg: DisaggConfig,
    pub store: Option<StoreConfig>,
}

pub(crate) fn read_file(path: &Path) -> anyhow::Result<EngineFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

pub(crate) async fn run(args: EngineArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None => EngineFile::default(),
    };
    let mut engine_config = file.engine;
    if let Some(b) = args.block_size {
        engine_config.block_size = b;
    }
    engine_config.validate()?;
    let mut disagg = file.disagg;
    if let Some(r) = args.role {
        disagg.role = r;
    }
    if let Some(n) = args.remote_prefill_min_tokens {
        disagg.remote_prefill_min_tokens = n;
    }
    disagg.validate()?;
    let store_default = file.store.clone().unwrap_or_default();
    let mut store_config =
        crate::edge::load_config(None, args.data_dir.clone(), move || store_default)?;
    crate::edge::block_service_tokens(&mut store_config.service);
    let access = args.access.access();

    let model_path = args.model.clone();
    let loaded = tokio::task::spawn_blocking(move || tierkv_engine::model::load(&model_path))
        .await?
        .with_context(|| format!("loading {}", args.model.display()))?;
    let mut loaded = loaded;
    if let Some(name) = &args.served_model_name {
        loaded.id = name.clone();
    }
    // Host and disk slots must hold a whole block of this model.
    let block_bytes = engine_config
        .kv_layout(loaded.model.config())?
        .block_bytes() as u64;
    if store_config.slot_bytes.0 < block_bytes {
        let slot = block_bytes.div_ceil(4096) * 4096;
        tracing::info!(
            from = store_config.slot_bytes.0,
            to = slot,
            "store slot size raised to hold one KV block"
        );
        store_config.slot_bytes = ByteSize(slot);
    }
    store_config.validate()?;
    let store = TieredStore::open(&store_config).await.with_context(|| {
        format!(
            "opening the store under {}",
            store_config.data_dir.display()
        )
    })?;
    let metrics = Arc::new(EngineMetrics::new());
    let role = disagg.role;
    engine_config.namespace_key = crate::edge::namespace_key()?;
    let engine = Engine::start(loaded, store.clone(), engine_config, metrics)?;
    if let Some(path) = &args.request_log {
        engine.log_requests(tierkv_engine::scheduler::RequestLog::open(path)?);
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let addr = &args.block_service_listen;
    let blocks_listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let blocks_addr = blocks_listener.local_addr()?;
    let http_addr = listener.local_addr()?;
    crate::edge::check_exposure(
        "the engine's HTTP API",
        http_addr,
        access.api_key.is_some(),
        args.access.insecure,
    )?;
    crate::edge::check_exposure(
        "the engine's block service",
        blocks_addr,
        !store_config.service.tokens.is_empty(),
        args.access.insecure,
    )?;
    println!("tierkv engine: block service on {blocks_addr}");
    let svc_metrics = Arc::new(tierkv_kvstore::metrics::Metrics::new());
    let (svc_store, cfg, stop) = (
        store.clone(),
        store_config.service.clone(),
        stopped(stop_rx.clone()),
    );
    let block_service = tokio::spawn(async move {
        tierkv_kvstore::service::serve(svc_store, &cfg, blocks_listener, svc_metrics, stop).await
    });
    let host = match &args.advertise_host {
        Some(h) => h.clone(),
        None if http_addr.ip().is_unspecified() => "127.0.0.1".to_string(),
        None => http_addr.ip().to_string(),
    };
    let spec = WorkerSpec::tierkv(
        args.name
            .clone()
            .unwrap_or_else(|| format!("{role}-{}", http_addr.port())),
        role,
        format!("http://{host}:{}", http_addr.port()),
        Some(format!("{host}:{}", blocks_addr.port())),
    );
    let worker = PdWorker::new(
        engine.clone(),
        disagg,
        spec.name.clone(),
        spec.blocks.clone(),
        tierkv_engine::pd::PeerCredentials {
            api_key: access.api_key.clone(),
            block_token: store_config.service.tokens.first().map(|t| t.token.clone()),
            // With mutual TLS on its own block service, a worker reaches its peers'
            // with its certificate and the cluster CA.
            block_tls: store_config
                .service
                .tls
                .as_ref()
                .and_then(tierkv_kvstore::service::ClientTls::cluster_member),
        },
    )?;
    println!(
        "tierkv engine: model {} on http://{}/v1 (KV blocks of {} tokens, role {role}, name {})",
        engine.model_id(),
        http_addr,
        engine.namespace().layout().block_size,
        spec.name,
    );
    let registration = if args.registry.etcd.is_empty() {
        None
    } else {
        let etcd = EtcdConfig {
            endpoints: args.registry.etcd.clone(),
            prefix: args.registry.etcd_prefix.clone(),
            ..EtcdConfig::default()
        };
        let client = EtcdClient::connect(&etcd.endpoints).await?;
        let r = client.register(&etcd, &spec).await?;
        println!(
            "tierkv engine: registered in etcd as {}{}",
            etcd.prefix, spec.name
        );
        Some(r)
    };
    tokio::spawn(async move {
        crate::edge::shutdown_signal().await;
        tracing::info!("shutting down: finishing open requests");
        let _ = stop_tx.send(true);
    });
    let routes = tierkv_engine::api::require_api_key(
        tierkv_engine::api::router(engine).merge(internal_api::router(worker)),
        &access,
    );
    let served = tierkv_engine::api::serve_router(listener, routes, stopped(stop_rx)).await;
    if let Some(r) = registration
        && let Err(e) = r.revoke().await
    {
        tracing::warn!(error = %e, "leaving etcd failed; the lease will expire");
    }
    served?;
    block_service.await??;
    tracing::info!("engine stopped");
    Ok(())
}

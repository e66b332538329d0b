//! `tierkv frontend`: the OpenAI API in front of prefill, decode and aggregated
//! workers, routing each request (round-robin or by KV overlap).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use tierkv_engine::pd::PeerCredentials;
use tierkv_serving::api::ApiAccess;
use tierkv_serving::discovery::{Discovery, EtcdClient, EtcdDiscovery, StaticDiscovery};
use tierkv_serving::frontend::routing::Policy;
use tierkv_serving::frontend::{Frontend, FrontendConfig};

#[derive(clap::Args, Debug)]
pub(crate) struct FrontendArgs {
    /// The model the workers serve (its tokenizer and chat template are used here).
    #[arg(long)]
    pub model: PathBuf,
    /// HTTP address of the OpenAI API (`127.0.0.1:0` picks a free port; printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Configuration file with a `[frontend]` table (router, workers, etcd).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Routing policy (overrides `frontend.router`): round-robin or kv-aware.
    #[arg(long)]
    pub router: Option<Policy>,
    /// Watch the workers registered in etcd (`--etcd`).
    #[command(flatten)]
    pub registry: crate::edge::EtcdArgs,
    /// Name the API serves the model under; must match the workers'. Default: the
    /// file or directory name.
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[command(flatten)]
    pub access: crate::edge::HttpAccessArgs,
    /// API key presented to the workers. Default: `TIERKV_WORKER_API_KEY`, else the
    /// frontend's own `--api-key`.
    #[arg(long)]
    pub worker_api_key: Option<String>,
    /// CA that signed the workers' block service certificates (their
    /// `[service.tls]`): watch their blocks over TLS.
    #[arg(long)]
    pub block_tls_ca: Option<PathBuf>,
    /// Certificate and key presented to workers whose block services ask for one
    /// (`tls.client_ca`, mutual TLS).
    #[arg(long, requires = "block_tls_key", requires = "block_tls_ca")]
    pub block_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "block_tls_cert")]
    pub block_tls_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FrontendFile {
    #[serde(default)]
    frontend: FrontendConfig,
}

fn read_file(path: &Path) -> anyhow::Result<FrontendConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: FrontendFile =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(f.frontend)
}

/// Builds a frontend from `config` (plus etcd endpoints, if any) for the model at
/// `model`; `workers` authenticates it to the workers' APIs and block services.
pub(crate) async fn start(
    model: &Path,
    served_model_name: Option<String>,
    mut config: FrontendConfig,
    workers: PeerCredentials,
) -> anyhow::Result<Frontend> {
    let path = model.to_path_buf();
    // Tokenizer, template and shape only: the frontend never runs the model.
    let text = tokio::task::spawn_blocking(move || tierkv_serving::text::load_text(&path))
        .await?
        .with_context(|| format!("loading {}", model.display()))?;
    let id = served_model_name.unwrap_or(text.id);
    let static_workers = config.workers.len();
    let wait = std::time::Duration::from_secs(config.worker_start_timeout_s);
    let mut discovery: Vec<Box<dyn Discovery>> = vec![Box::new(StaticDiscovery::new(
        std::mem::take(&mut config.workers),
    ))];
    if let Some(etcd) = &config.etcd {
        let client = EtcdClient::connect(&etcd.endpoints).await?;
        discovery.push(Box::new(EtcdDiscovery::new(client, etcd.prefix.clone())));
    }
    config.namespace_key = crate::edge::namespace_key()?;
    let frontend = Frontend::start(text.codec, text.config, id, &config, discovery, workers)?;
    // Answer only once the listed workers joined: a request routed before would find
    // no worker.
    let deadline = std::time::Instant::now() + wait;
    while frontend.registry().count() < static_workers && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if frontend.registry().count() < static_workers {
        tracing::warn!(
            joined = frontend.registry().count(),
            listed = static_workers,
            "not every listed worker joined; serving with those that did"
        );
    }
    Ok(frontend)
}

pub(crate) async fn run(args: FrontendArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(p) => read_file(p)?,
        None => FrontendConfig::default(),
    };
    if let Some(r) = args.router {
        config.router = r;
    }
    if !args.registry.etcd.is_empty() {
        let mut etcd = config.etcd.take().unwrap_or_default();
        etcd.endpoints = args.registry.etcd.clone();
        etcd.prefix = args.registry.etcd_prefix.clone();
        config.etcd = Some(etcd);
    }
    // The block services' token (vLLM workers' TierkvConnector reads the same).
    let block_token = std::env::var("TIERKV_TOKEN").ok().filter(|t| !t.is_empty());
    let access = args.access.access();
    let workers = PeerCredentials {
        api_key: args
            .worker_api_key
            .clone()
            .or_else(|| std::env::var("TIERKV_WORKER_API_KEY").ok())
            .filter(|k| !k.is_empty())
            .or_else(|| access.api_key.clone()),
        block_token,
        block_tls: args
            .block_tls_ca
            .clone()
            .map(|ca| tierkv_kvstore::service::ClientTls {
                ca,
                cert: args.block_tls_cert.clone(),
                key: args.block_tls_key.clone(),
            }),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    crate::edge::check_exposure(
        "the frontend's HTTP API",
        listener.local_addr()?,
        access.api_key.is_some(),
        args.access.insecure,
    )?;
    let frontend = start(&args.model, args.served_model_name.clone(), config, workers).await?;
    println!(
        "tierkv frontend: model {} on http://{}/v1",
        tierkv_serving::api::Backend::model_id(&frontend),
        listener.local_addr()?
    );
    serve(frontend, listener, &access).await
}

/// Serves `frontend`'s API on `listener` (behind `access`'s key) until SIGINT or
/// SIGTERM.
pub(crate) async fn serve(
    frontend: Frontend,
    listener: tokio::net::TcpListener,
    access: &ApiAccess,
) -> anyhow::Result<()> {
    tierkv_serving::api::serve_router(
        listener,
        tierkv_serving::api::require_api_key(tierkv_serving::frontend::router(frontend), access),
        crate::edge::shutdown_signal(),
    )
    .await?;
    Ok(())
}

//! What the subcommands share: configuration loading, the flags several of them take
//! (flattened into each), and every read of the environment (this crate is the binary
//! edge: the libraries never read it).

use std::path::PathBuf;

use tierkv_kvstore::StoreConfig;

/// Loads the configuration (the built-in default without a file), applies a data
/// directory override, and fills credentials the file leaves out from the
/// environment: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` for S3 tiers and
/// `TIERKV_TOKEN` for remote tiers.
pub(crate) fn load_config(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    default: impl FnOnce() -> StoreConfig,
) -> anyhow::Result<StoreConfig> {
    let mut c = match config {
        Some(path) => StoreConfig::from_file(path)?,
        None => default(),
    };
    if let Some(dir) = data_dir {
        c.data_dir = dir;
    }
    c.fill_secrets(|name| std::env::var(name).ok());
    c.validate()?;
    Ok(c)
}

/// The cluster's registry: the etcd that workers register in and frontends watch.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EtcdArgs {
    /// etcd client URLs (comma-separated), e.g. `http://127.0.0.1:2379`. Default: none
    /// (no registry; workers are listed statically).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix of the worker registrations in etcd.
    #[arg(long, default_value = "/tierkv/workers/")]
    pub etcd_prefix: String,
}

/// Who may reach an HTTP API a binary serves (`tierkv engine`, `tierkv frontend`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HttpAccessArgs {
    /// Require `Authorization: Bearer <KEY>` on every HTTP route except `/health`
    /// (vLLM's `--api-key`). Default: `TIERKV_API_KEY` from the environment, else none.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Serve `/metrics` without the API key (for a scraper without credentials).
    #[arg(long)]
    pub public_metrics: bool,
    /// Serve off loopback without an API key or block-service token (a network where
    /// every host that can reach the ports is trusted). Default: refuse.
    #[arg(long)]
    pub insecure: bool,
}

impl HttpAccessArgs {
    pub(crate) fn access(&self) -> tierkv_engine::api::ApiAccess {
        tierkv_engine::api::ApiAccess {
            api_key: self
                .api_key
                .clone()
                .or_else(|| std::env::var("TIERKV_API_KEY").ok())
                .filter(|k| !k.is_empty()),
            public_metrics: self.public_metrics,
        }
    }
}

/// The cluster's namespace key from `TIERKV_NAMESPACE_KEY` (never a flag: argv is
/// visible to every user of the host), if set.
pub(crate) fn namespace_key() -> anyhow::Result<Option<tierkv_kvstore::NamespaceKey>> {
    match std::env::var("TIERKV_NAMESPACE_KEY") {
        Ok(k) if !k.is_empty() => Ok(Some(tierkv_kvstore::NamespaceKey::new(k.as_bytes())?)),
        _ => Ok(None),
    }
}

/// Refuses to serve `what` on `addr` beyond loopback without credentials, unless the
/// operator said `--insecure`: anyone who can reach such a port could read, overwrite
/// or flush every tenant's KV.
pub(crate) fn check_exposure(
    what: &str,
    addr: std::net::SocketAddr,
    has_credentials: bool,
    insecure: bool,
) -> anyhow::Result<()> {
    if has_credentials || addr.ip().is_loopback() {
        return Ok(());
    }
    if insecure {
        tracing::warn!(%addr, "{what} is served off loopback without credentials (--insecure)");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {what} on {addr} without credentials: set {} or pass --insecure",
        if what.contains("block service") {
            "a [[service.token]] (or TIERKV_TOKEN)"
        } else {
            "--api-key (or TIERKV_API_KEY)"
        }
    )
}

/// The block service's tokens: the configured ones, else `TIERKV_TOKEN` for every
/// namespace (the token workers present to each other).
pub(crate) fn block_service_tokens(service: &mut tierkv_kvstore::service::ServiceConfig) {
    if service.tokens.is_empty()
        && let Some(token) = std::env::var("TIERKV_TOKEN").ok().filter(|t| !t.is_empty())
    {
        service.tokens.push(tierkv_kvstore::service::TokenConfig {
            token,
            namespaces: vec!["*".into()],
        });
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

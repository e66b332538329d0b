//! `tierkv serve`: the block service over a local tiered store.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tierkv_kvstore::metrics::{Metrics, serve_metrics};
use tierkv_kvstore::{StoreConfig, TierConfig, TieredStore, service};
use tokio::sync::watch;

#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// gRPC address to listen on (`127.0.0.1:0` picks a free port; the address is
    /// printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Base directory of the tiers (overrides `data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Configuration file. Without it: a host tier (512 MiB) over a disk tier (4 GiB).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where to serve Prometheus `/metrics`. Default: not served.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Do not share the host tier with same-host clients. By default (unless the
    /// config sets `[service] local_socket`) the top host tier is shared and the socket
    /// is `<data_dir>/tierkv.sock`.
    #[arg(long)]
    pub no_local: bool,
    /// Serve off loopback without a block-service token (every host that can reach the
    /// port is trusted). Default: refuse.
    #[arg(long)]
    pub insecure: bool,
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Turns on the same-host channel: the top host tier shared, the socket in `data_dir`.
fn share_host_tier(config: &mut StoreConfig) {
    let Some(TierConfig::Host(top)) = config.tiers.first_mut() else {
        tracing::info!("the top tier is not a host tier: no same-host channel");
        return;
    };
    if config.service.local_socket.is_none() {
        // Absolute: clients open the path the server advertises, from their own cwd.
        let path = config.data_dir.join("tierkv.sock");
        let path = std::path::absolute(&path).unwrap_or(path);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            tracing::warn!(path = %path.display(), "data directory path too long for a Unix socket: no same-host channel");
            return;
        }
        config.service.local_socket = Some(path);
    }
    top.shared = true;
}

/// The default of `tierkv serve`: host + disk, no object tier.
fn serve_default() -> StoreConfig {
    let mut c = StoreConfig::default();
    c.tiers.retain(|t| !matches!(t, TierConfig::Object(_)));
    c
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = crate::edge::load_config(args.config.as_ref(), args.data_dir, serve_default)?;
    crate::edge::block_service_tokens(&mut config.service);
    if !args.no_local {
        share_host_tier(&mut config);
    }
    let store = TieredStore::open(&config)
        .await
        .with_context(|| format!("opening the store under {}", config.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    crate::edge::check_exposure(
        "the block service",
        listener.local_addr()?,
        !config.service.tokens.is_empty(),
        args.insecure,
    )?;
    let metrics = Arc::new(Metrics::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_task = match &args.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics address {addr}"))?;
            println!(
                "tierkv serve: metrics on http://{}/metrics",
                l.local_addr()?
            );
            Some(tokio::spawn(serve_metrics(
                l,
                Arc::clone(&metrics),
                store.clone(),
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    println!("tierkv serve: listening on {}", listener.local_addr()?);
    let tiers: Vec<String> = store
        .tiers()
        .iter()
        .map(|t| format!("{}({})", t.name(), t.kind()))
        .collect();
    tracing::info!(tiers = %tiers.join(" -> "), data_dir = %config.data_dir.display(), "block service up");

    tokio::spawn(async move {
        crate::edge::shutdown_signal().await;
        tracing::info!("shutting down: no new calls; finishing open ones");
        let _ = stop_tx.send(true);
    });
    service::serve(
        store.clone(),
        &config.service,
        listener,
        metrics,
        stopped(stop_rx),
    )
    .await?;
    if let Some(task) = metrics_task {
        task.await??;
    }
    // Demotions and write-through copies complete inside each put (queued promotions
    // are dropped); dropping the store closes the io_uring threads and RocksDB cleanly.
    drop(store);
    tracing::info!("block service stopped");
    Ok(())
}

//! `tierkv register`: keeps a worker that cannot register itself (a `vllm serve` with
//! TierkvConnector) in etcd while it is healthy. It waits for the worker's `/health`
//! and, for vLLM, for the connector's rendezvous file (block service address and KV
//! namespace), registers it under a lease, and removes the registration as soon as
//! the worker stops answering (or on SIGTERM / Ctrl-C); a worker that comes back is
//! registered again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tierkv_engine::pd::Role;
use tierkv_serving::discovery::{EtcdClient, EtcdConfig, WorkerEngine, WorkerSpec};

use crate::vllm_worker::{healthy, read_rendezvous, rendezvous_file, routable};

#[derive(clap::Args, Debug)]
pub(crate) struct RegisterArgs {
    /// The etcd to register in (`--etcd` is required here).
    #[command(flatten)]
    pub registry: crate::edge::EtcdArgs,
    /// Lease time-to-live in seconds: how long a registration outlives this process
    /// if it dies without removing it.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl_s: i64,
    /// The worker's name, unique in the cluster.
    #[arg(long)]
    pub name: String,
    /// prefill, decode or aggregated.
    #[arg(long)]
    pub role: Role,
    /// The engine behind `--http`: vllm or tierkv.
    #[arg(long, default_value = "vllm")]
    pub engine: WorkerEngine,
    /// Base URL of the worker's HTTP API, as the frontend reaches it.
    #[arg(long)]
    pub http: String,
    /// vLLM: TierkvConnector's `rendezvous_dir`; the block service address and the
    /// namespace are read from rank 0's file there.
    #[arg(long)]
    pub rendezvous_dir: Option<PathBuf>,
    /// vLLM: the `engine_id` of its `--kv-transfer-config`.
    #[arg(long)]
    pub engine_id: Option<String>,
    /// The block service address, when there is no rendezvous file to read.
    #[arg(long)]
    pub blocks: Option<String>,
    /// The KV namespace's canonical name, when there is no rendezvous file to read.
    #[arg(long)]
    pub namespace: Option<String>,
    /// How often the worker's health is checked, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub health_poll_ms: u64,
}

/// Unanswered health checks in a row after which the worker is taken as gone.
const MISSED_CHECKS: u32 = 2;

/// Waits until the worker answers and says where its blocks are.
async fn wait_ready(args: &RegisterArgs, http: &reqwest::Client) -> anyhow::Result<WorkerSpec> {
    let poll = Duration::from_millis(args.health_poll_ms.max(10));
    let file = match (&args.rendezvous_dir, &args.engine_id) {
        (Some(dir), Some(id)) => Some(rendezvous_file(dir, id)),
        (None, None) => None,
        _ => bail!("--rendezvous-dir and --engine-id go together"),
    };
    loop {
        if healthy(http, &args.http).await {
            let (mut blocks, mut namespace) = (args.blocks.clone(), args.namespace.clone());
            let mut ready = true;
            if let Some(file) = &file {
                match read_rendezvous(file)? {
                    Some(r) => {
                        blocks = blocks.or(Some(routable(&r.addr, &args.http)));
                        namespace = namespace.or(Some(r.namespace_name));
                    }
                    None => ready = false,
                }
            }
            if ready {
                if args.engine == WorkerEngine::Vllm && namespace.is_none() {
                    bail!("a vLLM worker needs --rendezvous-dir and --engine-id, or --namespace");
                }
                return Ok(WorkerSpec {
                    name: args.name.clone(),
                    role: args.role,
                    http: args.http.trim_end_matches('/').to_string(),
                    blocks,
                    engine: args.engine,
                    namespace,
                });
            }
        }
        tokio::time::sleep(poll).await;
    }
}

pub(crate) async fn run(args: RegisterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.registry.etcd.is_empty(),
        "tierkv register needs --etcd (the etcd to register the worker in)"
    );
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .context("HTTP client")?;
    let config = EtcdConfig {
        endpoints: args.registry.etcd.clone(),
        prefix: args.registry.etcd_prefix.clone(),
        lease_ttl_s: args.lease_ttl_s,
    };
    let client = EtcdClient::connect(&config.endpoints).await?;
    let poll = Duration::from_millis(args.health_poll_ms.max(10));
    let shutdown = crate::edge::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let spec = tokio::select! {
            s = wait_ready(&args, &http) => s?,
            _ = &mut shutdown => return Ok(()),
        };
        let registration = client.register(&config, &spec).await?;
        println!(
            "tierkv register: {} ({} {}) registered at {}, block service {}",
            spec.name,
            spec.engine.as_str(),
            spec.role,
            spec.http,
            spec.blocks.as_deref().unwrap_or("-")
        );
        let mut missed = 0;
        while missed < MISSED_CHECKS {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = &mut shutdown => {
                    registration.revoke().await?;
                    println!("tierkv register: {} removed", spec.name);
                    return Ok(());
                }
            }
            missed = if healthy(&http, &spec.http).await {
                0
            } else {
                missed + 1
            };
        }
        registration.revoke().await?;
        println!("tierkv register: {} stopped answering; removed", spec.name);
    }
}

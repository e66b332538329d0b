//! `tierkv up`: a whole disaggregated cluster on this machine — N prefill and M decode
//! workers as child processes on free loopback ports (`tierkv engine`, or `vllm serve`
//! with TierkvConnector and its embedded block service), etcd when asked, and a
//! frontend in this process. Ctrl-C (or SIGTERM) stops the frontend and then every
//! child.

mod etcd;
mod tierkv;
mod vllm;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tierkv_engine::pd::Role;
use tierkv_serving::discovery::{EtcdClient, EtcdConfig, Registration, WorkerEngine, WorkerSpec};
use tierkv_serving::frontend::FrontendConfig;
use tierkv_serving::frontend::routing::Policy;
use tokio::process::Child;

#[derive(clap::Args, Debug)]
pub(crate) struct UpArgs {
    /// The workers' engine: tierkv (`tierkv engine`) or vllm (`vllm serve` with
    /// TierkvConnector, from the venv of `scripts/vllm-env`).
    #[arg(long, default_value = "tierkv")]
    pub engine: WorkerEngine,
    /// Prefill workers.
    #[arg(long, default_value_t = 2)]
    pub prefill: usize,
    /// Decode workers.
    #[arg(long, default_value_t = 1)]
    pub decode: usize,
    /// Aggregated workers (prefill and decode their own requests): `--prefill 0
    /// --decode 0 --aggregated N` is a plain data-parallel cluster.
    #[arg(long, default_value_t = 0)]
    pub aggregated: usize,
    /// tierkv: a `.gguf` file (Llama family) or a Hugging Face Qwen3 directory. vllm:
    /// a Hugging Face directory (the frontend reads its tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// HTTP address of the frontend's OpenAI API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Each worker keeps its store (and, for vLLM, its log) under
    /// `<data-dir>/<worker name>`.
    #[arg(long, default_value = "tierkv-data/cluster")]
    pub data_dir: PathBuf,
    /// tierkv: engine configuration file given to every worker (`[engine]`,
    /// `[disagg]`, `[store]`). vllm: the store's TOML file (`tierkv serve --config`
    /// format) for every connector.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// tierkv: tokens per KV block (vLLM: pass `--block-size` in `--vllm-args`).
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Routing policy: round-robin or kv-aware.
    #[arg(long, default_value = "kv-aware")]
    pub router: Policy,
    /// Decode workers prefill remotely when at least this many prompt tokens are
    /// uncached (tierkv: each decode worker's `[disagg]`; vllm: the frontend's rule).
    #[arg(long)]
    pub remote_prefill_min_tokens: Option<usize>,
    /// vllm: the Python with vLLM and the `tierkv` package. Default `$TIERKV_PYTHON`,
    /// else `.venv-vllm/bin/python` (what `scripts/vllm-env` creates).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// vllm: more `vllm serve` arguments for every worker, space-separated, e.g.
    /// `"--max-model-len 4096 --enforce-eager"`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub vllm_args: String,
    /// Register the workers in etcd at these client URLs (comma-separated) and have
    /// the frontend discover them there.
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Start an etcd (the `etcd` binary) for the cluster, with its data under
    /// `<data-dir>/etcd`, and use it as `--etcd`.
    #[arg(long)]
    pub start_etcd: bool,
}

/// A worker: what the frontend knows of it, and its process.
pub(crate) struct Worker {
    pub spec: WorkerSpec,
    pub child: Child,
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped) and a
        // valid signal number; it touches no memory.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

async fn stop(name: &str, child: &mut Child, grace: Duration) {
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(worker = name, "did not stop in {grace:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

async fn stop_all(workers: &mut [Worker]) {
    for w in workers.iter() {
        terminate(&w.child);
    }
    for w in workers.iter_mut() {
        // vLLM takes a while to shut its engine processes down.
        stop(&w.spec.name, &mut w.child, Duration::from_secs(30)).await;
    }
}

/// A loopback port nothing listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub(crate) async fn run(mut args: UpArgs) -> anyhow::Result<()> {
    if args.decode + args.aggregated == 0 {
        bail!("--decode (or --aggregated) must be at least 1: those workers serve the requests");
    }
    if args.python.is_none() {
        args.python = Some(
            std::env::var_os("TIERKV_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".venv-vllm/bin/python")),
        );
    }
    let mut etcd_child = None;
    if args.start_etcd {
        let (child, url) = etcd::start(&args.data_dir.join("etcd")).await?;
        println!("tierkv up: etcd on {url}");
        args.etcd = vec![url];
        etcd_child = Some(child);
    }
    let mut plan = Vec::new();
    for i in 0..args.prefill {
        plan.push((Role::Prefill, format!("prefill-{i}")));
    }
    for i in 0..args.decode {
        plan.push((Role::Decode, format!("decode-{i}")));
    }
    for i in 0..args.aggregated {
        plan.push((Role::Aggregated, format!("aggregated-{i}")));
    }
    // vLLM workers' block services and the frontend share one random token.
    let token = (args.engine == WorkerEngine::Vllm).then(vllm::cluster_token);
    let mut workers = Vec::new();
    let started = match args.engine {
        WorkerEngine::Tierkv => {
            let mut r = Ok(());
            for (role, name) in plan {
                match tierkv::spawn_worker(&args, role, name).await {
                    Ok(w) => workers.push(w),
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r
        }
        WorkerEngine::Vllm => vllm::spawn_all(&args, plan, token.as_deref(), &mut workers).await,
    };
    let served = match started {
        Ok(()) => serve(&args, &workers, token).await,
        Err(e) => Err(e),
    };
    println!("tierkv up: stopping {} workers", workers.len());
    stop_all(&mut workers).await;
    if let Some(mut child) = etcd_child {
        terminate(&child);
        stop("etcd", &mut child, Duration::from_secs(10)).await;
    }
    served
}

/// Registers the workers (in etcd, or in the frontend's static list) and serves the
/// frontend until Ctrl-C.
async fn serve(args: &UpArgs, workers: &[Worker], token: Option<String>) -> anyhow::Result<()> {
    for w in workers {
        println!(
            "tierkv up: {} ({} {}) on {}/v1, block service on {}",
            w.spec.name,
            w.spec.engine.as_str(),
            w.spec.role,
            w.spec.http,
            w.spec.blocks.as_deref().unwrap_or("-")
        );
    }
    let mut config = FrontendConfig {
        router: args.router,
        ..FrontendConfig::default()
    };
    if let Some(n) = args.remote_prefill_min_tokens {
        config.prefill.remote_prefill_min_tokens = n;
    }
    let mut registrations: Vec<Registration> = Vec::new();
    if args.etcd.is_empty() {
        config.workers = workers.iter().map(|w| w.spec.clone()).collect();
    } else {
        let etcd = EtcdConfig {
            endpoints: args.etcd.clone(),
            ..EtcdConfig::default()
        };
        let client = EtcdClient::connect(&etcd.endpoints).await?;
        for w in workers {
            registrations.push(client.register(&etcd, &w.spec).await?);
        }
        config.etcd = Some(etcd);
    }
    let wait = Duration::from_secs(config.worker_start_timeout_s);
    let frontend = crate::frontend::start(
        &args.model,
        None,
        config,
        tierkv_engine::pd::PeerCredentials {
            api_key: None,
            block_token: token,
            block_tls: None,
        },
    )
    .await?;
    let deadline = std::time::Instant::now() + wait;
    while frontend.registry().count() < workers.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!(
        "tierkv up: frontend ({} prefill, {} decode, {} aggregated {} workers, {} routing{}) on http://{}/v1 — Ctrl-C stops everything",
        args.prefill,
        args.decode,
        args.aggregated,
        args.engine.as_str(),
        match args.router {
            Policy::KvAware => "kv-aware",
            Policy::RoundRobin => "round-robin",
        },
        if args.etcd.is_empty() {
            ""
        } else {
            ", etcd discovery"
        },
        listener.local_addr()?
    );
    let served = crate::frontend::serve(frontend, listener, &Default::default()).await;
    for r in registrations {
        if let Err(e) = r.revoke().await {
            tracing::warn!(error = %e, "removing a registration from etcd");
        }
    }
    served
}

//! `tierkv up`: a whole disaggregated cluster on this machine — N prefill and M decode
//! workers as child processes on free loopback ports, and a frontend in this process.
//! Ctrl-C (or SIGTERM) stops the frontend and then every worker.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tierkv_engine::discovery::WorkerSpec;
use tierkv_engine::frontend::FrontendConfig;
use tierkv_engine::frontend::routing::Policy;
use tierkv_engine::pd::Role;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
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
    /// A `.gguf` file (Llama family) or a Hugging Face Qwen3 directory.
    #[arg(long)]
    pub model: PathBuf,
    /// HTTP address of the frontend's OpenAI API.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Each worker keeps its store under `<data-dir>/<worker name>`.
    #[arg(long, default_value = "tierkv-data/cluster")]
    pub data_dir: PathBuf,
    /// Engine configuration file given to every worker (`[engine]`, `[disagg]`,
    /// `[store]`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: Option<u32>,
    /// Routing policy: round-robin or kv-aware.
    #[arg(long, default_value = "kv-aware")]
    pub router: Policy,
    /// Decode workers prefill remotely when at least this many prompt tokens are
    /// uncached.
    #[arg(long)]
    pub remote_prefill_min_tokens: Option<usize>,
}

struct Worker {
    spec: WorkerSpec,
    child: Child,
}

/// Starts one worker and waits until it printed where it listens.
async fn spawn_worker(args: &UpArgs, role: Role, name: String) -> anyhow::Result<Worker> {
    let exe = std::env::current_exe().context("finding the tierkv binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("engine")
        .arg("--model")
        .arg(&args.model)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--block-service-listen",
            "127.0.0.1:0",
        ])
        .args(["--role", role.as_str(), "--name", &name])
        .arg("--data-dir")
        .arg(args.data_dir.join(&name));
    if let Some(c) = &args.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(b) = args.block_size {
        cmd.args(["--block-size", &b.to_string()]);
    }
    if let Some(n) = args.remote_prefill_min_tokens {
        cmd.args(["--remote-prefill-min-tokens", &n.to_string()]);
    }
    cmd.stdout(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut http, mut blocks) = (None, None);
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("tierkv engine: block service on ") {
                blocks = Some(rest.trim().to_string());
            } else if let Some(rest) = line.split(" on http://").nth(1) {
                http = rest.split('/').next().map(|a| format!("http://{a}"));
            }
            if http.is_some() && blocks.is_some() {
                return Ok::<_, std::io::Error>(true);
            }
        }
        Ok(false)
    };
    let ready = tokio::time::timeout(Duration::from_secs(300), read).await;
    if !matches!(ready, Ok(Ok(true))) {
        bail!("{name} did not start (see its log above)");
    }
    // Keep draining its stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (Some(http), blocks) = (http, blocks) else {
        bail!("{name} did not say where it listens");
    };
    Ok(Worker {
        spec: WorkerSpec {
            name,
            role,
            http,
            blocks,
        },
        child,
    })
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

async fn stop_all(workers: &mut [Worker]) {
    for w in workers.iter() {
        terminate(&w.child);
    }
    for w in workers.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(worker = %w.spec.name, "did not stop in 10 s; killing it");
                let _ = w.child.kill().await;
            }
        }
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.decode + args.aggregated == 0 {
        bail!("--decode (or --aggregated) must be at least 1: those workers serve the requests");
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
    let mut workers = Vec::new();
    for (role, name) in plan {
        match spawn_worker(&args, role, name).await {
            Ok(w) => {
                println!(
                    "tierkv up: {} ({}) on {}/v1, block service on {}",
                    w.spec.name,
                    w.spec.role,
                    w.spec.http,
                    w.spec.blocks.as_deref().unwrap_or("-")
                );
                workers.push(w);
            }
            Err(e) => {
                stop_all(&mut workers).await;
                return Err(e);
            }
        }
    }
    let config = FrontendConfig {
        router: args.router,
        workers: workers.iter().map(|w| w.spec.clone()).collect(),
        ..FrontendConfig::default()
    };
    let served = async {
        let frontend = super::frontend::start(&args.model, None, config).await?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!(
            "tierkv up: frontend ({} prefill, {} decode, {} aggregated, {} routing) on http://{}/v1 — Ctrl-C stops everything",
            args.prefill,
            args.decode,
            args.aggregated,
            match args.router {
                Policy::KvAware => "kv-aware",
                Policy::RoundRobin => "round-robin",
            },
            listener.local_addr()?
        );
        super::frontend::serve(frontend, listener).await
    }
    .await;
    println!("tierkv up: stopping {} workers", workers.len());
    stop_all(&mut workers).await;
    served
}

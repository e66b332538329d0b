//! `tierkv up --engine vllm`: each worker is a `vllm serve` with TierkvConnector
//! (`kv_producer` for prefill, `kv_consumer` for decode, `kv_both` aggregated) and its
//! embedded store's block service on a free loopback port; the connector's
//! rendezvous file says where that is and which namespace it hashes in.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tierkv_engine::pd::Role;
use tierkv_serving::discovery::{WorkerEngine, WorkerSpec};
use tokio::process::Command;

use super::{UpArgs, Worker, free_port};
use crate::vllm_worker::{healthy, read_rendezvous, rendezvous_file, routable};

/// How long a vLLM worker may take to load the model and answer.
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// A random bearer token for the cluster's block services.
pub(super) fn cluster_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: still unique per run, though guessable; say so.
        tracing::warn!("no /dev/urandom; the cluster token is derived from the time");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The name the frontend serves the model under (its directory's name), given to
/// vLLM as `--served-model-name` and to the connector as the namespace's model id.
pub(super) fn served_name(model: &Path) -> String {
    model
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Starts every worker at once (they load in parallel) and waits for each.
pub(super) async fn spawn_all(
    args: &UpArgs,
    plan: Vec<(Role, String)>,
    token: Option<&str>,
    workers: &mut Vec<Worker>,
) -> anyhow::Result<()> {
    if !args.model.is_dir() {
        bail!(
            "--engine vllm needs a Hugging Face model directory, not {}",
            args.model.display()
        );
    }
    let mut pending = Vec::new();
    for (role, name) in plan {
        let (worker, rendezvous) = spawn(args, role, name, token)?;
        workers.push(worker);
        pending.push(rendezvous);
    }
    let http = reqwest::Client::new();
    for (w, file) in workers.iter_mut().zip(pending) {
        let log = args.data_dir.join(&w.spec.name).join("vllm.log");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = w.child.try_wait()? {
                bail!("{} exited ({status}); see {}", w.spec.name, log.display());
            }
            if let Some(r) = read_rendezvous(&file)?
                && healthy(&http, &w.spec.http).await
            {
                w.spec.blocks = Some(routable(&r.addr, &w.spec.http));
                w.spec.namespace = Some(r.namespace_name);
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not start within {START_TIMEOUT:?}; see {}",
                    w.spec.name,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(())
}

fn spawn(
    args: &UpArgs,
    role: Role,
    name: String,
    token: Option<&str>,
) -> anyhow::Result<(Worker, std::path::PathBuf)> {
    let dir = args.data_dir.join(&name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let rendezvous_dir = args.data_dir.join("rendezvous");
    let engine_id = format!("tierkv-up-{name}");
    let file = rendezvous_file(&rendezvous_dir, &engine_id);
    // A file left by an earlier run would name a block service that is gone.
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
    }
    let store = match &args.config {
        Some(path) => json!(path.to_string_lossy()),
        None => json!({ "data_dir": dir.join("store").to_string_lossy() }),
    };
    let kv_role = match role {
        Role::Prefill => "kv_producer",
        Role::Decode => "kv_consumer",
        Role::Aggregated => "kv_both",
    };
    let model_id = served_name(&args.model);
    let transfer = json!({
        "kv_connector": "TierkvConnector",
        "kv_connector_module_path": "tierkv.vllm",
        "kv_role": kv_role,
        "engine_id": engine_id,
        "kv_connector_extra_config": {
            "config": store,
            "rendezvous_dir": rendezvous_dir.to_string_lossy(),
            "serve_addr": "127.0.0.1:0",
            "model_id": model_id,
        },
    });
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("vllm.log")).context("vLLM log file")?;
    let python = args.python.as_deref().unwrap_or(Path::new("python3"));
    let mut cmd = Command::new(python);
    cmd.args(["-m", "vllm.entrypoints.openai.api_server", "--model"])
        .arg(&args.model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--served-model-name", &model_id])
        .arg("--enable-prompt-tokens-details")
        .arg("--kv-transfer-config")
        .arg(transfer.to_string())
        .args(args.vllm_args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("vLLM log file")?)
        .stderr(log)
        .kill_on_drop(true);
    if let Some(t) = token {
        // The connector's default token; kept off the command line.
        cmd.env("TIERKV_TOKEN", t);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {name} with {}", python.display()))?;
    let spec = WorkerSpec {
        name,
        role,
        http: format!("http://127.0.0.1:{port}"),
        blocks: None,
        engine: WorkerEngine::Vllm,
        namespace: None,
    };
    Ok((Worker { spec, child }, file))
}

//! `tierkv up --engine tierkv`: each worker is a `tierkv engine` child process.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tierkv_engine::pd::Role;
use tierkv_serving::discovery::WorkerSpec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::{UpArgs, Worker};

/// Starts one worker and waits until it printed where it listens.
pub(super) async fn spawn_worker(
    args: &UpArgs,
    role: Role,
    name: String,
) -> anyhow::Result<Worker> {
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
        spec: WorkerSpec::tierkv(name, role, http, blocks),
        child,
    })
}

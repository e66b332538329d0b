//! `tierkv up --start-etcd`: a single-member etcd (the `etcd` binary, Debian's
//! `etcd-server`) on free loopback ports, for the cluster's discovery.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use super::free_port;

/// Starts etcd with its data in `dir` and waits until it answers; its client URL.
pub(super) async fn start(dir: &Path) -> anyhow::Result<(Child, String)> {
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = std::fs::File::create(dir.join("etcd.log")).context("etcd log")?;
    let mut child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--name", "tierkv-up"])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tierkv-up={peer_url}")])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting etcd (apt-get install etcd-server)")?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "etcd exited ({status}); see {}",
                dir.join("etcd.log").display()
            );
        }
        let ok = http
            .get(format!("{url}/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("etcd did not answer within 30 s")
}

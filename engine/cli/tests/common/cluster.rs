//! Processes of a test cluster: `tierkv engine` workers, `tierkv frontend`, etcd; and
//! a small HTTP client for them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{model_path, repo_root};

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// Lines of its stdout.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            name: name.to_string(),
            child: Some(child),
            lines: rx,
        }
    }

    /// The first stdout line containing `needle` (waits up to 120 s).
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("{} never printed {needle:?}: {e}", self.name),
            }
        }
    }

    /// SIGKILL: the process dies at once, mid-request.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `tierkv engine`.
pub struct WorkerProc {
    pub proc: Proc,
    pub name: String,
    pub role: String,
    pub http: String,
    pub blocks: String,
}

/// Engine configuration for test workers: a small pool, one compute thread (several
/// processes share two cores), a host-only store.
pub fn write_worker_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        "[engine]\nkv_pool = \"128MiB\"\nthreads = 1\n[store]\n[[store.tier]]\nkind = \"host\"\ncapacity = \"128MiB\"\nprefault = false\n",
    )
    .expect("worker config");
    path
}

/// Starts a worker; `extra` are more `tierkv engine` arguments.
pub fn worker(dir: &Path, role: &str, name: &str, extra: &[&str]) -> WorkerProc {
    worker_env(dir, role, name, extra, &[])
}

/// [`worker`] with environment variables `env`.
pub fn worker_env(
    dir: &Path,
    role: &str,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> WorkerProc {
    let config = write_worker_config(dir);
    let proc = Proc::spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_tierkv"))
            .envs(env.iter().copied())
            .args(["engine", "--listen", "127.0.0.1:0"])
            .args(["--block-service-listen", "127.0.0.1:0"])
            .args(["--role", role, "--name", name])
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(model_path())
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(extra),
    );
    let blocks = proc
        .wait_line("block service on ")
        .rsplit(' ')
        .next()
        .expect("address")
        .to_string();
    let line = proc.wait_line(" on http://");
    let addr = line
        .split(" on http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("http address");
    WorkerProc {
        proc,
        name: name.to_string(),
        role: role.to_string(),
        http: format!("http://{addr}"),
        blocks,
    }
}

/// Starts a frontend listing `workers`, with `extra` arguments; returns it and its URL.
pub fn frontend(
    dir: &Path,
    router: &str,
    workers: &[&WorkerProc],
    extra: &[&str],
) -> (Proc, String) {
    frontend_env(dir, router, workers, extra, &[])
}

/// [`frontend`] with environment variables `env`.
pub fn frontend_env(
    dir: &Path,
    router: &str,
    workers: &[&WorkerProc],
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Proc, String) {
    let mut toml = format!("[frontend]\nrouter = \"{router}\"\nload_poll_ms = 100\n");
    for w in workers {
        toml.push_str(&format!(
            "[[frontend.workers]]\nname = \"{}\"\nrole = \"{}\"\nhttp = \"{}\"\nblocks = \"{}\"\n",
            w.name, w.role, w.http, w.blocks
        ));
    }
    let path = dir.join("frontend.toml");
    std::fs::write(&path, toml).expect("frontend config");
    let proc = Proc::spawn(
        "frontend",
        Command::new(env!("CARGO_BIN_EXE_tierkv"))
            .envs(env.iter().copied())
            .args(["frontend", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--model")
            .arg(model_path())
            .args(extra),
    );
    let url = base_url(&proc.wait_line(" on http://"));
    (proc, url)
}

/// `http://host:port` from a banner line such as "... on http://host:port/v1 ...".
pub fn base_url(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches("/v1")
        .to_string()
}

pub fn model_id() -> String {
    model_path()
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned()
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real etcd on 127.0.0.1 (Debian's `etcd-server`); returns it and its client URL.
pub fn etcd(dir: &Path) -> (Proc, String) {
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let proc = Proc::spawn(
        "etcd",
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--name", "tierkv-test"])
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("tierkv-test=http://127.0.0.1:{peer}"),
            ])
            .args(["--log-level", "error"]),
    );
    // Ready when it answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(out) = Command::new("curl")
            .args(["-sf", &format!("{url}/health")])
            .output()
            && out.status.success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (proc, url)
}

/// A completion result: text, the worker that served it, usage.
#[derive(Debug)]
pub struct Completion {
    pub text: String,
    pub worker: Option<String>,
    pub usage: Value,
}

/// Greedy completion of `prompt` (token ids), `max_tokens` tokens, end-of-sequence
/// ignored.
pub fn complete(base: &str, prompt: &[u32], max_tokens: usize) -> Completion {
    complete_as(None, base, prompt, max_tokens)
}

/// [`complete`] presenting `api_key` (none: no `Authorization` header).
pub fn complete_as(
    api_key: Option<&str>,
    base: &str,
    prompt: &[u32],
    max_tokens: usize,
) -> Completion {
    let body = json!({
        "model": model_id(),
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": true,
    });
    let auth = api_key.map_or(String::new(), |k| format!("authorization: Bearer {k}"));
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-H", "content-type: application/json"])
        .args(if api_key.is_some() {
            vec!["-H", auth.as_str()]
        } else {
            vec![]
        })
        .args(["--max-time", "300", "-d", &body.to_string()])
        .arg(format!("{base}/v1/completions"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, json_body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "request failed: {head}\n{json_body}"
    );
    let worker = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("x-tierkv-worker:")
            .map(|v| v.trim().to_string())
    });
    let v: Value = serde_json::from_str(json_body).unwrap_or_else(|e| panic!("{e}: {json_body}"));
    Completion {
        text: v["choices"][0]["text"].as_str().expect("text").to_string(),
        worker,
        usage: v["usage"].clone(),
    }
}

/// The value of a Prometheus sample (sum over label sets matching `labels`).
pub fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", &format!("{base}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            (rest.starts_with('{') || rest.starts_with(' ')) && rest.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` every 100 ms for up to `secs`.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn repo() -> std::path::PathBuf {
    repo_root()
}

/// The HTTP status of `method path` on `base`, presenting `api_key` if given.
pub fn http_status(method: &str, base: &str, path: &str, api_key: Option<&str>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
    if method == "POST" {
        cmd.args(["-H", "content-type: application/json", "-d", "{}"]);
    }
    if let Some(k) = api_key {
        cmd.args(["-H", &format!("authorization: Bearer {k}")]);
    }
    let out = cmd.arg(format!("{base}{path}")).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("curl {method} {base}{path}: {e}"))
}

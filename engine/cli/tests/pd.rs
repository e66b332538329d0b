//! Prefill/decode disaggregation with real processes on 127.0.0.1 and the default
//! model: a 2P1D cluster gives the same greedy tokens as one aggregated engine with
//! blocks really fetched across processes; kv-aware routing sends a repeated prompt to
//! the worker holding its blocks; killing a prefill worker loses no request; a decode
//! worker dying mid-stream gives the client an error event; a worker registered in etcd
//! starts receiving requests, and stops when it leaves.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;

/// Prompts in token ids: mixed lengths over the remote-prefill threshold (40), one
/// under it, one not a multiple of the block size.
fn prompts() -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for (i, &len) in [33usize, 90, 130, 161, 200, 77].iter().enumerate() {
        // Distinct token streams: no prompt is a prefix of another.
        out.push(
            (0..len)
                .map(|k| 200 + ((k * 7 + i * 131 + k * k % 13) % 9000) as u32)
                .collect(),
        );
    }
    out
}

const MIN_REMOTE: &str = "40";
const TOKENS: usize = 12;

#[test]
fn two_prefill_one_decode_matches_an_aggregated_engine_and_survives_a_dead_prefill_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = worker(dir.path(), "aggregated", "reference", &[]);
    let p0 = worker(dir.path(), "prefill", "prefill-0", &[]);
    let mut p1 = worker(dir.path(), "prefill", "prefill-1", &[]);
    let d0 = worker(
        dir.path(),
        "decode",
        "decode-0",
        &["--remote-prefill-min-tokens", MIN_REMOTE],
    );
    let (_fe, url) = frontend(dir.path(), "kv-aware", &[&p0, &p1, &d0], &[]);

    let prompts = prompts();
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| complete(&reference.http, p, TOKENS).text)
        .collect();
    for (p, want) in prompts.iter().zip(&expected) {
        let got = complete(&url, p, TOKENS);
        assert_eq!(&got.text, want, "prompt of {} tokens", p.len());
        assert_eq!(got.worker.as_deref(), Some("decode-0"));
        if p.len() >= 40 {
            // Every full block came from a prefill worker's store.
            let cached = got.usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .expect("cached_tokens");
            assert_eq!(cached as usize, p.len() / 16 * 16, "usage {}", got.usage);
        }
    }
    let remote = metric(
        &d0.http,
        "tierkv_engine_prefill_decisions_total",
        "decision=\"remote\"",
    );
    let long = prompts.iter().filter(|p| p.len() >= 40).count();
    assert_eq!(remote as usize, long, "decode-0 prefilled remotely");
    assert_eq!(
        metric(
            &d0.http,
            "tierkv_engine_prefill_decisions_total",
            "decision=\"local_short\""
        ) as usize,
        prompts.len() - long
    );
    let fetched = metric(&d0.http, "tierkv_engine_peer_blocks_fetched_total", "");
    let expected_blocks: usize = prompts
        .iter()
        .filter(|p| p.len() >= 40)
        .map(|p| p.len() / 16)
        .sum();
    assert_eq!(
        fetched as usize, expected_blocks,
        "blocks fetched across processes"
    );
    assert!(metric(&d0.http, "tierkv_engine_peer_bytes_fetched_total", "") > 0.0);
    let served = metric(&p0.http, "tierkv_engine_prefills_served_total", "")
        + metric(&p1.http, "tierkv_engine_prefills_served_total", "");
    assert_eq!(
        served as usize, long,
        "the prefill workers computed those prompts"
    );

    // Kill a prefill worker while requests run: every request still succeeds with
    // the same tokens (the decode worker falls back to the other or to itself).
    let fresh: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| p.iter().map(|t| t + 1).collect())
        .collect();
    let expected: Vec<String> = fresh
        .iter()
        .map(|p| complete(&reference.http, p, TOKENS).text)
        .collect();
    let handles: Vec<_> = fresh
        .iter()
        .cloned()
        .map(|p| {
            let url = url.clone();
            std::thread::spawn(move || complete(&url, &p, TOKENS).text)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    p1.proc.kill();
    for (h, want) in handles.into_iter().zip(&expected) {
        assert_eq!(&h.join().expect("request thread"), want);
    }
    // The worker died with prefills in flight: those fell back to local prefill.
    let fallback = metric(
        &d0.http,
        "tierkv_engine_prefill_decisions_total",
        "decision=\"fallback\"",
    );
    assert!(fallback >= 1.0, "no prefill was cut off by the kill");
    // And after: prefill-1 is gone for good.
    let again: Vec<u32> = fresh[4].iter().map(|t| t + 1).collect();
    assert_eq!(
        complete(&url, &again, TOKENS).text,
        complete(&reference.http, &again, TOKENS).text
    );
}

#[test]
fn kv_aware_routing_sends_a_repeated_prompt_to_the_worker_holding_its_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = worker(dir.path(), "decode", "decode-a", &[]);
    let b = worker(dir.path(), "decode", "decode-b", &[]);
    let (fe, url) = frontend(dir.path(), "kv-aware", &[&a, &b], &[]);
    let prompts = prompts();
    let first: Vec<String> = prompts[1..4]
        .iter()
        .map(|p| complete(&url, p, 4).worker.expect("worker header"))
        .collect();
    // Both workers got some of the first requests (equal cost: they take turns).
    assert!(first.iter().collect::<HashSet<_>>().len() == 2, "{first:?}");
    // Wait until the router's index has seen the blocks of all three.
    let blocks: usize = prompts[1..4].iter().map(|p| p.len() / 16).sum();
    eventually(30, "the router's index", || {
        metric(&url, "tierkv_frontend_index_blocks", "") as usize >= blocks
    });
    for _ in 0..2 {
        for (p, w) in prompts[1..4].iter().zip(&first) {
            let got = complete(&url, p, 4);
            assert_eq!(got.worker.as_ref(), Some(w), "prompt of {} tokens", p.len());
        }
    }
    // A burst of new prompts arriving together spreads over both workers (the router
    // counts each choice at once instead of waiting for the workers' next report).
    let burst: Vec<_> = (0..4u32)
        .map(|i| {
            let (url, p): (String, Vec<u32>) =
                (url.clone(), (0..64).map(|k| 5000 + i * 97 + k).collect());
            std::thread::spawn(move || complete(&url, &p, 8).worker.expect("worker"))
        })
        .collect();
    let served: Vec<String> = burst
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    assert_eq!(
        served.iter().filter(|w| *w == "decode-a").count(),
        2,
        "{served:?}"
    );
    drop(fe);
}

#[test]
fn a_decode_worker_dying_mid_stream_gives_the_client_an_error_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = worker(dir.path(), "decode", "decode-0", &[]);
    let (_fe, url) = frontend(dir.path(), "round-robin", &[&d], &[]);
    let body = serde_json::json!({
        "model": model_id(), "prompt": prompts()[2], "max_tokens": 2000,
        "temperature": 0, "ignore_eos": true, "stream": true,
    });
    let mut curl = Command::new("curl")
        .args([
            "-sN",
            "--max-time",
            "120",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", &body.to_string()])
        .arg(format!("{url}/v1/completions"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut out = curl.stdout.take().expect("stdout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Wait for some tokens, then kill the worker.
    while String::from_utf8_lossy(&seen)
        .matches("data: ")
        .nth(3)
        .is_none()
    {
        let n = out.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let killed = Instant::now();
    d.proc.kill();
    out.read_to_end(&mut seen).expect("read rest");
    let status = curl.wait().expect("curl exit");
    let text = String::from_utf8_lossy(&seen);
    assert!(status.success(), "curl failed (timeout?): {status}");
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "the stream hung"
    );
    assert!(
        text.contains("\"error\"") && text.contains("decode-0"),
        "no error event: {text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn a_worker_registered_in_etcd_joins_and_leaves_while_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_etcd, etcd_url) = etcd(dir.path());
    let reg = ["--etcd", etcd_url.as_str()];
    let a = worker(dir.path(), "decode", "decode-a", &reg);
    let (_fe, url) = frontend(dir.path(), "round-robin", &[], &reg);
    let prompt = &prompts()[0];
    eventually(60, "decode-a to join", || {
        metric(&url, "tierkv_frontend_workers", "role=\"decode\"") == 1.0
    });
    assert_eq!(
        complete(&url, prompt, 2).worker.as_deref(),
        Some("decode-a")
    );
    // A second worker registers: round-robin starts sending it requests.
    let mut b = worker(dir.path(), "decode", "decode-b", &reg);
    eventually(60, "decode-b to join", || {
        metric(&url, "tierkv_frontend_workers", "role=\"decode\"") == 2.0
    });
    let served: HashSet<String> = (0..4)
        .map(|_| complete(&url, prompt, 2).worker.expect("worker"))
        .collect();
    assert!(
        served.contains("decode-b") && served.contains("decode-a"),
        "{served:?}"
    );
    // It leaves cleanly (revoking its lease): requests go to decode-a only.
    b.proc.terminate();
    eventually(30, "decode-b to leave", || {
        metric(&url, "tierkv_frontend_workers", "role=\"decode\"") == 1.0
    });
    for _ in 0..3 {
        assert_eq!(
            complete(&url, prompt, 2).worker.as_deref(),
            Some("decode-a")
        );
    }
    drop(a);
}

#[test]
fn tierkv_up_starts_a_cluster_that_serves_and_stops_it_all_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_worker_config(dir.path());
    let mut up = Proc::spawn(
        "tierkv up",
        Command::new(env!("CARGO_BIN_EXE_tierkv"))
            .args([
                "up",
                "--prefill",
                "1",
                "--decode",
                "1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--remote-prefill-min-tokens", MIN_REMOTE])
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(common::model_path())
            .arg("--data-dir")
            .arg(dir.path().join("cluster")),
    );
    let mut workers = Vec::new();
    for name in ["prefill-0", "decode-0"] {
        let line = up.wait_line(&format!("tierkv up: {name} "));
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .expect("address")
            .to_string();
        workers.push(addr);
    }
    let url = base_url(&up.wait_line("tierkv up: frontend"));
    let p = &prompts()[2];
    let got = complete(&url, p, 4);
    assert_eq!(got.worker.as_deref(), Some("decode-0"));
    assert_eq!(
        metric(
            &format!("http://{}", workers[1]),
            "tierkv_engine_prefill_decisions_total",
            "decision=\"remote\""
        ),
        1.0,
        "the decode worker used the prefill worker"
    );
    up.terminate();
    for w in &workers {
        assert!(
            std::net::TcpStream::connect(w).is_err(),
            "worker {w} still listens after tierkv up stopped"
        );
    }
}

#[test]
fn api_keys_close_every_route_but_health_and_workers_present_them_to_each_other() {
    const KEY: &str = "api-key-for-the-cluster";
    const BLOCKS: &str = "block-token-of-the-cluster";
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("TIERKV_TOKEN", BLOCKS)];
    let keyed = ["--api-key", KEY, "--public-metrics"];
    let p0 = worker_env(dir.path(), "prefill", "prefill-0", &keyed, &env);
    let mut decode_args = keyed.to_vec();
    decode_args.extend(["--remote-prefill-min-tokens", MIN_REMOTE]);
    let d0 = worker_env(dir.path(), "decode", "decode-0", &decode_args, &env);
    let (_fe, url) = frontend_env(
        dir.path(),
        "kv-aware",
        &[&p0, &d0],
        &["--api-key", KEY],
        &env,
    );

    // A worker: only /health (and /metrics, made public) answer without the key.
    for (method, path) in [
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/reset_prefix_cache"),
        ("GET", "/internal/info"),
        ("GET", "/internal/load"),
        ("POST", "/internal/prefill"),
    ] {
        assert_eq!(http_status(method, &p0.http, path, None), 401, "{path}");
        assert_eq!(
            http_status(method, &p0.http, path, Some("wrong-key")),
            401,
            "{path}"
        );
    }
    assert_eq!(http_status("GET", &p0.http, "/health", None), 200);
    assert_eq!(http_status("GET", &p0.http, "/metrics", None), 200);
    assert_eq!(http_status("GET", &p0.http, "/v1/models", Some(KEY)), 200);
    // The frontend: the same, and its /metrics is not public.
    assert_eq!(http_status("GET", &url, "/v1/models", None), 401);
    assert_eq!(http_status("GET", &url, "/metrics", None), 401);
    assert_eq!(http_status("GET", &url, "/health", None), 200);

    // Through the frontend with the key: the frontend presents it to the workers, the
    // decode worker to the prefill worker's API and (with the token) its block service.
    let long = &prompts()[2];
    let got = complete_as(Some(KEY), &url, long, TOKENS);
    assert_eq!(got.worker.as_deref(), Some("decode-0"));
    assert_eq!(
        got.text,
        complete_as(Some(KEY), &p0.http, long, TOKENS).text,
        "the same tokens as an engine computing it alone"
    );
    assert_eq!(
        metric(
            &d0.http,
            "tierkv_engine_prefill_decisions_total",
            "decision=\"remote\""
        ),
        1.0
    );
    assert_eq!(
        metric(&d0.http, "tierkv_engine_peer_blocks_fetched_total", "") as usize,
        long.len() / 16,
        "every full block fetched from the prefill worker's block service"
    );

    // Off loopback without credentials, a worker refuses to start.
    let out = Command::new(env!("CARGO_BIN_EXE_tierkv"))
        .args(["engine", "--listen", "0.0.0.0:0", "--model"])
        .arg(common::model_path())
        .arg("--data-dir")
        .arg(dir.path().join("open"))
        .env_remove("TIERKV_TOKEN")
        .env_remove("TIERKV_API_KEY")
        .output()
        .expect("tierkv engine");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve") && err.contains("--api-key"),
        "{err}"
    );
}

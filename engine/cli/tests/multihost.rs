//! A 2P1D cluster across real network interfaces: etcd, the frontend and each worker
//! in its own network namespace, with its own address on a bridge (veth pairs into a
//! hub namespace), so the block service, discovery and routing cross interfaces by
//! address, never 127.0.0.1. The cluster answers like an aggregated worker; a prefill
//! host cut off mid-run (its link down) loses no request, its lease expires in etcd and
//! the frontend stops routing to it; with the link back it rejoins; a degraded link
//! (`tc netem` delay and loss, or a `tbf` rate limit where the kernel lacks netem) is
//! reported with what it costs.
//!
//! Needs root (CAP_NET_ADMIN) for `ip netns`; without it the test says so and stops.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::model_path;

/// The namespaces and links of one test; removed when dropped (after the processes).
struct Net {
    id: String,
    subnet: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    fn hub(&self) -> String {
        format!("tkv{}hub", self.id)
    }

    fn ns(&self, host: &str) -> String {
        format!("tkv{}{host}", self.id)
    }

    fn addr(&self, n: u8) -> String {
        format!("{}.{n}", self.subnet)
    }

    /// The hub with its bridge, and a link from this (the root) namespace to it.
    fn new() -> Result<Net, String> {
        let pid = std::process::id();
        let net = Net {
            id: format!("{}", pid % 10000),
            subnet: format!("10.213.{}", pid % 250),
            hosts: Vec::new(),
        };
        let hub = net.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let (root, peer) = (format!("tkv{}r", net.id), format!("tkv{}rp", net.id));
        ip(&["link", "add", &root, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &peer, "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", net.addr(1)), "dev", &root])?;
        ip(&["link", "set", &root, "up"])?;
        Ok(net)
    }

    /// A host `name` with address `.n`: its namespace and its link to the bridge
    /// (named `name` on the hub's side).
    fn host(&mut self, name: &str, n: u8) -> Result<String, String> {
        let (ns, hub) = (self.ns(name), self.hub());
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let (a, b) = (
            format!("tkv{}{name}", self.id),
            format!("tkv{}{name}x", self.id),
        );
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        ip(&["link", "set", &a, "netns", &ns])?;
        ip(&["link", "set", &b, "netns", &hub])?;
        ip(&["-n", &hub, "link", "set", &b, "name", name])?;
        ip(&["-n", &hub, "link", "set", name, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", &a, "name", "eth0"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.addr(n)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The host's link, seen from the bridge: down cuts it off, up restores it.
    fn link(&self, name: &str, up: bool) {
        ip(&[
            "-n",
            &self.hub(),
            "link",
            "set",
            name,
            if up { "up" } else { "down" },
        ])
        .expect("link");
    }

    /// Degrades the host's link: 5 ms delay and 1% loss (`netem`) where the kernel
    /// has it, else a 100 Mbit/s rate limit (`tbf`). Returns what was applied.
    fn degrade(&self, name: &str) -> &'static str {
        let tc = |spec: &[&str]| {
            Command::new("tc")
                .args(["-n", &self.hub(), "qdisc", "replace", "dev", name, "root"])
                .args(spec)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if tc(&["netem", "delay", "5ms", "1ms", "loss", "1%"]) {
            return "5 ms delay + 1% loss (netem)";
        }
        assert!(
            tc(&[
                "tbf", "rate", "100mbit", "burst", "32kbit", "latency", "50ms"
            ]),
            "neither netem nor tbf works on {name}"
        );
        "a 100 Mbit/s rate limit (tbf; this kernel has no netem)"
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.hub())) {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &format!("tkv{}r", self.id)]);
    }
}

/// `tierkv` (or another program) in namespace `ns`.
fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn worker_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("net-worker.toml");
    std::fs::write(
        &path,
        "[engine]\nkv_pool = \"128MiB\"\nthreads = 1\n\
         [disagg]\nremote_prefill_min_tokens = 40\nprefill_timeout_ms = 4000\n\
         [store]\n[[store.tier]]\nkind = \"host\"\ncapacity = \"128MiB\"\nprefault = false\n",
    )
    .expect("config");
    path
}

fn engine_in(
    net: &mut Net,
    dir: &std::path::Path,
    role: &str,
    name: &str,
    n: u8,
    etcd: &str,
) -> (Proc, String) {
    let ns = net.host(name, n).expect("host");
    let a = net.addr(n);
    let proc = Proc::spawn(
        name,
        in_ns(&ns, env!("CARGO_BIN_EXE_tierkv"))
            // An isolated test network: no credentials (the auth model is tested
            // in pd.rs).
            .args(["engine", "--insecure", "--listen", &format!("{a}:8000")])
            .args(["--block-service-listen", &format!("{a}:7070")])
            .args(["--role", role, "--name", name, "--advertise-host", &a])
            .args(["--etcd", etcd])
            .arg("--config")
            .arg(worker_config(dir))
            .arg("--model")
            .arg(model_path())
            .arg("--data-dir")
            .arg(dir.join(name)),
    );
    proc.wait_line(" on http://");
    (proc, format!("http://{a}:8000"))
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|k| 300 + ((k * 11 + i * 97 + k * k % 17) % 8000) as u32)
        .collect()
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn a_2p1d_cluster_across_network_namespaces_survives_a_cut_off_prefill_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = match Net::new() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not available here ({e}); run as root");
            return;
        }
    };
    // etcd on its own host.
    let etcd_ns = net.host("etcd", 2).expect("etcd host");
    let etcd_url = format!("http://{}:2379", net.addr(2));
    let _etcd = Proc::spawn(
        "etcd",
        in_ns(&etcd_ns, "etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--name", "net-etcd", "--log-level", "error"])
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://{}:2380", net.addr(2)),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}:2380", net.addr(2)),
            ])
            .args([
                "--initial-cluster",
                &format!("net-etcd=http://{}:2380", net.addr(2)),
            ]),
    );
    eventually(30, "etcd", || {
        Command::new("curl")
            .args(["-sf", &format!("{etcd_url}/health")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let reference = worker(dir.path(), "aggregated", "reference", &[]);
    let (_p0, p0_url) = engine_in(&mut net, dir.path(), "prefill", "p0", 10, &etcd_url);
    let (_p1, p1_url) = engine_in(&mut net, dir.path(), "prefill", "p1", 11, &etcd_url);
    let (_d0, d0_url) = engine_in(&mut net, dir.path(), "decode", "d0", 20, &etcd_url);
    let fe_ns = net.host("fe", 3).expect("frontend host");
    let fe_url = format!("http://{}:8000", net.addr(3));
    let fe = Proc::spawn(
        "frontend",
        in_ns(&fe_ns, env!("CARGO_BIN_EXE_tierkv"))
            .args(["frontend", "--insecure"])
            .args(["--listen", &format!("{}:8000", net.addr(3))])
            .args(["--router", "kv-aware", "--etcd", &etcd_url])
            .arg("--model")
            .arg(model_path()),
    );
    fe.wait_line(" on http://");
    let workers = |role: &str| {
        metric(
            &fe_url,
            "tierkv_frontend_workers",
            &format!("role=\"{role}\""),
        )
    };
    eventually(60, "every worker to register", || {
        workers("prefill") == 2.0 && workers("decode") == 1.0
    });

    // Answers like an aggregated worker, with the prompt's blocks fetched from a
    // prefill host's block service across the bridge.
    let tokens = 8;
    for i in 0..4 {
        let p = prompt(i, 96 + 16 * i);
        let got = complete(&fe_url, &p, tokens);
        assert_eq!(
            got.text,
            complete(&reference.http, &p, tokens).text,
            "prompt {i}"
        );
        assert_eq!(got.worker.as_deref(), Some("d0"));
    }
    let remote = metric(
        &d0_url,
        "tierkv_engine_prefill_decisions_total",
        "decision=\"remote\"",
    );
    assert_eq!(remote, 4.0, "the decode host prefilled remotely");
    assert!(metric(&d0_url, "tierkv_engine_peer_bytes_fetched_total", "") > 0.0);

    // Cut p0 off mid-run: every request still completes with the reference tokens.
    let fresh: Vec<Vec<u32>> = (10..16).map(|i| prompt(i, 120)).collect();
    let want: Vec<String> = fresh
        .iter()
        .map(|p| complete(&reference.http, p, tokens).text)
        .collect();
    let running: Vec<_> = fresh
        .iter()
        .cloned()
        .map(|p| {
            let url = fe_url.clone();
            std::thread::spawn(move || complete(&url, &p, tokens).text)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    net.link("p0", false);
    for (h, w) in running.into_iter().zip(&want) {
        assert_eq!(&h.join().expect("request"), w, "a request during the cut");
    }
    // Its lease expires in etcd and the frontend stops routing to it.
    eventually(60, "p0's lease to expire", || workers("prefill") == 1.0);
    let served_p1 = metric(&p1_url, "tierkv_engine_prefills_served_total", "");
    for i in 20..23 {
        let p = prompt(i, 112);
        assert_eq!(
            complete(&fe_url, &p, tokens).text,
            complete(&reference.http, &p, tokens).text
        );
    }
    assert_eq!(
        metric(&p1_url, "tierkv_engine_prefills_served_total", "") - served_p1,
        3.0,
        "with p0 gone, p1 prefilled everything"
    );
    // The link back: p0 registers again and serves again.
    net.link("p0", true);
    eventually(60, "p0 to rejoin", || workers("prefill") == 2.0);
    let served_p0 = metric(&p0_url, "tierkv_engine_prefills_served_total", "");
    for i in 30..36 {
        let p = prompt(i, 112);
        assert_eq!(
            complete(&fe_url, &p, tokens).text,
            complete(&reference.http, &p, tokens).text
        );
    }
    assert!(
        metric(&p0_url, "tierkv_engine_prefills_served_total", "") > served_p0,
        "p0 serves prefills again"
    );

    // Delay and loss on the decode host's link: correct, and what it costs.
    let timed = |from: usize| -> f64 {
        median_ms(
            (from..from + 5)
                .map(|i| {
                    let p = prompt(i, 112);
                    let t0 = Instant::now();
                    complete(&fe_url, &p, tokens);
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .collect(),
        )
    };
    let clean = timed(40);
    let how = net.degrade("d0");
    let lossy = timed(50);
    for i in 60..62 {
        let p = prompt(i, 112);
        assert_eq!(
            complete(&fe_url, &p, tokens).text,
            complete(&reference.http, &p, tokens).text
        );
    }
    println!(
        "multi-host: request median {clean:.0} ms on clean links, {lossy:.0} ms with {how} on the decode host's link ({:.2}x)",
        lossy / clean
    );
    drop(fe);
}

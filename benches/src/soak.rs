//! `tierkv-bench soak`: a `tierkv serve` process under `--streams` concurrent clients
//! for `--seconds`. Most clients are well behaved (publish a block, fetch it back,
//! check it, again); some vanish mid-publish (their connection dropped with half a
//! block sent), some stall mid-publish (until the server's idle deadline cuts them) and
//! reconnect. Every `--sample-seconds`: the server's RSS, its open streams, the
//! well-behaved clients' operations and p99 latency, and their errors, which must stay
//! 0. Beside it, the same well-behaved load alone, without the hostile clients, for
//! the p99 ratio. Writes a table, JSON and a chart.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig, Transport};
use tierkv_proto::v1::block_service_client::BlockServiceClient;
use tierkv_proto::v1::{BlockId, PublishChunk};

use crate::plot::{Series, line_chart_or_note};
use crate::report::percentile_us;
use crate::tier::payload;

#[derive(clap::Args, Debug)]
pub(crate) struct SoakArgs {
    /// Concurrent client streams in all.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Length of the hostile run.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Length of the baseline run (well-behaved clients alone).
    #[arg(long, default_value_t = 60)]
    pub baseline_seconds: u64,
    #[arg(long, default_value_t = 5)]
    pub sample_seconds: u64,
    /// Share of the streams that vanish mid-publish, and share that stall.
    #[arg(long, default_value_t = 0.1)]
    pub vanishing: f64,
    #[arg(long, default_value_t = 0.1)]
    pub stalling: f64,
    /// Payload of each block.
    #[arg(long, default_value_t = 64 << 10)]
    pub block_bytes: usize,
    /// The server's idle deadline (what cuts stalled clients).
    #[arg(long, default_value_t = 2000)]
    pub idle_timeout_ms: u64,
    #[arg(long, default_value = "tierkv-bench-data/soak")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Chart stem (`.svg` and `.png` are written).
    #[arg(long, default_value = "benches/results/plots/soak")]
    pub chart: PathBuf,
}

struct Server {
    child: Child,
    addr: String,
    metrics: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &SoakArgs, dir: &std::path::Path) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("serve.toml");
    let slot = args.block_bytes.div_ceil(4096) * 4096;
    std::fs::write(
        &config,
        format!(
            "slot_bytes = {slot}\n[service]\nmax_concurrent_streams = {}\nidle_timeout_ms = {}\nmax_inflight_bytes = \"2GiB\"\n[[tier]]\nkind = \"host\"\ncapacity = \"512MiB\"\nprefault = false\n",
            args.streams * 2 + 64,
            args.idle_timeout_ms
        ),
    )?;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let extra = [
        "--metrics-listen".to_string(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    let (child, addr) = crate::service::spawn_serve(dir, &config, &extra, "error")?;
    Ok(Server {
        child,
        addr,
        metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
    })
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn open_streams(http: &reqwest::Client, url: &str) -> f64 {
    let Ok(r) = http.get(url).send().await else {
        return f64::NAN;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(tierkv_kvstore::metrics::OPEN_STREAMS))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// What the well-behaved clients measured since the last sample.
#[derive(Default)]
struct Window {
    latencies: std::sync::Mutex<Vec<Duration>>,
    errors: AtomicU64,
}

/// One well-behaved client: publish a block, fetch it, compare, until `stop`.
async fn good_client(
    addr: String,
    id: usize,
    block_bytes: usize,
    window: Arc<Window>,
    stop: Arc<AtomicBool>,
) {
    let mut c = BlockClientConfig::new(addr);
    c.transport = if id.is_multiple_of(2) {
        Transport::Network
    } else {
        Transport::Grpc
    };
    c.timeout = Duration::from_secs(60);
    let Ok(client) = BlockClient::new(c) else {
        window.errors.fetch_add(1, Relaxed);
        return;
    };
    let ns = format!("soak-{}", id % 8);
    let mut op = 0u64;
    while !stop.load(Relaxed) {
        let hash = ((id as u128) << 64) | u128::from(op);
        let data = payload(block_bytes, hash as u64 ^ id as u64);
        let start = Instant::now();
        let ok = match client.publish(&ns, &[(hash, data.clone())]).await {
            Ok(_) => {
                matches!(client.fetch(&ns, &[hash]).await, Ok(v) if v[0].as_ref() == Some(&data))
            }
            Err(_) => false,
        };
        if ok {
            tierkv_tiers::sync::lock(&window.latencies).push(start.elapsed());
        } else {
            window.errors.fetch_add(1, Relaxed);
        }
        op += 1;
    }
}

/// A hostile client: opens a publish stream, sends half a block, then either drops
/// the connection after a moment (`vanish`) or waits until the server cuts it; again.
async fn bad_client(
    addr: String,
    block_bytes: usize,
    vanish: bool,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicU64>,
) {
    let half = Bytes::from(vec![7u8; block_bytes / 2]);
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        let Ok(mut rpc) = BlockServiceClient::connect(format!("http://{addr}")).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let chunk = PublishChunk {
            id: Some(BlockId {
                namespace: "soak-hostile".into(),
                hash: Bytes::copy_from_slice(&n.to_be_bytes().repeat(2)),
            }),
            offset: 0,
            data: half.clone(),
            total_len: block_bytes as u64,
            crc32c: 0,
        };
        let stream = futures::StreamExt::chain(
            futures::stream::iter(vec![chunk]),
            futures::stream::pending(),
        );
        let call = rpc.publish(stream);
        if vanish {
            let _ = tokio::time::timeout(Duration::from_millis(200), call).await;
        } else if call.await.is_err() {
            cut.fetch_add(1, Relaxed);
        }
        n += 1;
    }
}

struct Sample {
    t: f64,
    rss_mib: f64,
    open_streams: f64,
    ops: usize,
    p99_ms: f64,
    errors: u64,
}

async fn phase(
    args: &SoakArgs,
    hostile: bool,
    seconds: u64,
    label: &str,
) -> anyhow::Result<(Vec<Sample>, u64)> {
    let dir = args.dir.join(label);
    let _ = std::fs::remove_dir_all(&dir);
    let server = start_server(args, &dir)?;
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let (vanishing, stalling) = if hostile {
        (
            (args.streams as f64 * args.vanishing) as usize,
            (args.streams as f64 * args.stalling) as usize,
        )
    } else {
        (0, 0)
    };
    let good = args.streams - ((args.streams as f64 * (args.vanishing + args.stalling)) as usize);
    let stop = Arc::new(AtomicBool::new(false));
    let window = Arc::new(Window::default());
    let cut = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for id in 0..good {
        tasks.push(tokio::spawn(good_client(
            server.addr.clone(),
            id,
            args.block_bytes,
            Arc::clone(&window),
            Arc::clone(&stop),
        )));
    }
    for i in 0..vanishing + stalling {
        tasks.push(tokio::spawn(bad_client(
            server.addr.clone(),
            args.block_bytes,
            i < vanishing,
            Arc::clone(&stop),
            Arc::clone(&cut),
        )));
    }
    println!(
        "{label}: {good} well-behaved, {vanishing} vanishing, {stalling} stalling clients for {seconds} s"
    );
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut total_errors = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(args.sample_seconds)).await;
        let lat = std::mem::take(&mut *tierkv_tiers::sync::lock(&window.latencies));
        let errors = window.errors.swap(0, Relaxed);
        total_errors += errors;
        let s = Sample {
            t: start.elapsed().as_secs_f64(),
            rss_mib: rss_mib(pid),
            open_streams: open_streams(&http, &server.metrics).await,
            ops: lat.len(),
            p99_ms: if lat.is_empty() {
                f64::NAN
            } else {
                percentile_us(&lat, 0.99) / 1000.0
            },
            errors,
        };
        println!(
            "{label} t={:>5.0}s rss={:>7.1} MiB open_streams={:>5} ops={:>6} p99={:>8.1} ms errors={}",
            s.t, s.rss_mib, s.open_streams, s.ops, s.p99_ms, s.errors
        );
        samples.push(s);
    }
    stop.store(true, Relaxed);
    // Stalled clients end when the server cuts them (idle deadline).
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    if hostile {
        println!(
            "{label}: the server cut {} stalled publishes",
            cut.load(Relaxed)
        );
    }
    Ok((samples, total_errors))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let (base, base_errors) = phase(&args, false, args.baseline_seconds, "baseline").await?;
    let (soak, soak_errors) = phase(&args, true, args.seconds, "soak").await?;
    let p99 = |s: &[Sample]| median(s.iter().map(|x| x.p99_ms).collect());
    let ops = |s: &[Sample]| s.iter().map(|x| x.ops).sum::<usize>();
    let rss: Vec<f64> = soak.iter().map(|s| s.rss_mib).collect();
    let (first, last, peak) = (
        rss.first().copied().unwrap_or(0.0),
        rss.last().copied().unwrap_or(0.0),
        rss.iter().copied().fold(0.0, f64::max),
    );
    println!();
    println!(
        "| run | seconds | good ops | median p99 ms (of {} s windows) | errors |",
        args.sample_seconds
    );
    println!("|---|---|---|---|---|");
    println!(
        "| well-behaved alone (baseline) | {} | {} | {:.1} | {base_errors} |",
        args.baseline_seconds,
        ops(&base),
        p99(&base)
    );
    println!(
        "| with vanishing + stalling clients | {} | {} | {:.1} | {soak_errors} |",
        args.seconds,
        ops(&soak),
        p99(&soak)
    );
    println!(
        "p99 ratio (soak / baseline): {:.2}x; server RSS first {first:.1} MiB, last {last:.1} MiB, peak {peak:.1} MiB",
        p99(&soak) / p99(&base)
    );
    if let Some(path) = &args.json {
        let rows = |s: &[Sample]| -> Vec<serde_json::Value> {
            s.iter()
                .map(|x| serde_json::json!({"t": x.t, "rss_mib": x.rss_mib, "open_streams": x.open_streams, "ops": x.ops, "p99_ms": x.p99_ms, "errors": x.errors}))
                .collect()
        };
        let doc = serde_json::json!({
            "streams": args.streams, "vanishing": args.vanishing, "stalling": args.stalling,
            "block_bytes": args.block_bytes, "idle_timeout_ms": args.idle_timeout_ms,
            "baseline": rows(&base), "soak": rows(&soak),
            "baseline_errors": base_errors, "soak_errors": soak_errors,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)?;
    }
    let series = |name: &str, f: fn(&Sample) -> f64, s: &[Sample]| Series {
        name: name.into(),
        points: s
            .iter()
            .map(|x| (x.t, f(x)))
            .filter(|p| p.1.is_finite())
            .collect(),
    };
    if let Some(parent) = args.chart.parent() {
        std::fs::create_dir_all(parent)?;
    }
    line_chart_or_note(
        &args.chart,
        "tierkv serve under vanishing and stalling clients",
        "seconds",
        "RSS MiB / open streams / p99 ms",
        &[
            series("RSS (MiB)", |x| x.rss_mib, &soak),
            series("open streams", |x| x.open_streams, &soak),
            series("well-behaved p99 (ms)", |x| x.p99_ms, &soak),
            series("baseline p99 (ms)", |x| x.p99_ms, &base),
        ],
    );
    if soak_errors + base_errors > 0 {
        bail!(
            "{} errors for well-behaved clients",
            soak_errors + base_errors
        );
    }
    Ok(())
}

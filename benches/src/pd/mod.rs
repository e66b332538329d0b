//! `tierkv-bench pd`: a concurrent workload against disaggregated clusters (xPyD) and,
//! as the baseline in the same run, aggregated clusters with the same number of worker
//! processes — all started with `tierkv up` (tierkv engines, or `--engine vllm`: vLLM
//! workers with TierkvConnector) and driven through its frontend with streaming
//! requests. Reports TTFT and inter-token latency p50/p99 and throughput, with and
//! without shared prompt prefixes, and the share of TTFT spent moving KV blocks.

mod client;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(clap::Args, Debug)]
pub(crate) struct PdArgs {
    /// The workers: tierkv or vllm (the vLLM venv of `scripts/vllm-env`).
    #[arg(long, default_value = "tierkv")]
    pub engine: String,
    /// The model (`scripts/fetch-model` prints the default's path; `--hf` the
    /// directory vLLM loads).
    #[arg(long)]
    pub model: PathBuf,
    /// vllm: arguments for every `vllm serve`.
    #[arg(
        long,
        default_value = "--dtype bfloat16 --max-model-len 4096 --enforce-eager",
        allow_hyphen_values = true
    )]
    pub vllm_args: String,
    /// Disaggregated setups as `<P>p<D>d`; each also runs an aggregated cluster of
    /// P + D workers.
    #[arg(long, value_delimiter = ',', default_value = "1p1d,2p1d")]
    pub setups: Vec<String>,
    /// Requests per workload.
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 2048)]
    pub prompt_tokens: usize,
    /// Generated tokens per request.
    #[arg(long, default_value_t = 128)]
    pub output_tokens: usize,
    /// Share of each prompt that is a prefix common to all requests in the "shared"
    /// workload.
    #[arg(long, default_value_t = 0.75)]
    pub shared_fraction: f64,
    /// Compute threads per worker process.
    #[arg(long, default_value_t = 1)]
    pub threads_per_worker: usize,
    /// Decode workers prefill remotely when at least this many tokens are uncached.
    #[arg(long, default_value_t = 256)]
    pub remote_prefill_min_tokens: usize,
    /// Routing policy of the frontend.
    #[arg(long, default_value = "kv-aware")]
    pub router: String,
    /// The `tierkv` binary. Default: beside this one.
    #[arg(long)]
    pub tierkv: Option<PathBuf>,
    #[arg(long, default_value = "target/bench/pd")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct Row {
    pub setup: String,
    pub workers: String,
    pub workload: String,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
    /// Generated tokens per second over the whole run.
    pub throughput_tps: f64,
    pub failed: usize,
    /// This row over the aggregated row with the same number of processes (1.0 for
    /// the aggregated rows themselves).
    pub ttft_p50_ratio: f64,
    pub itl_p99_ratio: f64,
    pub throughput_ratio: f64,
    /// On the decode workers: seconds spent fetching prefilled blocks from prefill
    /// workers over the seconds of time to first token (`null` without remote
    /// prefills).
    pub transfer_share_of_ttft: Option<f64>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub model: String,
    pub requests: usize,
    pub concurrency: usize,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub threads_per_worker: usize,
    pub rows: Vec<Row>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn parse_setup(s: &str) -> anyhow::Result<(usize, usize)> {
    let s = s.to_ascii_lowercase();
    let (p, d) = s
        .strip_suffix('d')
        .and_then(|x| x.split_once('p'))
        .with_context(|| format!("setup {s:?}: expected <P>p<D>d, e.g. 2p1d"))?;
    Ok((p.parse()?, d.parse()?))
}

/// Prompts of the workload: distinct token streams, or a common prefix plus a
/// distinct tail.
fn prompts(args: &PdArgs, shared: bool) -> Vec<Vec<u32>> {
    let common = if shared {
        (args.prompt_tokens as f64 * args.shared_fraction) as usize
    } else {
        0
    };
    (0..args.requests)
        .map(|r| {
            (0..args.prompt_tokens)
                .map(|k| {
                    let salt = if k < common { 0 } else { r + 1 };
                    200 + ((k * 7 + salt * 7919 + k * k % 13) % 9000) as u32
                })
                .collect()
        })
        .collect()
}

struct Cluster {
    child: tokio::process::Child,
    url: String,
    /// `/metrics` of each decode worker.
    decode_metrics: Vec<String>,
    vllm: bool,
}

/// The sum of a Prometheus histogram, `name_sum`, summed over all its series.
fn histogram_sum(text: &str, name: &str) -> f64 {
    let key = format!("{name}_sum");
    text.lines()
        .filter(|l| l.starts_with(&key))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of a Prometheus counter's samples.
fn counter(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// (seconds moving KV into decode workers, their TTFT seconds) summed over the decode
/// workers. tierkv: fetches from prefill workers. vLLM: the connector's load time
/// (loads from its own store and from prefill workers), over vLLM's own TTFT.
async fn transfer_seconds(http: &reqwest::Client, urls: &[String], vllm: bool) -> (f64, f64) {
    let (mut fetch, mut ttft) = (0.0, 0.0);
    for u in urls {
        let Ok(resp) = http.get(u).send().await else {
            continue;
        };
        let Ok(text) = resp.text().await else {
            continue;
        };
        if vllm {
            fetch += counter(&text, "tierkv_vllm_load_seconds_total")
                + counter(&text, "tierkv_vllm_peer_load_seconds_total");
            ttft += histogram_sum(&text, "vllm:time_to_first_token_seconds");
        } else {
            fetch += histogram_sum(&text, "tierkv_engine_peer_fetch_seconds");
            ttft += histogram_sum(&text, "tierkv_engine_time_to_first_token_seconds");
        }
    }
    (fetch, ttft)
}

async fn start_cluster(
    args: &PdArgs,
    tierkv: &PathBuf,
    config: &PathBuf,
    (prefill, decode, aggregated): (usize, usize, usize),
    name: &str,
) -> anyhow::Result<Cluster> {
    let data = args.dir.join(name);
    let _ = std::fs::remove_dir_all(&data);
    let vllm = args.engine == "vllm";
    let mut cmd = Command::new(tierkv);
    cmd.arg("up")
        .args(["--engine", &args.engine])
        .args(["--prefill", &prefill.to_string()])
        .args(["--decode", &decode.to_string()])
        .args(["--aggregated", &aggregated.to_string()])
        .arg("--model")
        .arg(&args.model)
        .args(["--listen", "127.0.0.1:0", "--router", &args.router])
        .arg("--data-dir")
        .arg(&data);
    if vllm {
        cmd.arg(format!("--vllm-args={}", args.vllm_args)).args([
            "--remote-prefill-min-tokens",
            &args.remote_prefill_min_tokens.to_string(),
        ]);
    } else {
        cmd.arg("--config").arg(config);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting tierkv up")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut decode_metrics = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = lines.next_line().await? {
            // "tierkv up: decode-0 (tierkv decode) on http://HOST:PORT/v1, block service on ..."
            if line.contains(" decode) on http://")
                && let Some(rest) = line.split("http://").nth(1)
            {
                let addr = rest.split('/').next().unwrap_or_default();
                decode_metrics.push(format!("http://{addr}/metrics"));
            }
            if line.starts_with("tierkv up: frontend")
                && let Some(rest) = line.split("http://").nth(1)
            {
                let addr = rest.split('/').next().unwrap_or_default().to_string();
                return Ok::<_, std::io::Error>(Some(format!("http://{addr}")));
            }
        }
        Ok(None)
    })
    .await;
    let Ok(Ok(Some(url))) = found else {
        bail!("tierkv up did not start {name}");
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Cluster {
        child,
        url,
        decode_metrics,
        vllm,
    })
}

async fn stop_cluster(mut c: Cluster) {
    if let Some(pid) = c.child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(60), c.child.wait())
        .await
        .is_err()
    {
        let _ = c.child.kill().await;
    }
}

/// TTFTs, ITLs, tokens per second, failures, and the decode workers' transfer share.
type Measured = (Vec<f64>, Vec<f64>, f64, usize, Option<f64>);

async fn measure(
    args: &PdArgs,
    cluster: &Cluster,
    model: &str,
    prompts: &[Vec<u32>],
) -> anyhow::Result<Measured> {
    let url = cluster.url.as_str();
    let http = reqwest::Client::new();
    // One warm-up request so that start-up costs stay out of the figures.
    let _ = client::stream(&http, url, model, &[300, 301, 302, 303], 2).await;
    let before = transfer_seconds(&http, &cluster.decode_metrics, cluster.vllm).await;
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in prompts {
        let (http, url, model, p, sem) = (
            http.clone(),
            url.to_string(),
            model.to_string(),
            p.clone(),
            sem.clone(),
        );
        let n = args.output_tokens;
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            client::stream(&http, &url, &model, &p, n).await
        }));
    }
    let (mut ttft, mut itl, mut tokens, mut failed) = (Vec::new(), Vec::new(), 0usize, 0);
    for t in tasks {
        match t.await {
            Ok(Ok(timing)) => {
                ttft.push(timing.ttft_ms);
                tokens += timing.tokens;
                itl.extend(timing.itl_ms);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "request failed");
                failed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "request task failed");
                failed += 1;
            }
        }
    }
    let tps = tokens as f64 / started.elapsed().as_secs_f64();
    let after = transfer_seconds(&http, &cluster.decode_metrics, cluster.vllm).await;
    let (fetch, first) = (after.0 - before.0, after.1 - before.1);
    let share = (fetch > 0.0 && first > 0.0).then(|| fetch / first);
    Ok((ttft, itl, tps, failed, share))
}

pub(crate) async fn run(args: PdArgs) -> anyhow::Result<()> {
    let tierkv = match &args.tierkv {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("bench directory")?
            .join("tierkv"),
    };
    std::fs::create_dir_all(&args.dir)?;
    let config = args.dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[engine]\nkv_pool = \"1GiB\"\nthreads = {}\nmax_running = {}\n[disagg]\nremote_prefill_min_tokens = {}\nmax_prefill_queue = {}\n[store]\n[[store.tier]]\nkind = \"host\"\ncapacity = \"2GiB\"\nprefault = false\n",
            args.threads_per_worker,
            args.concurrency.max(1),
            args.remote_prefill_min_tokens,
            args.concurrency.max(1),
        ),
    )?;
    // The name `tierkv up` serves the model under.
    let model = if args.model.is_dir() {
        args.model.file_name()
    } else {
        args.model.file_stem()
    }
    .context("model name")?
    .to_string_lossy()
    .into_owned();
    let mut rows: Vec<Row> = Vec::new();
    for setup in &args.setups {
        let (p, d) = parse_setup(setup)?;
        for shared in [false, true] {
            let workload = if shared { "shared-prefix" } else { "unique" };
            let ps = prompts(&args, shared);
            let mut pair = Vec::new();
            for (label, shape) in [
                (format!("aggregated x{}", p + d), (0, 0, p + d)),
                (format!("{p}P{d}D"), (p, d, 0)),
            ] {
                let label = format!("{} {label}", args.engine);
                eprintln!("pd: {label}, {workload} workload ...");
                let cluster = start_cluster(
                    &args,
                    &tierkv,
                    &config,
                    shape,
                    &format!("{setup}-{workload}-{}", pair.len()),
                )
                .await?;
                let result = measure(&args, &cluster, &model, &ps).await;
                stop_cluster(cluster).await;
                let (mut ttft, mut itl, tps, failed, share) = result?;
                pair.push(Row {
                    setup: label,
                    workers: format!("{} processes", p + d),
                    workload: workload.into(),
                    ttft_p50_ms: percentile(&mut ttft, 0.5),
                    ttft_p99_ms: percentile(&mut ttft, 0.99),
                    itl_p50_ms: percentile(&mut itl, 0.5),
                    itl_p99_ms: percentile(&mut itl, 0.99),
                    throughput_tps: tps,
                    failed,
                    ttft_p50_ratio: 1.0,
                    itl_p99_ratio: 1.0,
                    throughput_ratio: 1.0,
                    transfer_share_of_ttft: share,
                });
            }
            let base = pair[0].clone();
            let r = &mut pair[1];
            r.ttft_p50_ratio = r.ttft_p50_ms / base.ttft_p50_ms;
            r.itl_p99_ratio = r.itl_p99_ms / base.itl_p99_ms;
            r.throughput_ratio = r.throughput_tps / base.throughput_tps;
            rows.extend(pair);
        }
    }
    let report = Report {
        model,
        requests: args.requests,
        concurrency: args.concurrency,
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        threads_per_worker: args.threads_per_worker,
        rows,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "tierkv-bench pd: {} requests ({} in flight), {}-token prompts, {} output tokens, {} model, {} compute thread(s) per worker",
        r.requests, r.concurrency, r.prompt_tokens, r.output_tokens, r.model, r.threads_per_worker
    );
    println!(
        "| setup | workload | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tok/s | failed | TTFT p50 vs agg | ITL p99 vs agg | tok/s vs agg | block transfer / TTFT |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for x in &r.rows {
        let share = x
            .transfer_share_of_ttft
            .map_or("-".to_string(), |s| format!("{:.1}%", s * 100.0));
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.2}x | {:.2}x | {:.2}x | {share} |",
            x.setup,
            x.workload,
            x.ttft_p50_ms,
            x.ttft_p99_ms,
            x.itl_p50_ms,
            x.itl_p99_ms,
            x.throughput_tps,
            x.failed,
            x.ttft_p50_ratio,
            x.itl_p99_ratio,
            x.throughput_ratio
        );
    }
}

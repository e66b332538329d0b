//! `tierkv-bench e2e`: the engine end to end on a real model. TTFT of prompts computed
//! cold vs loaded warm from the engine's own pool, the host, disk and object tiers;
//! decode speed at 1 and N concurrent requests; llama.cpp's prompt-eval and decode
//! speed for the same model in the same run (when `llama-cpp-python` is installed).

mod llama_cpp;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tierkv_engine::metrics::EngineMetrics;
use tierkv_engine::{Engine, EngineConfig, GenEvent, GenerateRequest};
use tierkv_kvstore::{ByteSize, StoreConfig, TieredStore, hash_blocks};

#[derive(clap::Args, Debug)]
pub(crate) struct E2eArgs {
    /// The model (`scripts/fetch-model` prints the default's path).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,2048,4096")]
    pub lengths: Vec<usize>,
    /// Warm TTFT samples per prompt and tier (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Tokens generated per request in the decode rows.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Concurrent requests of the batched decode row.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Threads llama.cpp uses (the engine uses all cores).
    #[arg(long, default_value_t = 2)]
    pub llama_threads: usize,
    /// Tiers to measure warm TTFT from (the first one also runs the decode rows).
    #[arg(long, value_delimiter = ',', default_value = "host,disk,object")]
    pub tiers: Vec<String>,
    /// Skip the llama.cpp baseline.
    #[arg(long)]
    pub no_llama_cpp: bool,
    /// Working directory of the tiers.
    #[arg(long, default_value = "target/bench/e2e")]
    pub dir: PathBuf,
    /// Write the results here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug, Default, Clone)]
pub(crate) struct TtftRow {
    pub prompt_tokens: usize,
    /// Median TTFT in ms by KV source: computed (cold), engine, host, disk, object.
    pub cold_ms: f64,
    pub engine_ms: f64,
    pub host_ms: f64,
    pub disk_ms: f64,
    pub object_ms: f64,
    /// host_ms / cold_ms (target <= 0.1 at 2k tokens).
    pub host_over_cold: f64,
    /// Prompt tokens per second when computed.
    pub prefill_tps: f64,
    pub llama_cpp_prefill_tps: Option<f64>,
    pub prefill_ratio: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
pub(crate) struct DecodeRow {
    pub concurrency: usize,
    /// Generated tokens per second over all requests.
    pub tokens_per_s: f64,
    /// llama.cpp's single-stream decode speed (its Python API decodes one sequence).
    pub llama_cpp_tokens_per_s: Option<f64>,
    pub ratio: Option<f64>,
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub model: String,
    pub block_size: u32,
    pub ttft: Vec<TtftRow>,
    pub decode: Vec<DecodeRow>,
    pub llama_cpp_note: Option<String>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn store_config(
    dir: &std::path::Path,
    kind: &str,
    block_bytes: usize,
) -> anyhow::Result<StoreConfig> {
    let tier = match kind {
        "host" => "[[tier]]\nkind = \"host\"\ncapacity = \"2GiB\"\nprefault = false\n",
        "disk" => "[[tier]]\nkind = \"disk\"\ncapacity = \"2GiB\"\n",
        _ => "[[tier]]\nkind = \"object\"\ncapacity = \"8GiB\"\nlocal_dir = \"object\"\n",
    };
    let text = format!(
        "data_dir = {:?}\n{tier}",
        dir.join(kind).display().to_string()
    );
    let mut c = StoreConfig::from_toml(&text)?;
    c.slot_bytes = ByteSize((block_bytes as u64).div_ceil(4096) * 4096);
    Ok(c)
}

async fn start(args: &E2eArgs, kind: &str) -> anyhow::Result<Engine> {
    let path = args.model.clone();
    let loaded = tokio::task::spawn_blocking(move || tierkv_engine::model::load(&path)).await??;
    let config = EngineConfig {
        block_size: args.block_size,
        kv_pool: ByteSize(2 << 30),
        max_running: args.concurrency.max(16),
        max_batch_tokens: 512,
        ..EngineConfig::default()
    };
    let bytes = config.kv_layout(loaded.model.config())?.block_bytes();
    let _ = std::fs::remove_dir_all(args.dir.join(kind));
    let store = TieredStore::open(&store_config(&args.dir, kind, bytes)?).await?;
    Ok(Engine::start(
        loaded,
        store,
        config,
        Arc::new(EngineMetrics::new()),
    )?)
}

/// Times to the first and to the last token, and tokens generated.
async fn timed(
    engine: &Engine,
    req: GenerateRequest,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let t0 = Instant::now();
    let mut rx = engine.generate(req).await?;
    let (mut first, mut n) = (None, 0);
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Admitted(_) | GenEvent::Published(_) => {}
            GenEvent::Token(_) => {
                n += 1;
                first.get_or_insert_with(|| t0.elapsed());
            }
            GenEvent::Finished { .. } => break,
            GenEvent::Error(e) => anyhow::bail!("generation failed: {e}"),
        }
    }
    Ok((first.unwrap_or_default(), t0.elapsed(), n))
}

/// A prompt of `n` tokens that shares no block with prompts of another `salt`.
fn prompt(engine: &Engine, n: usize, salt: usize) -> anyhow::Result<Vec<u32>> {
    let text = "Tiered KV caches keep attention state in memory, on disk and in object storage so that a repeated prefix is loaded rather than recomputed. ";
    let base = engine.codec().encode(text)?;
    let vocab = engine.model_config().vocab_size as u32;
    let mut p = vec![
        (1000 + salt as u32 * 7) % vocab,
        (2000 + salt as u32 * 13) % vocab,
    ];
    p.extend(base.iter().cycle().take(n.saturating_sub(2)));
    Ok(p)
}

async fn wait_stored(engine: &Engine, p: &[u32]) -> anyhow::Result<()> {
    let hashes = hash_blocks(engine.namespace(), p);
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.store().lookup_prefix(engine.namespace(), &hashes) < hashes.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "blocks not published within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) async fn run(args: E2eArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut rows: Vec<TtftRow> = args
        .lengths
        .iter()
        .map(|&n| TtftRow {
            prompt_tokens: n,
            ..TtftRow::default()
        })
        .collect();
    let mut cold: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut engine_warm: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut prompts_for_llama = Vec::new();
    let mut decode = Vec::new();
    for (ti, kind) in args.tiers.iter().map(String::as_str).enumerate() {
        anyhow::ensure!(
            matches!(kind, "host" | "disk" | "object"),
            "unknown tier {kind:?} (host, disk, object)"
        );
        let engine = start(&args, kind).await?;
        for (li, &n) in args.lengths.iter().enumerate() {
            let p = prompt(&engine, n, ti * 100 + li)?;
            if ti == 0 {
                prompts_for_llama.push(p.clone());
            }
            let (t, _, _) = timed(&engine, GenerateRequest::greedy(p.clone(), 1)).await?;
            cold[li].push(t.as_secs_f64() * 1e3);
            wait_stored(&engine, &p).await?;
            let mut warm = Vec::new();
            for _ in 0..args.repeats {
                let (t, _, _) = timed(&engine, GenerateRequest::greedy(p.clone(), 1)).await?;
                engine_warm[li].push(t.as_secs_f64() * 1e3);
                engine.reset_prefix_cache().await?;
                let (t, _, _) = timed(&engine, GenerateRequest::greedy(p.clone(), 1)).await?;
                warm.push(t.as_secs_f64() * 1e3);
            }
            let m = median(&mut warm);
            match kind {
                "host" => rows[li].host_ms = m,
                "disk" => rows[li].disk_ms = m,
                _ => rows[li].object_ms = m,
            }
            eprintln!(
                "{kind}: {n} tokens: cold {:.0} ms, warm {m:.1} ms",
                cold[li].last().copied().unwrap_or(0.0)
            );
        }
        if ti == 0 {
            for conc in [1, args.concurrency] {
                let short: Vec<Vec<u32>> = (0..conc)
                    .map(|i| prompt(&engine, 32, 10_000 + conc * 100 + i))
                    .collect::<anyhow::Result<_>>()?;
                let runs = short
                    .into_iter()
                    .map(|p| timed(&engine, GenerateRequest::greedy(p, args.decode_tokens)));
                let t0 = Instant::now();
                let results = futures::future::try_join_all(runs).await?;
                let first = results.iter().map(|r| r.0).max().unwrap_or_default();
                let last = t0.elapsed();
                let tokens: usize = results.iter().map(|r| r.2.saturating_sub(1)).sum();
                let tps = tokens as f64 / (last - first).as_secs_f64().max(1e-9);
                eprintln!("decode at {conc}: {tps:.1} tokens/s");
                decode.push(DecodeRow {
                    concurrency: conc,
                    tokens_per_s: tps,
                    llama_cpp_tokens_per_s: None,
                    ratio: None,
                });
            }
        }
    }
    for (li, row) in rows.iter_mut().enumerate() {
        row.cold_ms = median(&mut cold[li]);
        row.engine_ms = median(&mut engine_warm[li]);
        row.host_over_cold = row.host_ms / row.cold_ms;
        row.prefill_tps = row.prompt_tokens as f64 / (row.cold_ms / 1e3);
    }
    let mut note = None;
    let baseline = if args.no_llama_cpp {
        Err(anyhow::anyhow!("skipped (--no-llama-cpp)"))
    } else {
        llama_cpp::measure(&args, &prompts_for_llama)
    };
    match baseline {
        Ok(l) => {
            for (row, tps) in rows.iter_mut().zip(&l.prefill_tps) {
                row.llama_cpp_prefill_tps = Some(*tps);
                row.prefill_ratio = Some(row.prefill_tps / tps);
            }
            for d in &mut decode {
                d.llama_cpp_tokens_per_s = Some(l.decode_tps);
                d.ratio = Some(d.tokens_per_s / l.decode_tps);
            }
        }
        Err(e) => {
            eprintln!("llama.cpp baseline not measured: {e:#}");
            note = Some(format!("{e:#}"));
        }
    }
    let report = Report {
        model: args.model.display().to_string(),
        block_size: args.block_size,
        ttft: rows,
        decode,
        llama_cpp_note: note,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn print_report(r: &Report) {
    println!(
        "\nTTFT (median ms) by where the prompt's KV came from; block size {}",
        r.block_size
    );
    println!(
        "| prompt tokens | cold (computed) | engine pool | host | disk | object | host / cold | prefill tok/s | llama.cpp prefill tok/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for t in &r.ttft {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3}x | {:.0} | {} | {} |",
            t.prompt_tokens,
            t.cold_ms,
            t.engine_ms,
            t.host_ms,
            t.disk_ms,
            t.object_ms,
            t.host_over_cold,
            t.prefill_tps,
            opt(t.llama_cpp_prefill_tps, 0),
            opt(t.prefill_ratio, 2)
        );
    }
    println!("\nDecode");
    println!("| concurrent requests | tierkv tok/s | llama.cpp tok/s (1 stream) | ratio |");
    println!("|---|---|---|---|");
    for d in &r.decode {
        println!(
            "| {} | {:.1} | {} | {} |",
            d.concurrency,
            d.tokens_per_s,
            opt(d.llama_cpp_tokens_per_s, 1),
            opt(d.ratio, 2)
        );
    }
}

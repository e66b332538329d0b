//! `tierkv-bench tune`: sweeps host and disk capacities, write-back vs write-through,
//! block size and promotion over a trace, prices each point's TTFT saving with
//! per-tier load bandwidths, and recommends the cheapest configuration that reaches a
//! target share of the best saving — written out as a tierkv TOML file. The
//! recommendation is then replayed for real when it fits `--max-real-bytes`.
//!
//! Host-only points come from one pass per block size ([`HitCurve`](crate::trace::curve::HitCurve), exact); host ->
//! disk points (write-back, promotion) from the same pass's exclusive model; the
//! cheapest points reaching the target, and every policy variant of their capacities,
//! are then simulated exactly — by replaying the store's policy directly
//! ([`policy_sim`](crate::trace::policy_sim), the same counts as a replay through the
//! store, tens of nanoseconds per block access) — and only exact points are
//! recommended. `--exact` simulates every point; `--through-store` simulates through
//! a `TieredStore` over metadata-only tiers instead (the slow reference).

mod plan;
mod sweep;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::{Context, ensure};
use serde::Serialize;
use tierkv_kvstore::ByteSize;

use super::policy_sim::Interned;
use super::replay::{ReplayReport, build_store, replay};
use sweep::{
    Point, Source, capacities, config_for, curve_for, grid, price, progress_bar, replay_args,
    simulate, simulate_policy,
};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TuneArgs {
    #[arg(long)]
    pub trace: PathBuf,
    /// Where to write the recommended configuration.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Block sizes (tokens) to try.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128")]
    pub block_tokens: Vec<u64>,
    /// KV bytes per token (default: Qwen3-32B at TP 2 — 64 layers × 2 × 4 KV heads ×
    /// 128 × bf16).
    #[arg(long, default_value_t = 131072)]
    pub bytes_per_token: u64,
    /// Prefill rate pricing a recomputed token (tokens/s).
    #[arg(long, default_value_t = 8000.0)]
    pub prefill_tokens_per_s: f64,
    /// Load bandwidth of host and disk hits (GB/s), e.g. from `tierkv-bench tier`.
    #[arg(long, default_value_t = 20.0)]
    pub host_gbps: f64,
    #[arg(long, default_value_t = 2.0)]
    pub disk_gbps: f64,
    /// Cost of a byte of host memory relative to a byte of NVMe.
    #[arg(long, default_value_t = 10.0)]
    pub host_cost: f64,
    /// Share of the best TTFT saving the recommendation must reach.
    #[arg(long, default_value_t = 0.9)]
    pub target: f64,
    /// Replay the recommendation for real when its tiers total at most this.
    #[arg(long, default_value = "2GiB")]
    pub max_real_bytes: ByteSize,
    /// Data directory of the real replay (removed afterwards).
    #[arg(long, default_value = "tierkv-bench-data/tune")]
    pub dir: PathBuf,
    /// Write charts (SVG and PNG) here: hit rate and TTFT saved against capacity, and
    /// the real replay's bandwidth per tier over time.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Simulate every point exactly instead of the curves plus an exact shortlist.
    #[arg(long)]
    pub exact: bool,
    /// Simulate through a `TieredStore` over metadata-only tiers (the reference the
    /// direct policy replay is checked against; ~100x slower) instead of replaying the
    /// store's policy directly.
    #[arg(long)]
    pub through_store: bool,
    /// Modelled (host -> disk) points reaching the target that are simulated exactly,
    /// cheapest first, each with its policy variants; 0 recommends from the exact
    /// one-tier curves alone.
    #[arg(long, default_value_t = 3)]
    pub shortlist: usize,
    /// Build the curves from a spatial sample of this share of the blocks (SHARDS):
    /// about that much of the pass's time and memory, every curve point then an
    /// estimate within the stated bound (see README), and the shortlist (host-only
    /// points included) simulated exactly. 1 = the exact pass.
    #[arg(long, default_value_t = 1.0)]
    pub sample_rate: f64,
    /// The model whose KV is priced: a Hugging Face `config.json` (layers, KV heads,
    /// head size, dtype) or a known name (`qwen3-32b`, `qwen3-8b`, `llama-3.1-8b`,
    /// `llama-3.1-70b`, `smollm2-135m`); replaces --bytes-per-token.
    #[arg(long)]
    pub model: Option<String>,
    /// Tensor-parallel size with --model: a rank stores its share of the KV heads.
    #[arg(long, default_value_t = 1)]
    pub tp: u64,
    /// Nodes the capacities are spread over (they are cluster totals).
    #[arg(long, default_value_t = 1)]
    pub nodes: u64,
    /// The most host memory (and disk) one node can give the store; points over it
    /// are never recommended. Default: no limit.
    #[arg(long)]
    pub max_host_per_node: Option<ByteSize>,
    #[arg(long)]
    pub max_disk_per_node: Option<ByteSize>,
}

#[derive(Serialize)]
struct TuneReport {
    points: Vec<Point>,
    best_saving_s: f64,
    recommended: Point,
    /// The point saving most among those cheaper than the recommendation.
    next_cheaper: Option<Point>,
    /// The cheapest point saving more than the recommendation.
    next_better: Option<Point>,
    real_replay: Option<ReplayReport>,
    /// Exact points no other exact point beats on both cost and saving, cheapest first.
    frontier: Vec<Point>,
    /// Per node, what the recommendation's tiers must deliver at the trace's rate.
    bandwidth: plan::Bandwidth,
    /// Seconds the sweep took (of which the one-pass curves), and how many points
    /// were simulated.
    sweep_s: f64,
    curves_s: f64,
    simulated_points: usize,
}

pub(crate) async fn run(args: TuneArgs) -> anyhow::Result<()> {
    tune(args).await.map(|_| ())
}

/// Runs the sweep; returns the recommendation and its real replay, if any.
pub(crate) async fn tune(mut args: TuneArgs) -> anyhow::Result<(Point, Option<ReplayReport>)> {
    if let Some(model) = &args.model {
        args.bytes_per_token = plan::model_bytes_per_token(model, args.tp)?;
    }
    ensure!(args.nodes > 0, "--nodes must be > 0");
    ensure!(
        !args.block_tokens.is_empty() && args.block_tokens.iter().all(|&b| b > 0),
        "--block-tokens must be > 0"
    );
    ensure!(
        args.bytes_per_token > 0 && args.prefill_tokens_per_s > 0.0,
        "rates must be > 0"
    );
    ensure!(
        args.host_gbps > 0.0 && args.disk_gbps > 0.0,
        "bandwidths must be > 0"
    );
    ensure!(
        (0.0..=1.0).contains(&args.target),
        "--target must be in 0..=1"
    );
    ensure!(
        args.sample_rate > 0.0 && args.sample_rate <= 1.0,
        "--sample-rate must be in (0, 1]"
    );
    let sampled = args.sample_rate < 1.0;
    ensure!(
        !sampled || args.shortlist > 0 || args.exact,
        "--sample-rate below 1 estimates every curve point: it needs a --shortlist to simulate"
    );
    let trace = crate::trace::load(&args.trace)?;
    for &bt in &args.block_tokens {
        crate::trace::check_block_tokens(&trace, bt)?;
    }
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let mut curves = Vec::new();
    for &bt in &args.block_tokens {
        let grid = grid(&args, &trace, bt);
        let curve = curve_for(&args, &trace, bt, &grid);
        for mut p in grid {
            let (host_cap, disk_cap) = capacities(&args, &p);
            let hits = if p.disk_bytes == 0 {
                if sampled {
                    p.source = Source::Model;
                }
                Some((curve.hits(host_cap), 0))
            } else if !p.write_through && p.promote {
                p.source = Source::Model;
                curve.split(host_cap, disk_cap)
            } else {
                None // a policy variant: simulated if its capacities are shortlisted
            };
            if let Some((host, disk)) = hits {
                price(&mut p, &args, curve.accesses, host, disk);
                points.push(p);
            }
        }
        curves.push(curve);
    }
    let curves_s = started.elapsed().as_secs_f64();
    // The points to simulate: every point (--exact), or the shortlist — the cheapest
    // modelled points reaching the target (and the best one), each with every policy
    // variant of its capacities.
    let to_simulate: Vec<Point> = if args.exact {
        points.clear();
        args.block_tokens
            .iter()
            .flat_map(|&bt| grid(&args, &trace, bt))
            .collect()
    } else {
        let best = points
            .iter()
            .map(|p| p.ttft_saved_s)
            .fold(f64::MIN, f64::max);
        let mut short: Vec<Point> = points
            .iter()
            .filter(|p| p.source == Source::Model && p.ttft_saved_s >= args.target * best)
            .cloned()
            .collect();
        short.sort_by(|a, b| a.cost.total_cmp(&b.cost));
        short.truncate(args.shortlist);
        if let Some(top) = points
            .iter()
            .filter(|p| p.source == Source::Model)
            .max_by(|a, b| a.ttft_saved_s.total_cmp(&b.ttft_saved_s))
            && args.shortlist > 0
            && !short.iter().any(|p| p.same_capacities(top))
        {
            short.push(top.clone());
        }
        short
            .iter()
            .flat_map(|s| {
                grid(&args, &trace, s.block_tokens)
                    .into_iter()
                    .filter(|p| p.same_capacities(s))
            })
            .collect()
    };
    let simulated_points = to_simulate.len();
    let progress = progress_bar(simulated_points);
    // Blocks as dense ids, once per block size simulated.
    let mut interned: Vec<Interned> = Vec::new();
    for mut p in to_simulate {
        if args.through_store {
            simulate(&mut p, &args, &trace).await?;
        } else {
            if !interned.iter().any(|b| b.block_tokens == p.block_tokens) {
                interned.push(Interned::new(&trace, p.block_tokens));
            }
            let blocks = interned
                .iter()
                .find(|b| b.block_tokens == p.block_tokens)
                .context("interned blocks of the point's block size")?;
            simulate_policy(&mut p, &args, blocks);
        }
        points.retain(|q| {
            !(q.same_capacities(&p) && q.write_through == p.write_through && q.promote == p.promote)
        });
        points.push(p);
        progress.inc(1);
    }
    let sweep_s = started.elapsed().as_secs_f64();
    // Only exact points that fit a node are recommended, against the best of them.
    let fit = |p: &&Point| {
        p.exact()
            && plan::fits(
                p,
                args.nodes,
                args.max_host_per_node.map(|b| b.0),
                args.max_disk_per_node.map(|b| b.0),
            )
    };
    let eligible: Vec<&Point> = points.iter().filter(fit).collect();
    ensure!(
        !eligible.is_empty(),
        "no exact point fits --max-host-per-node / --max-disk-per-node over {} node(s)",
        args.nodes
    );
    let best = eligible
        .iter()
        .map(|p| p.ttft_saved_s)
        .fold(f64::MIN, f64::max);
    let frontier = plan::frontier(&eligible);
    let recommended = eligible
        .iter()
        .copied()
        .filter(|p| p.ttft_saved_s >= args.target * best)
        // The cheapest; of equal costs, the one saving most.
        .min_by(|a, b| {
            a.cost
                .total_cmp(&b.cost)
                .then(b.ttft_saved_s.total_cmp(&a.ttft_saved_s))
        })
        .cloned()
        .context("no configuration reached the target")?;
    let next_cheaper = eligible
        .iter()
        .copied()
        .filter(|p| p.cost < recommended.cost)
        .max_by(|a, b| a.ttft_saved_s.total_cmp(&b.ttft_saved_s))
        .cloned();
    let next_better = eligible
        .iter()
        .copied()
        .filter(|p| p.ttft_saved_s > recommended.ttft_saved_s)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .cloned();
    let block_bytes = recommended.block_tokens * args.bytes_per_token;
    let config = config_for(&recommended, block_bytes, PathBuf::from("tierkv-data"));
    config.validate()?;
    std::fs::write(&args.out, config.to_toml())
        .with_context(|| format!("writing {}", args.out.display()))?;
    // The same store for vLLM: `--kv-transfer-config` with TierkvConnector.
    let vllm_out = args.out.with_extension("vllm.json");
    let vllm = serde_json::json!({
        "kv_connector": "TierkvConnector",
        "kv_connector_module_path": "tierkv.vllm",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"config": serde_json::to_value(&config)?},
    });
    std::fs::write(&vllm_out, serde_json::to_string_pretty(&vllm)?)
        .with_context(|| format!("writing {}", vllm_out.display()))?;

    let real_replay = if recommended.host_bytes + recommended.disk_bytes <= args.max_real_bytes.0 {
        let real_config = config_for(&recommended, block_bytes, args.dir.clone());
        let store = build_store(&real_config, false).await?;
        let r = replay(
            &store,
            &trace,
            &replay_args(&args, recommended.block_tokens, false),
            block_bytes as usize,
        )
        .await?;
        drop(store);
        let _ = std::fs::remove_dir_all(&args.dir);
        Some(r)
    } else {
        None
    };

    let mut sorted = points.clone();
    sorted.sort_by(|a, b| b.ttft_saved_s.total_cmp(&a.ttft_saved_s));
    let accesses: u64 = curves.iter().map(|c| c.accesses).sum();
    println!(
        "{} points in {sweep_s:.2} s: one pass per block size over {accesses} block accesses in {curves_s:.2} s, {} points simulated in {:.2} s; best TTFT saving {best:.2} s; target {:.0}% of it",
        points.len(),
        simulated_points,
        sweep_s - curves_s,
        args.target * 100.0
    );
    if sampled {
        println!(
            "curves from a {:.2}% spatial sample of the blocks (SHARDS): each curve point within {} of its exact hit ratio (the stated bound, for >= 10^4 sampled blocks); the shortlist above was simulated exactly",
            args.sample_rate * 100.0,
            crate::trace::curve::SAMPLED_ERROR_BOUND
        );
    }
    println!("{}", plan::TABLE_HEAD);
    let show = plan::show;
    for p in sorted.iter().take(8) {
        show(p);
    }
    println!(
        "Pareto frontier (exact points fitting a node; each saves more than every cheaper one):"
    );
    println!("{}", plan::TABLE_HEAD);
    for p in &frontier {
        show(p);
    }
    println!("recommended (cheapest exact point reaching the target):");
    show(&recommended);
    let secs = match (trace.first(), trace.last()) {
        (Some(a), Some(b)) => (b.timestamp - a.timestamp) as f64 / 1000.0,
        _ => 0.0,
    };
    let rec_accesses = curves
        .iter()
        .find(|c| c.block_tokens == recommended.block_tokens)
        .map_or(0, |c| c.accesses);
    let bandwidth = plan::bandwidth(
        &recommended,
        recommended.block_tokens * args.bytes_per_token,
        rec_accesses,
        secs,
        args.nodes,
    );
    println!(
        "per node ({} node(s), the trace's {:.1} requests/s): host {} + disk {}; reads host {:.3} GB/s, disk {:.3} GB/s; writes {:.3} GB/s",
        args.nodes,
        trace.len() as f64 / secs.max(1e-3),
        ByteSize(recommended.host_bytes.div_ceil(args.nodes)),
        ByteSize(recommended.disk_bytes.div_ceil(args.nodes)),
        bandwidth.host_read_gbps,
        bandwidth.disk_read_gbps,
        bandwidth.write_gbps
    );
    if let Some(p) = &next_cheaper {
        println!("next cheaper (misses the target):");
        show(p);
    }
    if let Some(p) = &next_better {
        println!("next better (costs more):");
        show(p);
    }
    println!("wrote {} and {}", args.out.display(), vllm_out.display());
    match &real_replay {
        Some(r) => println!(
            "real replay of the recommendation: hit rate {:.1}% (simulated {:.1}%), host hits {}, disk hits {}",
            r.hit_rate * 100.0,
            recommended.hit_rate * 100.0,
            r.tiers[0].hit_blocks,
            r.tiers.get(1).map_or(0, |t| t.hit_blocks)
        ),
        None => println!(
            "the recommendation ({} + {}) exceeds --max-real-bytes {}: not replayed for real",
            ByteSize(recommended.host_bytes),
            ByteSize(recommended.disk_bytes),
            args.max_real_bytes
        ),
    }
    if let Some(dir) = &args.plots {
        plan::plot_sweep(&points, &recommended, dir);
        plan::plot_frontier(&frontier, dir);
        if let Some(r) = &real_replay {
            let names: Vec<String> = r.tiers.iter().map(|t| t.name.clone()).collect();
            crate::trace::replay::plot_bandwidth(r, &names, dir, "tune-replay-bandwidth");
        }
    }
    if let Some(path) = &args.json {
        let report = TuneReport {
            points,
            best_saving_s: best,
            recommended: recommended.clone(),
            next_cheaper,
            next_better,
            real_replay: real_replay.clone(),
            frontier,
            bandwidth,
            sweep_s,
            curves_s,
            simulated_points,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok((recommended, real_replay))
}

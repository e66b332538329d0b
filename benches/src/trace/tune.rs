//! `tierkv-bench tune`: sweeps host and disk capacities, write-back vs write-through,
//! block size and promotion over a trace, prices each point's TTFT saving with
//! per-tier load bandwidths, and recommends the cheapest configuration that reaches a
//! target share of the best saving — written out as a tierkv TOML file. The
//! recommendation is then replayed for real when it fits `--max-real-bytes`.
//!
//! Host-only points come from one pass per block size ([`HitCurve`], exact); host ->
//! disk points (write-back, promotion) from the same pass's exclusive model; the
//! cheapest points reaching the target, and every policy variant of their capacities,
//! are then simulated exactly, and only exact points are recommended. `--exact`
//! simulates every point instead (the slow reference).

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, ensure};
use serde::Serialize;
use tierkv_kvstore::{ByteSize, DiskSection, EvictPolicy, HostSection, StoreConfig, TierConfig};

use super::curve::HitCurve;
use super::replay::{ReplayArgs, ReplayReport, build_store, replay};
use super::{TraceRecord, block_hashes};

#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
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
    /// Simulate every point (slow; the reference the one-pass curves are checked
    /// against) instead of the curves plus an exact shortlist.
    #[arg(long)]
    pub exact: bool,
    /// Modelled (host -> disk) points reaching the target that are simulated exactly,
    /// cheapest first, each with its policy variants; 0 recommends from the exact
    /// one-tier curves alone.
    #[arg(long, default_value_t = 3)]
    pub shortlist: usize,
}

/// How a point's figures were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The one-pass hit curve: exact for one tier.
    Curve,
    /// The exclusive host -> disk model of the same pass: an estimate.
    Model,
    /// A simulated replay: exact.
    Simulated,
}

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub block_tokens: u64,
    pub host_bytes: u64,
    pub disk_bytes: u64,
    pub write_through: bool,
    pub promote: bool,
    pub hit_rate: f64,
    pub host_hits: u64,
    pub disk_hits: u64,
    /// Seconds of prefill saved over the trace, net of load time.
    pub ttft_saved_s: f64,
    /// host_bytes * host_cost + disk_bytes.
    pub cost: f64,
    pub source: Source,
}

impl Point {
    fn exact(&self) -> bool {
        self.source != Source::Model
    }
    /// Same block size and capacities.
    fn same_capacities(&self, o: &Point) -> bool {
        (self.block_tokens, self.host_bytes, self.disk_bytes)
            == (o.block_tokens, o.host_bytes, o.disk_bytes)
    }
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
    /// Seconds the sweep took (of which the one-pass curves), and how many points
    /// were simulated.
    sweep_s: f64,
    curves_s: f64,
    simulated_points: usize,
}

fn working_set_blocks(trace: &[TraceRecord], block_tokens: u64) -> u64 {
    let set: HashSet<u128> = trace
        .iter()
        .flat_map(|r| block_hashes(r, block_tokens))
        .collect();
    set.len() as u64
}

fn config_for(p: &Point, block_bytes: u64, data_dir: PathBuf) -> StoreConfig {
    let mut tiers = vec![TierConfig::Host(HostSection {
        name: "host".into(),
        capacity: ByteSize(p.host_bytes),
        write_through: false,
        on_evict: EvictPolicy::Demote,
        prefault: true,
        shared: false,
    })];
    if p.disk_bytes > 0 {
        tiers.push(TierConfig::Disk(DiskSection {
            name: "disk".into(),
            capacity: ByteSize(p.disk_bytes),
            write_through: p.write_through,
            on_evict: EvictPolicy::Demote,
            path: "disk".into(),
            queue_depth: 32,
            io_threads: 1,
            direct_io: true,
            sync_writes: false,
        }));
    }
    StoreConfig {
        data_dir,
        slot_bytes: ByteSize(block_bytes),
        promote_on_hit: p.promote,
        tiers,
        ..StoreConfig::default()
    }
}

pub async fn run(args: TuneArgs) -> anyhow::Result<()> {
    tune(args).await.map(|_| ())
}

/// Runs the sweep; returns the recommendation and its real replay, if any.
pub async fn tune(args: TuneArgs) -> anyhow::Result<(Point, Option<ReplayReport>)> {
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
    let trace = super::load(&args.trace)?;
    let started = std::time::Instant::now();
    let mut points = Vec::new();
    let mut curves = Vec::new();
    for &bt in &args.block_tokens {
        let grid = grid(&args, &trace, bt);
        let caps: Vec<u64> = grid
            .iter()
            .map(|p| p.host_bytes / stride(&args, bt).0)
            .collect();
        let curve = HitCurve::measure(&trace, bt, &caps);
        for mut p in grid {
            let (host_cap, disk_cap) = capacities(&args, &p);
            let hits = if p.disk_bytes == 0 {
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
    let mut simulated_points = 0;
    if args.exact {
        let all: Vec<Point> = args
            .block_tokens
            .iter()
            .flat_map(|&bt| grid(&args, &trace, bt))
            .collect();
        points.clear();
        let progress = progress_bar(all.len());
        for mut p in all {
            simulate(&mut p, &args, &trace).await?;
            points.push(p);
            progress.inc(1);
        }
        simulated_points = points.len();
    } else {
        // The shortlist: the cheapest modelled points reaching the target (and the
        // best one), each with every policy variant of its capacities, simulated.
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
        let variants: Vec<Point> = short
            .iter()
            .flat_map(|s| {
                grid(&args, &trace, s.block_tokens)
                    .into_iter()
                    .filter(|p| p.same_capacities(s))
            })
            .collect();
        let progress = progress_bar(variants.len());
        for mut p in variants {
            simulate(&mut p, &args, &trace).await?;
            points.retain(|q| {
                !(q.same_capacities(&p)
                    && q.write_through == p.write_through
                    && q.promote == p.promote)
            });
            points.push(p);
            progress.inc(1);
            simulated_points += 1;
        }
    }
    let sweep_s = started.elapsed().as_secs_f64();
    // Only exact points are recommended, against the best exact saving.
    let best = points
        .iter()
        .filter(|p| p.exact())
        .map(|p| p.ttft_saved_s)
        .fold(f64::MIN, f64::max);
    let recommended = points
        .iter()
        .filter(|p| p.exact() && p.ttft_saved_s >= args.target * best)
        // The cheapest; of equal costs, the one saving most.
        .min_by(|a, b| {
            a.cost
                .total_cmp(&b.cost)
                .then(b.ttft_saved_s.total_cmp(&a.ttft_saved_s))
        })
        .cloned()
        .context("no configuration reached the target")?;
    let next_cheaper = points
        .iter()
        .filter(|p| p.exact() && p.cost < recommended.cost)
        .max_by(|a, b| a.ttft_saved_s.total_cmp(&b.ttft_saved_s))
        .cloned();
    let next_better = points
        .iter()
        .filter(|p| p.exact() && p.ttft_saved_s > recommended.ttft_saved_s)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .cloned();
    let block_bytes = recommended.block_tokens * args.bytes_per_token;
    let config = config_for(&recommended, block_bytes, PathBuf::from("tierkv-data"));
    config.validate()?;
    std::fs::write(&args.out, config.to_toml())
        .with_context(|| format!("writing {}", args.out.display()))?;

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
    println!(
        "| block tokens | host | disk | write | promote | hit rate | TTFT saved s | cost | from |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let show = |p: &Point| {
        println!(
            "| {} | {} | {} | {} | {} | {:.1}% | {:.2} | {:.3e} | {:?} |",
            p.block_tokens,
            ByteSize(p.host_bytes),
            ByteSize(p.disk_bytes),
            if p.write_through { "through" } else { "back" },
            if p.promote { "on" } else { "off" },
            p.hit_rate * 100.0,
            p.ttft_saved_s,
            p.cost,
            p.source
        )
    };
    for p in sorted.iter().take(8) {
        show(p);
    }
    println!("recommended (cheapest exact point reaching the target):");
    show(&recommended);
    if let Some(p) = &next_cheaper {
        println!("next cheaper (misses the target):");
        show(p);
    }
    if let Some(p) = &next_better {
        println!("next better (costs more):");
        show(p);
    }
    println!("wrote {}", args.out.display());
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
        plot_sweep(&points, &recommended, dir);
        if let Some(r) = &real_replay {
            let names: Vec<String> = r.tiers.iter().map(|t| t.name.clone()).collect();
            super::replay::plot_bandwidth(r, &names, dir, "tune-replay-bandwidth");
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

/// Hit rate and TTFT saved against host capacity (no disk) and against disk capacity
/// (the smallest host), at the recommendation's block size, write-back, promotion on.
fn plot_sweep(points: &[Point], rec: &Point, dir: &std::path::Path) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let pick = |host_only: bool| -> Vec<&Point> {
        let min_host = points
            .iter()
            .filter(|p| p.block_tokens == rec.block_tokens)
            .map(|p| p.host_bytes)
            .min()
            .unwrap_or(0);
        let mut v: Vec<&Point> = points
            .iter()
            .filter(|p| p.block_tokens == rec.block_tokens && !p.write_through && p.promote)
            .filter(|p| {
                if host_only {
                    p.disk_bytes == 0
                } else {
                    p.host_bytes == min_host
                }
            })
            .collect();
        v.sort_by_key(|p| {
            if host_only {
                p.host_bytes
            } else {
                p.disk_bytes
            }
        });
        v
    };
    let (host, disk) = (pick(true), pick(false));
    let series = |f: &dyn Fn(&Point) -> f64| {
        vec![
            crate::plot::Series {
                name: "host capacity (no disk)".into(),
                points: host.iter().map(|p| (gib(p.host_bytes), f(p))).collect(),
            },
            crate::plot::Series {
                name: "disk capacity (smallest host)".into(),
                points: disk.iter().map(|p| (gib(p.disk_bytes), f(p))).collect(),
            },
        ]
    };
    let charts = [
        (
            "tune-hit-rate",
            "Hit rate vs capacity",
            "hit rate (%)",
            series(&|p| p.hit_rate * 100.0),
        ),
        (
            "tune-ttft-saved",
            "TTFT saved vs capacity",
            "TTFT saved (s)",
            series(&|p| p.ttft_saved_s),
        ),
    ];
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("note: no charts: {e}");
        return;
    }
    for (stem, title, y, s) in charts {
        crate::plot::line_chart_or_note(&dir.join(stem), title, "capacity (GiB)", y, &s);
    }
}

/// Largest hit-rate error of the exclusive host -> disk model against the simulation
/// allowed on the generated traces of the tests (0.024 measured when written).
#[cfg(test)]
const MODEL_BOUND: f64 = 0.05;

/// Bytes of one host slot and one disk slot at `block_tokens` tokens per block.
fn stride(args: &TuneArgs, block_tokens: u64) -> (u64, u64) {
    let block_bytes = block_tokens * args.bytes_per_token;
    (
        block_bytes.div_ceil(4096) * 4096,
        (block_bytes + 64).div_ceil(4096) * 4096,
    )
}

/// Host and disk capacity of a point in blocks, as the store rounds them.
fn capacities(args: &TuneArgs, p: &Point) -> (u64, u64) {
    let (host, disk) = stride(args, p.block_tokens);
    (p.host_bytes / host, p.disk_bytes / disk)
}

/// Every point of the sweep at one block size, not yet measured.
fn grid(args: &TuneArgs, trace: &[TraceRecord], bt: u64) -> Vec<Point> {
    let (stride_host, stride_disk) = stride(args, bt);
    let ws = working_set_blocks(trace, bt).max(1);
    let host_fracs = [1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0, 0.25, 0.5, 1.0];
    let disk_fracs = [0.0, 0.125, 0.25, 0.5, 1.0];
    // Whole MiB, so the written configuration reads well.
    let mib = |b: u64| b.div_ceil(1 << 20) << 20;
    let mut out = Vec::new();
    for &hf in &host_fracs {
        for &df in &disk_fracs {
            for write_through in [false, true] {
                if df == 0.0 && write_through {
                    continue;
                }
                for promote in [true, false] {
                    if df == 0.0 && !promote {
                        continue; // one tier: nothing to promote
                    }
                    let host_blocks = ((ws as f64 * hf).ceil() as u64).max(1);
                    let disk_blocks = (ws as f64 * df).ceil() as u64;
                    out.push(Point {
                        block_tokens: bt,
                        host_bytes: mib(host_blocks * stride_host),
                        disk_bytes: mib(disk_blocks * stride_disk),
                        write_through,
                        promote,
                        hit_rate: 0.0,
                        host_hits: 0,
                        disk_hits: 0,
                        ttft_saved_s: 0.0,
                        cost: 0.0,
                        source: Source::Curve,
                    });
                }
            }
        }
    }
    out
}

/// Fills a point's figures from its hits per tier.
fn price(p: &mut Point, args: &TuneArgs, accesses: u64, host_hits: u64, disk_hits: u64) {
    let block_bytes = p.block_tokens * args.bytes_per_token;
    p.host_hits = host_hits;
    p.disk_hits = disk_hits;
    p.hit_rate = match accesses {
        0 => 0.0,
        n => (host_hits + disk_hits) as f64 / n as f64,
    };
    let load_s = (host_hits * block_bytes) as f64 / (args.host_gbps * 1e9)
        + (disk_hits * block_bytes) as f64 / (args.disk_gbps * 1e9);
    let hit_tokens = (host_hits + disk_hits) * p.block_tokens;
    p.ttft_saved_s = hit_tokens as f64 / args.prefill_tokens_per_s - load_s;
    p.cost = p.host_bytes as f64 * args.host_cost + p.disk_bytes as f64;
}

/// Measures a point by a simulated replay (exact).
async fn simulate(p: &mut Point, args: &TuneArgs, trace: &[TraceRecord]) -> anyhow::Result<()> {
    let block_bytes = p.block_tokens * args.bytes_per_token;
    let config = config_for(p, block_bytes, args.dir.clone());
    let store = build_store(&config, true).await?;
    let r = replay(
        &store,
        trace,
        &replay_args(args, p.block_tokens, true),
        block_bytes as usize,
    )
    .await?;
    p.source = Source::Simulated;
    let (host, disk) = (
        r.tiers[0].hit_blocks,
        r.tiers.get(1).map_or(0, |t| t.hit_blocks),
    );
    price(p, args, r.blocks, host, disk);
    Ok(())
}

fn progress_bar(n: usize) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(n as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "tune: simulating {bar:40} {pos}/{len} points {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

fn replay_args(args: &TuneArgs, block_tokens: u64, simulate: bool) -> ReplayArgs {
    ReplayArgs {
        trace: args.trace.clone(),
        config: None,
        dir: args.dir.clone(),
        block_tokens,
        block_bytes: None,
        simulate,
        speed: 0.0,
        prefill_tokens_per_s: args.prefill_tokens_per_s,
        json: None,
        plots: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::generate::{GenArgs, generate};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_recommendation_is_a_valid_config_that_replays_as_simulated() {
        let dir = tempfile::tempdir().unwrap();
        let trace_path = dir.path().join("t.jsonl");
        let trace = generate(&GenArgs {
            out: trace_path.clone(),
            requests: 80,
            users: 4,
            turns: 3,
            system_prompts: 2,
            system_tokens: 1024,
            user_tokens: 256,
            output_tokens: 128,
            documents: 2,
            document_tokens: 2048,
            document_share: 0.3,
            zipf: 1.0,
            rate: 50.0,
            seed: 11,
        })
        .unwrap();
        let text: String = trace
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(&trace_path, text).unwrap();
        let out = dir.path().join("recommended.toml");
        let (rec, real) = tune(TuneArgs {
            trace: trace_path,
            out: out.clone(),
            json: None,
            block_tokens: vec![64, 128],
            bytes_per_token: 64,
            prefill_tokens_per_s: 1000.0,
            host_gbps: 10.0,
            disk_gbps: 1.0,
            host_cost: 10.0,
            target: 0.8,
            max_real_bytes: ByteSize(1 << 30),
            dir: dir.path().join("real"),
            plots: Some(dir.path().join("plots")),
            exact: false,
            shortlist: 3,
        })
        .await
        .unwrap();
        let config = StoreConfig::from_file(&out).unwrap();
        assert_eq!(config.slot_bytes.0, rec.block_tokens * 64);
        assert!(rec.ttft_saved_s > 0.0);
        let real = real.expect("small enough to replay for real");
        assert!(
            (real.hit_rate - rec.hit_rate).abs() < 1e-9,
            "real {} vs simulated {}",
            real.hit_rate,
            rec.hit_rate
        );
    }

    fn chat_trace(seed: u64, requests: usize) -> Vec<TraceRecord> {
        generate(&GenArgs {
            out: PathBuf::from("unused"),
            requests,
            users: 6,
            turns: 4,
            system_prompts: 3,
            system_tokens: 1024,
            user_tokens: 256,
            output_tokens: 128,
            documents: 3,
            document_tokens: 2048,
            document_share: 0.3,
            zipf: 1.0,
            rate: 50.0,
            seed,
        })
        .unwrap()
    }

    fn args_for(trace_path: PathBuf, dir: &std::path::Path) -> TuneArgs {
        TuneArgs {
            trace: trace_path,
            out: dir.join("rec.toml"),
            json: None,
            block_tokens: vec![64, 128],
            bytes_per_token: 64,
            prefill_tokens_per_s: 1000.0,
            host_gbps: 10.0,
            disk_gbps: 1.0,
            host_cost: 10.0,
            target: 0.8,
            max_real_bytes: ByteSize(0),
            dir: dir.join("sim"),
            plots: None,
            exact: false,
            shortlist: 3,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_pass_curves_equal_the_simulation_for_one_tier_and_bound_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let mut worst_model = 0f64;
        for seed in [1, 2, 3] {
            let trace = chat_trace(seed, 120);
            let args = args_for(PathBuf::from("unused"), dir.path());
            for &bt in &args.block_tokens {
                let grid = grid(&args, &trace, bt);
                let caps: Vec<u64> = grid
                    .iter()
                    .map(|p| p.host_bytes / stride(&args, bt).0)
                    .collect();
                let curve = HitCurve::measure(&trace, bt, &caps);
                for p in grid.iter().filter(|p| !p.write_through && p.promote) {
                    let (h, d) = capacities(&args, p);
                    let mut sim = p.clone();
                    simulate(&mut sim, &args, &trace).await.unwrap();
                    if p.disk_bytes == 0 {
                        assert_eq!(
                            (curve.hits(h), 0),
                            (sim.host_hits, sim.disk_hits),
                            "seed {seed}, {bt}-token blocks, host {h} blocks"
                        );
                    } else {
                        let (host, disk) = curve.split(h, d).unwrap();
                        let model = (host + disk) as f64 / curve.accesses as f64;
                        worst_model = worst_model.max((model - sim.hit_rate).abs());
                    }
                }
            }
        }
        println!("exclusive model vs simulation: worst hit-rate error {worst_model:.4}");
        assert!(worst_model < MODEL_BOUND, "model error {worst_model}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fast_sweep_recommends_what_the_exact_sweep_does() {
        let dir = tempfile::tempdir().unwrap();
        let trace_path = dir.path().join("t.jsonl");
        let text: String = chat_trace(7, 150)
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        std::fs::write(&trace_path, text).unwrap();
        let fast = tune(args_for(trace_path.clone(), dir.path()))
            .await
            .unwrap()
            .0;
        let exact = tune(TuneArgs {
            exact: true,
            ..args_for(trace_path, dir.path())
        })
        .await
        .unwrap()
        .0;
        assert!(fast.exact());
        // The fast sweep's pick is exact and reaches the target; it costs at most what
        // the exhaustive sweep's pick does, or saves within the target of it.
        assert!(
            fast.cost <= exact.cost || fast.ttft_saved_s >= 0.8 * exact.ttft_saved_s,
            "fast {fast:?} vs exact {exact:?}"
        );
    }

    #[tokio::test]
    async fn bad_flags_are_refused() {
        let args = TuneArgs {
            trace: PathBuf::from("/nonexistent/trace.jsonl"),
            out: PathBuf::from("unused"),
            json: None,
            block_tokens: vec![16],
            bytes_per_token: 1,
            prefill_tokens_per_s: 1.0,
            host_gbps: 1.0,
            disk_gbps: 1.0,
            host_cost: 1.0,
            target: 1.5,
            max_real_bytes: ByteSize(0),
            dir: PathBuf::from("unused"),
            plots: None,
            exact: false,
            shortlist: 3,
        };
        let err = tune(args.clone()).await.unwrap_err();
        assert!(err.to_string().contains("--target"), "{err}");
        let err = tune(TuneArgs {
            target: 0.9,
            ..args
        })
        .await
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/trace.jsonl"),
            "{err:#}"
        );
    }
}

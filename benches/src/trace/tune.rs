//! `tierkv-bench tune`: sweeps host and disk capacities, write-back vs write-through,
//! block size and promotion over simulated replays of a trace, prices each point's TTFT
//! saving with per-tier load bandwidths, and recommends the cheapest configuration
//! that reaches a target share of the best saving — written out as a tierkv TOML file.
//! The recommendation is then replayed for real when it fits `--max-real-bytes`.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, ensure};
use serde::Serialize;
use tierkv_kvstore::{ByteSize, DiskSection, EvictPolicy, HostSection, StoreConfig, TierConfig};

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
}

#[derive(Serialize)]
struct TuneReport {
    points: Vec<Point>,
    best_saving_s: f64,
    recommended: Point,
    real_replay: Option<ReplayReport>,
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
    let mut points = Vec::new();
    let progress = indicatif::ProgressBar::new(args.block_tokens.len() as u64 * 6 * 5 * 4);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "tune {bar:40} {pos}/{len} points {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    for &bt in &args.block_tokens {
        let block_bytes = bt * args.bytes_per_token;
        let stride_host = block_bytes.div_ceil(4096) * 4096;
        let stride_disk = (block_bytes + 64).div_ceil(4096) * 4096;
        let ws = working_set_blocks(&trace, bt).max(1);
        let host_fracs = [1.0 / 32.0, 1.0 / 16.0, 1.0 / 8.0, 0.25, 0.5, 1.0];
        let disk_fracs = [0.0, 0.125, 0.25, 0.5, 1.0];
        for &hf in &host_fracs {
            for &df in &disk_fracs {
                for write_through in [false, true] {
                    if df == 0.0 && write_through {
                        continue;
                    }
                    for promote in [true, false] {
                        let host_blocks = ((ws as f64 * hf).ceil() as u64).max(1);
                        let disk_blocks = (ws as f64 * df).ceil() as u64;
                        // Whole MiB, so the written configuration reads well.
                        let mib = |b: u64| b.div_ceil(1 << 20) << 20;
                        let mut p = Point {
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
                        };
                        let config = config_for(&p, block_bytes, args.dir.clone());
                        let store = build_store(&config, true).await?;
                        let r = replay(
                            &store,
                            &trace,
                            &replay_args(&args, bt, true),
                            block_bytes as usize,
                        )
                        .await?;
                        p.hit_rate = r.hit_rate;
                        p.host_hits = r.tiers[0].hit_blocks;
                        p.disk_hits = r.tiers.get(1).map_or(0, |t| t.hit_blocks);
                        let load_s = (p.host_hits * block_bytes) as f64 / (args.host_gbps * 1e9)
                            + (p.disk_hits * block_bytes) as f64 / (args.disk_gbps * 1e9);
                        let hit_tokens = (p.host_hits + p.disk_hits) * bt;
                        p.ttft_saved_s = hit_tokens as f64 / args.prefill_tokens_per_s - load_s;
                        p.cost = p.host_bytes as f64 * args.host_cost + p.disk_bytes as f64;
                        points.push(p);
                        progress.inc(1);
                    }
                }
            }
        }
    }
    let best = points
        .iter()
        .map(|p| p.ttft_saved_s)
        .fold(f64::MIN, f64::max);
    let recommended = points
        .iter()
        .filter(|p| p.ttft_saved_s >= args.target * best)
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .cloned()
        .context("no configuration reached the target")?;
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
    println!(
        "{} points simulated; best TTFT saving {best:.2} s; target {:.0}% of it",
        points.len(),
        args.target * 100.0
    );
    println!("| block tokens | host | disk | write | promote | hit rate | TTFT saved s | cost |");
    println!("|---|---|---|---|---|---|---|---|");
    let show = |p: &Point| {
        println!(
            "| {} | {} | {} | {} | {} | {:.1}% | {:.2} | {:.3e} |",
            p.block_tokens,
            ByteSize(p.host_bytes),
            ByteSize(p.disk_bytes),
            if p.write_through { "through" } else { "back" },
            if p.promote { "on" } else { "off" },
            p.hit_rate * 100.0,
            p.ttft_saved_s,
            p.cost
        )
    };
    for p in sorted.iter().take(8) {
        show(p);
    }
    println!("recommended (cheapest reaching the target):");
    show(&recommended);
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
            real_replay: real_replay.clone(),
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

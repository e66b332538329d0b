//! `tierkv-bench replay`: a trace replayed against a real `TieredStore` built from a
//! configuration (real host, disk and object tiers, real bytes of the configured block
//! size), or with `--simulate` against metadata-only tiers of the same capacities under
//! the same store policy. Reports hits per tier, bytes, evictions, demotions,
//! promotions, achieved read bandwidth and the estimated TTFT saved against
//! recomputing the prompt.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tierkv_kvstore::{ByteSize, StoreConfig, TierConfig, TierPolicy, TieredStore};
use tierkv_tiers::{BlockKey, TierKind};

use super::sim_tier::SimTier;
use super::{TraceRecord, block_hashes};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ReplayArgs {
    /// Trace in the Mooncake JSON-lines format.
    #[arg(long)]
    pub trace: PathBuf,
    /// Store configuration. Default: the built-in host + disk + object tiers under --dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory for the built-in configuration (removed afterwards).
    #[arg(long, default_value = "tierkv-bench-data/replay")]
    pub dir: PathBuf,
    /// Tokens per KV block (the trace's 512-token ids are re-mapped onto it).
    #[arg(long, default_value_t = 16)]
    pub block_tokens: u64,
    /// Bytes of one KV block [default: the configuration's slot_bytes].
    #[arg(long)]
    pub block_bytes: Option<ByteSize>,
    /// Run the store's policy over metadata-only tiers: no I/O, fast sweeps.
    #[arg(long)]
    pub simulate: bool,
    /// Arrival-time scale: 0 replays as fast as possible, 1 in real time, 10 ten times
    /// faster.
    #[arg(long, default_value_t = 0.0)]
    pub speed: f64,
    /// Prefill rate used to price a recomputed token (tokens/s).
    #[arg(long, default_value_t = 8000.0)]
    pub prefill_tokens_per_s: f64,
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a chart of read bandwidth per tier over time (SVG and PNG) into this
    /// directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

/// One tier's share of a replay.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct TierReplay {
    pub name: String,
    pub kind: String,
    pub hit_blocks: u64,
    pub hit_tokens: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub evictions: u64,
    pub demotions: u64,
    pub promotions: u64,
    /// Achieved read bandwidth (bytes read / time spent reading), GB/s; 0 when
    /// simulated.
    pub read_gbps: f64,
}

/// What a replay measured.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ReplayReport {
    pub simulated: bool,
    pub requests: u64,
    pub block_tokens: u64,
    pub block_bytes: u64,
    pub prompt_tokens: u64,
    /// Full blocks over all prompts.
    pub blocks: u64,
    pub hit_blocks: u64,
    /// hit_blocks / blocks.
    pub hit_rate: f64,
    pub tiers: Vec<TierReplay>,
    /// Σ (hit tokens / prefill rate − time spent loading them), seconds. A simulation
    /// spends no time loading, so its figure is an upper bound.
    pub ttft_saved_s: f64,
    pub wall_s: f64,
    /// Read bandwidth per tier (GB/s) in equal slices of the replay's wall time:
    /// `(slice end in seconds, GB/s of each tier)`.
    pub timeline: Vec<(f64, Vec<f64>)>,
}

/// Buckets `(seconds, tier, bytes)` reads into `slices` equal slices of `wall`.
fn timeline(
    reads: &[(f64, usize, u64)],
    tiers: usize,
    wall: f64,
    slices: usize,
) -> Vec<(f64, Vec<f64>)> {
    let width = (wall / slices as f64).max(1e-9);
    let mut bytes = vec![vec![0u64; tiers]; slices];
    for &(t, tier, b) in reads {
        let i = ((t / width) as usize).min(slices - 1);
        bytes[i][tier] += b;
    }
    bytes
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            (
                (i + 1) as f64 * width,
                b.iter().map(|&x| x as f64 / width / 1e9).collect(),
            )
        })
        .collect()
}

/// The namespace digest the replay stores its blocks under.
const REPLAY_NS: u64 = 0x7265_706c_6179;

/// Builds the store: the configuration's tiers, or their metadata-only stand-ins.
pub(crate) async fn build_store(
    config: &StoreConfig,
    simulate: bool,
) -> anyhow::Result<TieredStore> {
    if !simulate {
        return Ok(TieredStore::open(config).await?);
    }
    let mut builder = TieredStore::builder().options(config.store_options());
    for tc in &config.tiers {
        let s = tc.section();
        let (kind, capacity) = match tc {
            TierConfig::Host(h) => (TierKind::Host, config.host_config(h).capacity_blocks()),
            TierConfig::Disk(d) => (TierKind::Disk, config.disk_config(d).capacity_blocks()),
            TierConfig::Object(o) => (TierKind::Object, config.object_config(o).capacity_blocks()),
            TierConfig::Remote(_) => anyhow::bail!("a replay cannot simulate a remote tier"),
            TierConfig::Gpu(g) => (TierKind::Gpu, config.gpu_capacity_blocks(g)),
        };
        let tier = SimTier::new(s.name(), kind, config.slot_bytes.0 as usize, capacity);
        builder = builder.tier(Arc::new(tier)).policy(TierPolicy {
            write_through: s.write_through(),
            on_evict: s.on_evict(),
        });
    }
    Ok(builder.build().await?)
}

/// Replays `trace` against `store`.
pub(crate) async fn replay(
    store: &TieredStore,
    trace: &[TraceRecord],
    args: &ReplayArgs,
    block_bytes: usize,
) -> anyhow::Result<ReplayReport> {
    let n_tiers = store.tiers().len();
    let payload = tierkv_tiers::testing::payload(block_bytes as u64, block_bytes);
    let mut hit_blocks = vec![0u64; n_tiers];
    let mut read_time = vec![Duration::ZERO; n_tiers];
    let (mut prompt_tokens, mut blocks, mut saved) = (0u64, 0u64, 0f64);
    let mut reads = Vec::new();
    let progress = if args.simulate {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(trace.len() as u64)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "replay {bar:40} {pos}/{len} requests {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    for rec in trace {
        progress.inc(1);
        if args.speed > 0.0 {
            let due = Duration::from_secs_f64(rec.timestamp as f64 / 1000.0 / args.speed);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let hashes = block_hashes(rec, args.block_tokens);
        prompt_tokens += rec.input_length;
        blocks += hashes.len() as u64;
        let located = store.locate_prefix_keys(REPLAY_NS, &hashes);
        let mut hits = 0usize;
        let mut load = Duration::ZERO;
        for (h, &tier) in hashes.iter().zip(&located) {
            let t = Instant::now();
            let got = store.get_key(BlockKey::new(REPLAY_NS, *h)).await?;
            let took = t.elapsed();
            if got.is_none() {
                break; // Evicted between lookup and read: recompute from here.
            }
            hits += 1;
            hit_blocks[tier] += 1;
            read_time[tier] += took;
            reads.push((start.elapsed().as_secs_f64(), tier, block_bytes as u64));
            load += took;
            // The background promoter runs right after a read; replay in its order, off
            // the clock, so that runs are repeatable.
            store.settle_promotions().await;
        }
        for h in &hashes[hits..] {
            store
                .put_key(BlockKey::new(REPLAY_NS, *h), payload.clone())
                .await
                .context("storing a computed block")?;
        }
        let hit_tokens = hits as u64 * args.block_tokens;
        saved += hit_tokens as f64 / args.prefill_tokens_per_s - load.as_secs_f64();
    }
    let wall = start.elapsed();
    progress.finish_and_clear();
    let stats = store.stats();
    let tiers = stats
        .tiers
        .iter()
        .enumerate()
        .map(|(i, s)| TierReplay {
            name: s.tier.name.clone(),
            kind: s.tier.kind.to_string(),
            hit_blocks: hit_blocks[i],
            hit_tokens: hit_blocks[i] * args.block_tokens,
            bytes_read: s.bytes_read,
            bytes_written: s.bytes_written,
            evictions: s.evictions,
            demotions: s.demotions,
            promotions: s.promotions,
            read_gbps: if args.simulate || read_time[i].is_zero() {
                0.0
            } else {
                (hit_blocks[i] * block_bytes as u64) as f64 / read_time[i].as_secs_f64() / 1e9
            },
        })
        .collect();
    let total_hits: u64 = hit_blocks.iter().sum();
    Ok(ReplayReport {
        simulated: args.simulate,
        requests: trace.len() as u64,
        block_tokens: args.block_tokens,
        block_bytes: block_bytes as u64,
        prompt_tokens,
        blocks,
        hit_blocks: total_hits,
        hit_rate: if blocks == 0 {
            0.0
        } else {
            total_hits as f64 / blocks as f64
        },
        tiers,
        ttft_saved_s: saved,
        wall_s: wall.as_secs_f64(),
        timeline: timeline(&reads, n_tiers, wall.as_secs_f64(), 30),
    })
}

pub(crate) fn print_report(r: &ReplayReport) {
    println!(
        "{} replay: {} requests, {} prompt tokens, {} blocks of {} tokens ({} bytes); hit rate {:.1}%; est. TTFT saved {:.2} s; wall {:.2} s",
        if r.simulated { "simulated" } else { "real" },
        r.requests,
        r.prompt_tokens,
        r.blocks,
        r.block_tokens,
        r.block_bytes,
        r.hit_rate * 100.0,
        r.ttft_saved_s,
        r.wall_s
    );
    println!(
        "| {:<8} | {:<6} | {:>10} | {:>11} | {:>13} | {:>13} | {:>9} | {:>9} | {:>10} | {:>9} |",
        "tier",
        "kind",
        "hit blocks",
        "hit tokens",
        "bytes read",
        "bytes written",
        "evictions",
        "demotions",
        "promotions",
        "read GB/s"
    );
    println!("|{}|", "-".repeat(128));
    for t in &r.tiers {
        println!(
            "| {:<8} | {:<6} | {:>10} | {:>11} | {:>13} | {:>13} | {:>9} | {:>9} | {:>10} | {:>9.2} |",
            t.name,
            t.kind,
            t.hit_blocks,
            t.hit_tokens,
            t.bytes_read,
            t.bytes_written,
            t.evictions,
            t.demotions,
            t.promotions,
            t.read_gbps
        );
    }
}

fn store_tier_names(r: &ReplayReport) -> Vec<String> {
    r.tiers.iter().map(|t| t.name.clone()).collect()
}

/// Charts read bandwidth per tier over the replay; says so when it cannot.
pub(crate) fn plot_bandwidth(
    r: &ReplayReport,
    names: &[String],
    dir: &std::path::Path,
    stem: &str,
) {
    let series: Vec<crate::plot::Series> = names
        .iter()
        .enumerate()
        .map(|(i, name)| crate::plot::Series {
            name: name.clone(),
            points: r.timeline.iter().map(|(t, g)| (*t, g[i])).collect(),
        })
        .collect();
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("note: no chart: {e}");
        return;
    }
    crate::plot::line_chart_or_note(
        &dir.join(stem),
        "Read bandwidth per tier",
        "seconds",
        "GB/s",
        &series,
    );
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<ReplayReport> {
    anyhow::ensure!(args.block_tokens > 0, "--block-tokens must be > 0");
    anyhow::ensure!(
        args.prefill_tokens_per_s > 0.0,
        "--prefill-tokens-per-s must be > 0"
    );
    anyhow::ensure!(args.speed >= 0.0, "--speed must be >= 0");
    let trace = super::load(&args.trace)?;
    super::check_block_tokens(&trace, args.block_tokens)?;
    let mut config = match &args.config {
        Some(p) => StoreConfig::from_file(p)?,
        None => StoreConfig {
            data_dir: args.dir.clone(),
            ..StoreConfig::default()
        },
    };
    if let Some(b) = args.block_bytes {
        anyhow::ensure!(b.0 > 0, "--block-bytes must be > 0");
        config.slot_bytes = b;
    }
    config.validate()?;
    let block_bytes = config.slot_bytes.0 as usize;
    let store = build_store(&config, args.simulate).await?;
    let report = replay(&store, &trace, &args, block_bytes).await?;
    drop(store);
    if args.config.is_none() && !args.simulate {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    print_report(&report);
    if let Some(dir) = &args.plots {
        plot_bandwidth(&report, &store_tier_names(&report), dir, "replay-bandwidth");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::generate::{GenArgs, generate};

    fn args(simulate: bool, block_tokens: u64) -> ReplayArgs {
        ReplayArgs {
            trace: PathBuf::from("unused"),
            config: None,
            dir: PathBuf::from("unused"),
            block_tokens,
            block_bytes: None,
            simulate,
            speed: 0.0,
            prefill_tokens_per_s: 1000.0,
            json: None,
            plots: None,
        }
    }

    fn config(dir: &std::path::Path, host: &str, disk: &str, object: &str) -> StoreConfig {
        StoreConfig::from_toml(&format!(
            "data_dir = \"{}\"\nslot_bytes = \"16KiB\"\n\
             [[tier]]\nkind = \"host\"\ncapacity = \"{host}\"\n\
             [[tier]]\nkind = \"disk\"\ncapacity = \"{disk}\"\nqueue_depth = 8\n\
             [[tier]]\nkind = \"object\"\nlocal_dir = \"object\"\ncapacity = \"{object}\"\n",
            dir.display()
        ))
        .unwrap()
    }

    fn rec(ts: u64, ids: &[u64]) -> TraceRecord {
        TraceRecord {
            timestamp: ts,
            input_length: ids.len() as u64 * 512,
            output_length: 1,
            hash_ids: ids.to_vec(),
            ..TraceRecord::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hits_match_a_hand_computed_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let store = build_store(&config(dir.path(), "16MiB", "16MiB", "16MiB"), false)
            .await
            .unwrap();
        // 256-token blocks: 2 per trace id.
        let trace = [
            rec(0, &[1, 2]),
            rec(1, &[1, 3]),
            rec(2, &[1, 2]),
            rec(3, &[4]),
        ];
        let r = replay(&store, &trace, &args(false, 256), 16 << 10)
            .await
            .unwrap();
        // r1: 4 misses; r2: 2 hits (id 1) + 2 misses; r3: 4 hits; r4: 2 misses.
        assert_eq!((r.blocks, r.hit_blocks), (14, 6));
        assert_eq!(r.tiers[0].hit_blocks, 6, "everything fits in host memory");
        assert_eq!(r.tiers[0].hit_tokens, 6 * 256);
        assert_eq!(r.tiers[0].bytes_written, 8 * (16 << 10));
        assert!((r.hit_rate - 6.0 / 14.0).abs() < 1e-9);
        // 6 hit blocks of 256 tokens at 1000 tokens/s, minus the (small) load time.
        assert!(
            r.ttft_saved_s > 1.0 && r.ttft_saved_s <= 1.536,
            "{}",
            r.ttft_saved_s
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_generated_chat_session_hits_what_its_earlier_turns_left() {
        // One session of three turns: system prompt 1024 tokens, messages 256, answers 128.
        let trace = generate(&GenArgs {
            out: PathBuf::from("unused"),
            requests: 3,
            users: 1,
            turns: 3,
            system_prompts: 1,
            system_tokens: 1024,
            user_tokens: 256,
            output_tokens: 128,
            documents: 0,
            document_tokens: 0,
            document_share: 0.0,
            zipf: 1.0,
            rate: 10.0,
            seed: 5,
        })
        .unwrap();
        let lens: Vec<u64> = trace.iter().map(|r| r.input_length).collect();
        assert_eq!(lens, [1280, 1664, 2048]);
        let dir = tempfile::tempdir().unwrap();
        let store = build_store(&config(dir.path(), "16MiB", "16MiB", "16MiB"), false)
            .await
            .unwrap();
        let r = replay(&store, &trace, &args(false, 128), 16 << 10)
            .await
            .unwrap();
        // By hand, in 128-token blocks (10 + 13 + 16 = 39): turn 1 misses all; turn 2
        // shares the system prompt's two full 512-token ids (8 blocks) — its third id
        // differs from turn 1's partial one; turn 3 shares turn 2's first three full ids
        // (12 blocks).
        assert_eq!((r.blocks, r.hit_blocks), (39, 20));
        assert_eq!(r.tiers[0].hit_tokens, 20 * 128);
    }

    #[tokio::test]
    async fn bad_flags_and_traces_get_clear_errors() {
        let err = run(ReplayArgs {
            block_tokens: 0,
            ..args(true, 16)
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--block-tokens"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.jsonl");
        std::fs::write(&bad, "{\"timestamp\": 0, \"input_length\": 10, \"output_length\": 1, \"hash_ids\": [1]}\nnot json\n").unwrap();
        let err = run(ReplayArgs {
            trace: bad,
            ..args(true, 16)
        })
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("bad.jsonl:2"), "{err:#}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn simulated_and_real_replays_agree() {
        let trace = generate(&GenArgs {
            out: PathBuf::from("unused"),
            requests: 120,
            users: 6,
            turns: 3,
            system_prompts: 3,
            system_tokens: 1024,
            user_tokens: 256,
            output_tokens: 128,
            documents: 3,
            document_tokens: 2048,
            document_share: 0.3,
            zipf: 1.0,
            rate: 50.0,
            seed: 3,
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Small tiers, so blocks are evicted, demoted and promoted.
        let cfg = config(dir.path(), "1MiB", "2MiB", "4MiB");
        let real_store = build_store(&cfg, false).await.unwrap();
        let real = replay(&real_store, &trace, &args(false, 128), 16 << 10)
            .await
            .unwrap();
        let sim_store = build_store(&cfg, true).await.unwrap();
        let sim = replay(&sim_store, &trace, &args(true, 128), 16 << 10)
            .await
            .unwrap();
        assert!(
            real.tiers[0].evictions > 0 && real.tiers[1].demotions > 0,
            "the test must exercise eviction"
        );
        assert_eq!(real.hit_blocks, sim.hit_blocks);
        for (a, b) in real.tiers.iter().zip(&sim.tiers) {
            assert_eq!(
                (
                    a.hit_blocks,
                    a.evictions,
                    a.demotions,
                    a.promotions,
                    a.bytes_written
                ),
                (
                    b.hit_blocks,
                    b.evictions,
                    b.demotions,
                    b.promotions,
                    b.bytes_written
                ),
                "tier {}",
                a.name
            );
        }
    }
}

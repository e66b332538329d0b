//! The points of a sweep and how each is measured: from a hit curve, from the
//! exclusive model, or by a simulated replay.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Serialize;
use tierkv_kvstore::{ByteSize, DiskSection, EvictPolicy, HostSection, StoreConfig, TierConfig};

use super::TuneArgs;
use crate::trace::curve::HitCurve;
use crate::trace::policy_sim::{self, Interned, Policy};
use crate::trace::replay::{ReplayArgs, build_store, replay};
use crate::trace::{TraceRecord, block_hashes};

/// How a point's figures were obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// The one-pass hit curve: exact for one tier.
    Curve,
    /// The exclusive host -> disk model of the same pass: an estimate.
    Model,
    /// A simulated replay: exact.
    Simulated,
}

/// One point of the sweep.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Point {
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
    pub(super) fn exact(&self) -> bool {
        self.source != Source::Model
    }
    /// Same block size and capacities.
    pub(super) fn same_capacities(&self, o: &Point) -> bool {
        (self.block_tokens, self.host_bytes, self.disk_bytes)
            == (o.block_tokens, o.host_bytes, o.disk_bytes)
    }
}

pub(super) fn working_set_blocks(trace: &[TraceRecord], block_tokens: u64) -> u64 {
    let set: HashSet<u128> = trace
        .iter()
        .flat_map(|r| block_hashes(r, block_tokens))
        .collect();
    set.len() as u64
}

pub(super) fn config_for(p: &Point, block_bytes: u64, data_dir: PathBuf) -> StoreConfig {
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

/// Largest hit-rate error of the exclusive host -> disk model against the simulation
/// allowed on the generated traces of the tests (0.024 measured when written).
#[cfg(test)]
pub(super) const MODEL_BOUND: f64 = 0.05;

/// Bytes of one host slot and one disk slot at `block_tokens` tokens per block.
pub(super) fn stride(args: &TuneArgs, block_tokens: u64) -> (u64, u64) {
    let block_bytes = block_tokens * args.bytes_per_token;
    (
        block_bytes.div_ceil(4096) * 4096,
        (block_bytes + 64).div_ceil(4096) * 4096,
    )
}

/// Host and disk capacity of a point in blocks, as the store rounds them.
pub(super) fn capacities(args: &TuneArgs, p: &Point) -> (u64, u64) {
    let (host, disk) = stride(args, p.block_tokens);
    (p.host_bytes / host, p.disk_bytes / disk)
}

/// The one-pass curve of `trace` at `bt`, split at every host capacity of `grid`.
pub(super) fn curve_for(
    args: &TuneArgs,
    trace: &[TraceRecord],
    bt: u64,
    grid: &[Point],
) -> HitCurve {
    let caps: Vec<u64> = grid
        .iter()
        .map(|p| p.host_bytes / stride(args, bt).0)
        .collect();
    HitCurve::measure_sampled(trace, bt, &caps, args.sample_rate)
}

/// Every point of the sweep at one block size, not yet measured.
pub(super) fn grid(args: &TuneArgs, trace: &[TraceRecord], bt: u64) -> Vec<Point> {
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
pub(super) fn price(p: &mut Point, args: &TuneArgs, accesses: u64, host_hits: u64, disk_hits: u64) {
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

/// The policy and capacities (in blocks, as the store rounds them) of a point.
pub(super) fn policy_for(p: &Point, args: &TuneArgs) -> Policy {
    let block_bytes = p.block_tokens * args.bytes_per_token;
    let config = config_for(p, block_bytes, args.dir.clone());
    let mut host_blocks = 0;
    let mut disk_blocks = None;
    for tc in &config.tiers {
        match tc {
            TierConfig::Host(h) => host_blocks = config.host_config(h).capacity_blocks(),
            TierConfig::Disk(d) => disk_blocks = Some(config.disk_config(d).capacity_blocks()),
            _ => {}
        }
    }
    Policy {
        host_blocks,
        disk_blocks,
        write_through: p.write_through,
        promote: p.promote,
    }
}

/// Measures a point by replaying the store's policy directly ([`policy_sim`], exact:
/// the same counts as [`simulate`]).
pub(super) fn simulate_policy(p: &mut Point, args: &TuneArgs, blocks: &Interned) {
    let hits = policy_sim::simulate(blocks, policy_for(p, args));
    p.source = Source::Simulated;
    price(p, args, blocks.accesses(), hits.host, hits.disk);
}

/// Measures a point by a simulated replay through the store (exact; the reference
/// [`simulate_policy`] is checked against, and what `--exact` runs).
pub(super) async fn simulate(
    p: &mut Point,
    args: &TuneArgs,
    trace: &[TraceRecord],
) -> anyhow::Result<()> {
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

pub(super) fn progress_bar(n: usize) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(n as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "tune: simulating {bar:40} {pos}/{len} points {elapsed_precise}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress
}

pub(super) fn replay_args(args: &TuneArgs, block_tokens: u64, simulate: bool) -> ReplayArgs {
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

//! `tierkv-bench tier`: put and get throughput and latency of every configured tier,
//! each row beside a baseline measured in the same run (memcpy for host, fio for disk,
//! raw object_store for object), plus `lookup_prefix` against a plain hash set.

mod disk;
mod host;
mod lookup;
mod object;

use anyhow::Context;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use tierkv_kvstore::{ByteSize, StoreConfig, TierConfig};

use tierkv_tiers::{BlockKey, Tier};

use crate::drive::drive;
use crate::report::Measurement;

use crate::report::{self, Row};

#[derive(clap::Args, Debug)]
pub(crate) struct TierArgs {
    /// Store configuration whose tiers are measured (kind, path, queue depth, backend).
    /// Default: the built-in host + disk + object (local directory) tiers under --dir.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Working directory for disk files, objects and fio's file; put it on the
    /// filesystem you want measured. Removed afterwards.
    #[arg(long, default_value = "tierkv-bench-data")]
    pub dir: PathBuf,
    /// Block sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "256KiB,2MiB,16MiB")]
    pub block_sizes: Vec<ByteSize>,
    /// Concurrent requests for the object tier and its baseline.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// I/Os in flight for the disk tier and fio.
    #[arg(long, default_value_t = 16)]
    pub queue_depth: u32,
    /// Bytes moved per row [default: 1GiB, or 128MiB with --quick].
    #[arg(long)]
    pub bytes: Option<ByteSize>,
    /// A short run (under a minute on two cores).
    #[arg(long)]
    pub quick: bool,
    /// Rounds per row, alternating tier and baseline; the median is reported
    /// [default: 5, or 3 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure only these tier kinds (host, disk, object, lookup).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Deterministic pseudo-random payload of `len` bytes.
pub(crate) fn payload(len: usize, seed: u64) -> Bytes {
    tierkv_tiers::testing::payload(seed, len)
}

pub(crate) fn key(i: usize) -> BlockKey {
    BlockKey::new(0xbe9c, i as u128)
}

/// What one row size needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowPlan {
    pub block: usize,
    pub ops: usize,
}

pub(crate) async fn run(args: TierArgs) -> anyhow::Result<Vec<Row>> {
    let mut config = match &args.config {
        Some(path) => StoreConfig::from_file(path)?,
        None => StoreConfig::default(),
    };
    if args.config.is_none() {
        config.data_dir = args.dir.clone();
    }
    let row_bytes = args
        .bytes
        .map(|b| b.0)
        .unwrap_or(if args.quick { 128 << 20 } else { 1 << 30 });
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    // Enough operations for a p99 even with the largest blocks.
    let min_ops = if args.quick { 32 } else { 128 };
    let wanted = |kind: &str| args.only.is_empty() || args.only.iter().any(|o| o == kind);
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let fio = crate::fio::available();
    if let Err(why) = &fio {
        eprintln!("note: {why}");
    }

    let mut rows = Vec::new();
    for size in &args.block_sizes {
        let block = usize::try_from(size.0).context("block size")?;
        anyhow::ensure!(block > 0, "block sizes must be > 0");
        let plan = RowPlan {
            block,
            ops: (row_bytes as usize / block).max(min_ops),
        };
        let data = payload(block, block as u64);
        for tier in &config.tiers {
            let name = tier.section().name().to_string();
            match tier {
                TierConfig::Host(h) if wanted("host") => {
                    let mut tc = config.host_config(h);
                    tc.slot_bytes = block;
                    tc.capacity_bytes = (plan.ops * block.div_ceil(4096) * 4096) as u64;
                    rows.extend(host::bench(&name, tc, plan, &data, rounds).await?);
                }
                TierConfig::Disk(d) if wanted("disk") => {
                    let mut tc = config.disk_config(d);
                    tc.path = args.dir.join(format!("{name}-{block}"));
                    tc.slot_bytes = block;
                    tc.queue_depth = args.queue_depth;
                    let stride = (block + 64).div_ceil(4096) * 4096;
                    tc.capacity_bytes = (plan.ops * stride) as u64;
                    let fio_file = args.dir.join(format!("fio-{block}.dat"));
                    let fio_file = fio.is_ok().then_some(fio_file.as_path());
                    rows.extend(disk::bench(&name, tc, plan, &data, fio_file, rounds).await?);
                }
                TierConfig::Object(o) if wanted("object") => {
                    let mut tc = config.object_config(o);
                    tc.slot_bytes = block;
                    tc.capacity_bytes = (plan.ops * block) as u64;
                    tc.max_concurrency = args.concurrency;
                    tc.prefix = format!("tierkv-bench/{block}");
                    rows.extend(
                        object::bench(&name, tc, plan, &data, args.concurrency, rounds).await?,
                    );
                }
                _ => {}
            }
        }
    }
    if wanted("lookup") {
        rows.push(lookup::bench(if args.quick { 200 } else { 2000 }).await?);
    }
    if args.config.is_none() {
        let _ = std::fs::remove_dir_all(&args.dir);
    }
    report::print_table(&rows);
    report::write_json(&rows, args.json.as_deref())?;
    Ok(rows)
}

/// One round against a tier: `ops` puts then `ops` gets with `concurrency` tasks, then
/// the blocks are removed (untimed) so the next round starts empty.
pub(crate) async fn put_get_round(
    tier: Arc<dyn Tier>,
    ops: usize,
    block: usize,
    concurrency: usize,
    data: &Bytes,
) -> anyhow::Result<(Measurement, Measurement)> {
    let (t, d) = (Arc::clone(&tier), data.clone());
    let put = drive(ops, concurrency, move |i| {
        let (t, d) = (Arc::clone(&t), d.clone());
        async move {
            t.put(key(i), d).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let t = Arc::clone(&tier);
    let get = drive(ops, concurrency, move |i| {
        let t = Arc::clone(&t);
        async move {
            let got = t
                .get(key(i))
                .await?
                .ok_or_else(|| anyhow::anyhow!("{} block {i} missing", t.name()))?;
            Ok(got.len() as u64)
        }
    })
    .await?;
    for i in 0..ops {
        tier.remove(key(i)).await?;
    }
    Ok((put, get))
}

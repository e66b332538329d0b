//! `tierkv-bench gpu` (feature `cuda`): offload (HBM -> pinned host) and onboard (pinned
//! host -> HBM) of scattered KV blocks through the transfer engine, for Qwen3-32B- and
//! Llama-3-8B-shaped KV, block sizes 16 and 128, batches of 1, 16 and 256 blocks, both
//! GPU layouts — beside the ceiling measured in the same run: one contiguous pinned copy
//! of the same bytes. Also the pinned allocation rate of `cuMemHostAlloc` vs mmap +
//! parallel first touch + `cuMemHostRegister`, and HBM -> disk -> HBM through pinned
//! bounce buffers beside a plain O_DIRECT write and read of the same bytes.

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tierkv_tiers::gpu::{
    BlockGeometry, GpuLayout, HbmPool, PinMethod, PinnedBuffer, TransferConfig, TransferEngine,
    disk_path, require_context,
};
use tierkv_tiers::{BlockKey, DiskTier, DiskTierConfig};

#[cfg(test)]
mod store_gpu_tier;

#[derive(clap::Args, Debug)]
pub(crate) struct GpuArgs {
    /// KV shapes: qwen3-32b (64 layers), llama3-8b (32 layers); 8 KV heads, head dim
    /// 128, bf16.
    #[arg(long, value_delimiter = ',', default_value = "qwen3-32b,llama3-8b")]
    pub shapes: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "16,128")]
    pub block_sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub batches: Vec<usize>,
    /// Timed repetitions per row (the median is reported).
    #[arg(long, default_value_t = 7)]
    pub repeats: usize,
    /// GiB pinned by each allocation method.
    #[arg(long, default_value_t = 32)]
    pub pin_gib: usize,
    /// Blocks (Llama-3-8B shape, block size 16) in the disk round trip; 0 skips it.
    #[arg(long, default_value_t = 256)]
    pub disk_blocks: usize,
    /// io_uring threads of the disk tier in the disk round trip.
    #[arg(long, default_value_t = 1)]
    pub disk_io_threads: usize,
    /// Directory of the disk tier and the O_DIRECT baseline file.
    #[arg(long, default_value = "target/bench/gpu")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
pub(crate) struct TransferRow {
    pub shape: String,
    pub block_size: usize,
    pub layout: String,
    pub batch: usize,
    pub block_bytes: usize,
    pub offload_gbps: f64,
    pub offload_ms: f64,
    pub onboard_gbps: f64,
    pub onboard_ms: f64,
    /// One contiguous pinned copy of the same bytes, device to host / host to device.
    pub ceiling_d2h_gbps: f64,
    pub ceiling_h2d_gbps: f64,
    pub offload_ratio: f64,
    pub onboard_ratio: f64,
    /// Whether the default configuration moves this transfer in one zero-copy kernel.
    pub default_zero_copy: bool,
    /// Layer-separate only: the staged path and the zero-copy path, each forced.
    pub staged_offload_gbps: Option<f64>,
    pub staged_onboard_gbps: Option<f64>,
    pub zero_copy_offload_gbps: Option<f64>,
    pub zero_copy_onboard_gbps: Option<f64>,
}

#[derive(Serialize, Debug)]
pub(crate) struct PinRow {
    pub method: String,
    pub gib: usize,
    pub seconds: f64,
    /// Of which touching the pages (mmap method).
    pub touch_seconds: f64,
    pub gib_per_s: f64,
}

/// The naive baseline: one copy per 64 KiB piece.
#[derive(Serialize, Debug)]
pub(crate) struct NaiveRow {
    pub shape: String,
    pub block_size: usize,
    pub batch: usize,
    pub piece_bytes: usize,
    pub per_piece_gbps: f64,
    pub engine_gbps: f64,
    pub speedup: f64,
}

#[derive(Serialize, Debug)]
pub(crate) struct DiskRow {
    pub blocks: usize,
    pub bytes: usize,
    pub hbm_to_disk_gbps: f64,
    pub disk_to_hbm_gbps: f64,
    /// Raw O_DIRECT, sequential 16 MiB requests, one at a time.
    pub o_direct_write_gbps: f64,
    pub o_direct_read_gbps: f64,
    /// Raw O_DIRECT, one block per request, as many in flight as the disk tier keeps.
    pub o_direct_parallel_write_gbps: f64,
    pub o_direct_parallel_read_gbps: f64,
    /// Against the faster of the two raw baselines.
    pub write_ratio: f64,
    pub read_ratio: f64,
}

#[derive(Serialize, Debug)]
pub(crate) struct Report {
    pub device: String,
    pub transfers: Vec<TransferRow>,
    pub pinning: Vec<PinRow>,
    pub naive: Vec<NaiveRow>,
    pub disk: Option<DiskRow>,
}

/// One offload then one onboard of `ids` through `engine`, into and out of the first
/// `bytes` of `host`: their times in seconds.
async fn round(
    engine: &TransferEngine,
    pool: &HbmPool,
    ids: &[u32],
    host: &mut PinnedBuffer,
    bb: usize,
    bytes: usize,
) -> anyhow::Result<(f64, f64)> {
    let s = {
        let mut dst: Vec<&mut [u8]> = host.as_mut_slice()[..bytes].chunks_exact_mut(bb).collect();
        engine.offload(pool, ids, &mut dst).await?
    };
    let src: Vec<&[u8]> = host.as_slice()[..bytes].chunks_exact(bb).collect();
    let t = engine.onboard(pool, ids, &src).await?;
    Ok((s.elapsed.as_secs_f64(), t.elapsed.as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn layers_of(shape: &str) -> anyhow::Result<usize> {
    match shape {
        "qwen3-32b" => Ok(64),
        "llama3-8b" => Ok(32),
        o => anyhow::bail!("shape {o:?}: expected qwen3-32b or llama3-8b"),
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

/// Distinct pseudo-random block ids (scattered, as an engine's would be).
fn scattered(n: usize, of: usize, seed: u64) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..of as u32).collect();
    let mut x = seed | 1;
    for i in (1..ids.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
    ids.truncate(n);
    ids
}

pub(crate) async fn run(args: GpuArgs) -> anyhow::Result<()> {
    let ctx = require_context()?;
    let device = cudarc::driver::result::device::get(0)
        .and_then(cudarc::driver::result::device::get_name)
        .unwrap_or_else(|_| "GPU 0".into());
    let engine = TransferEngine::new(&ctx, TransferConfig::default())?;
    // The two paths of layer-separate transfers, each forced, beside the default.
    let staged = TransferEngine::new(
        &ctx,
        TransferConfig {
            zero_copy_bytes: 0,
            ..TransferConfig::default()
        },
    )?;
    let zero_copy = TransferEngine::new(
        &ctx,
        TransferConfig {
            zero_copy_bytes: usize::MAX,
            ..TransferConfig::default()
        },
    )?;
    let mut transfers = Vec::new();
    let max_batch = args.batches.iter().copied().max().unwrap_or(1);
    for shape in &args.shapes {
        let layers = layers_of(shape)?;
        for &bs in &args.block_sizes {
            let g = BlockGeometry::new(layers, bs, 8, 128, 2);
            let bb = g.block_bytes();
            let mut host = PinnedBuffer::new(&ctx, max_batch * bb, PinMethod::HostAlloc)
                .context("pinned host buffer")?;
            host.as_mut_slice().fill(0x3c);
            // The ceiling's device side: one contiguous buffer of the largest batch.
            let contiguous = HbmPool::new(&ctx, GpuLayout::BlockContiguous, g, max_batch)?;
            for layout in [GpuLayout::LayerSeparate, GpuLayout::BlockContiguous] {
                let n_pool = 2 * max_batch;
                let pool = HbmPool::new(&ctx, layout, g, n_pool)?;
                for b in 0..n_pool as u32 {
                    pool.fill_block(b, (b as u8) | 1)?;
                }
                for &batch in &args.batches {
                    let bytes = batch * bb;
                    // Both paths of a layer-separate pool, beside the default's pick.
                    let both = layout == GpuLayout::LayerSeparate;
                    let mut m: [Vec<f64>; 8] = Default::default();
                    for rep in 0..args.repeats + 1 {
                        let ids = scattered(batch, n_pool, 0x9e37 + rep as u64);
                        let mut times =
                            vec![round(&engine, &pool, &ids, &mut host, bb, bytes).await?];
                        if both {
                            times.push(round(&staged, &pool, &ids, &mut host, bb, bytes).await?);
                            times.push(round(&zero_copy, &pool, &ids, &mut host, bb, bytes).await?);
                        }
                        let dev = contiguous.block_ptr(0)?;
                        // SAFETY: `dev` starts `max_batch` blocks of device memory and
                        // `host` holds as many; nothing else uses either meanwhile.
                        let (c1, c2) = unsafe {
                            (
                                engine
                                    .contiguous_copy(dev, host.as_mut_ptr(), bytes, true)
                                    .await?,
                                engine
                                    .contiguous_copy(dev, host.as_mut_ptr(), bytes, false)
                                    .await?,
                            )
                        };
                        if rep > 0 {
                            // The first repetition warms up (module load, page mapping).
                            m[0].push(c1.as_secs_f64());
                            m[1].push(c2.as_secs_f64());
                            for (i, (off, on)) in times.into_iter().enumerate() {
                                m[2 + 2 * i].push(off);
                                m[3 + 2 * i].push(on);
                            }
                        }
                    }
                    let [d2h, h2d, off, on, s_off, s_on, z_off, z_on] = m.map(median);
                    let rate = |t: f64| (both && t.is_finite()).then(|| bytes as f64 / t / 1e9);
                    let row = TransferRow {
                        shape: shape.clone(),
                        block_size: bs,
                        layout: layout.as_str().into(),
                        batch,
                        block_bytes: bb,
                        offload_gbps: bytes as f64 / off / 1e9,
                        offload_ms: off * 1e3,
                        onboard_gbps: bytes as f64 / on / 1e9,
                        onboard_ms: on * 1e3,
                        ceiling_d2h_gbps: bytes as f64 / d2h / 1e9,
                        ceiling_h2d_gbps: bytes as f64 / h2d / 1e9,
                        offload_ratio: d2h / off,
                        onboard_ratio: h2d / on,
                        default_zero_copy: both
                            && bytes <= TransferConfig::default().zero_copy_bytes,
                        staged_offload_gbps: rate(s_off),
                        staged_onboard_gbps: rate(s_on),
                        zero_copy_offload_gbps: rate(z_off),
                        zero_copy_onboard_gbps: rate(z_on),
                    };
                    eprintln!("{row:?}");
                    transfers.push(row);
                }
            }
        }
    }

    let mut pinning = Vec::new();
    let threads = std::thread::available_parallelism().map_or(8, |n| n.get());
    for method in [
        PinMethod::HostAlloc,
        PinMethod::MmapTouchRegister { threads },
    ] {
        let buf = PinnedBuffer::new(&ctx, args.pin_gib << 30, method)
            .with_context(|| format!("pinning {} GiB with {}", args.pin_gib, method.label()))?;
        let s = buf.took.as_secs_f64();
        let touch_seconds = buf.touch.as_secs_f64();
        drop(buf);
        pinning.push(PinRow {
            method: method.label(),
            gib: args.pin_gib,
            seconds: s,
            touch_seconds,
            gib_per_s: args.pin_gib as f64 / s,
        });
    }

    let naive = naive_rows(&args, &ctx, &engine).await?;
    let disk = if args.disk_blocks > 0 {
        Some(disk_round_trip(&args, &ctx, &engine).await?)
    } else {
        None
    };
    let report = Report {
        device,
        transfers,
        pinning,
        naive,
        disk,
    };
    print_report(&report);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Per-piece copies vs the transfer engine, layer-separate, 64 KiB pieces (block size 16).
async fn naive_rows(
    args: &GpuArgs,
    ctx: &std::sync::Arc<tierkv_tiers::gpu::CudaContext>,
    engine: &TransferEngine,
) -> anyhow::Result<Vec<NaiveRow>> {
    let mut rows = Vec::new();
    for shape in &args.shapes {
        let g = BlockGeometry::new(layers_of(shape)?, 16, 8, 128, 2);
        let (batch, bb) = (16usize, g.block_bytes());
        let pool = HbmPool::new(ctx, GpuLayout::LayerSeparate, g, 4 * batch)?;
        for b in 0..(4 * batch) as u32 {
            pool.fill_block(b, (b as u8) | 1)?;
        }
        let mut host = PinnedBuffer::new(ctx, batch * bb, PinMethod::HostAlloc)?;
        let (mut naive, mut fast) = (Vec::new(), Vec::new());
        for rep in 0..args.repeats + 1 {
            let ids = scattered(batch, 4 * batch, 31 + rep as u64);
            let mut dst: Vec<&mut [u8]> = host.as_mut_slice().chunks_exact_mut(bb).collect();
            let n = engine.offload_per_piece(&pool, &ids, &mut dst).await?;
            let f = engine.offload(&pool, &ids, &mut dst).await?;
            if rep > 0 {
                naive.push(n.elapsed.as_secs_f64());
                fast.push(f.elapsed.as_secs_f64());
            }
        }
        let (n, f) = (median(naive), median(fast));
        rows.push(NaiveRow {
            shape: shape.clone(),
            block_size: 16,
            batch,
            piece_bytes: g.layer_bytes,
            per_piece_gbps: (batch * bb) as f64 / n / 1e9,
            engine_gbps: (batch * bb) as f64 / f / 1e9,
            speedup: n / f,
        });
    }
    Ok(rows)
}

/// Rounds of the disk round trip (tier and both raw baselines alternate): medians.
const DISK_ROUNDS: usize = 3;

async fn disk_round_trip(
    args: &GpuArgs,
    ctx: &std::sync::Arc<tierkv_tiers::gpu::CudaContext>,
    engine: &TransferEngine,
) -> anyhow::Result<DiskRow> {
    let g = BlockGeometry::new(32, 16, 8, 128, 2);
    let (n, bb) = (args.disk_blocks, g.block_bytes());
    let bytes = n * bb;
    let pool = HbmPool::new(ctx, GpuLayout::LayerSeparate, g, n)?;
    let dir = args.dir.join("disk-tier");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let disk = DiskTier::open(DiskTierConfig {
        path: dir.clone(),
        capacity_bytes: (bytes * (DISK_ROUNDS + 1)) as u64,
        slot_bytes: bb,
        io_threads: args.disk_io_threads.max(1),
        ..DiskTierConfig::default()
    })?;
    // Twice the I/O the tier keeps in flight: half on disk, half being copied.
    let in_flight = DiskTierConfig::default().queue_depth as usize * args.disk_io_threads.max(1);
    let mut staging = disk_path::DiskStaging::new(ctx, &disk, 2 * in_flight)?;
    let blocks = scattered(n, n, 7);
    let path = args.dir.join("o_direct.dat");
    let mut buf = PinnedBuffer::new(ctx, 16 << 20, PinMethod::HostAlloc)?;
    buf.as_mut_slice().fill(0x77);
    let chunks = bytes.div_ceil(16 << 20);
    let mut m: [Vec<f64>; 6] = Default::default();
    for round in 0..DISK_ROUNDS {
        let fill = |b: u32| ((b as u8) ^ (round as u8 * 37)) | 1;
        for b in 0..n as u32 {
            pool.fill_block(b, fill(b))?;
        }
        let keys: Vec<BlockKey> = blocks
            .iter()
            .map(|&b| BlockKey {
                namespace: 7 + round as u64,
                hash: 1 + b as u128,
            })
            .collect();
        let w = disk_path::hbm_to_disk(engine, &pool, &blocks, &keys, &disk, &mut staging).await?;
        for b in 0..n as u32 {
            pool.fill_block(b, 0)?;
        }
        let r = disk_path::disk_to_hbm(engine, &pool, &blocks, &keys, &disk, &mut staging).await?;
        for b in 0..n as u32 {
            if pool.read_block(b)?.iter().any(|&x| x != fill(b)) {
                anyhow::bail!("disk round trip: block {b} came back different");
            }
        }
        m[0].push(w.gb_per_s());
        m[1].push(r.gb_per_s());

        // Baseline: the same bytes written and read with O_DIRECT in 16 MiB requests.
        let f = create_direct(&path)?;
        let started = Instant::now();
        for i in 0..chunks {
            std::os::unix::fs::FileExt::write_all_at(&f, buf.as_slice(), (i * (16 << 20)) as u64)?;
        }
        f.sync_all()?;
        m[2].push(gbps(chunks * (16 << 20), started.elapsed()));
        let started = Instant::now();
        for i in 0..chunks {
            std::os::unix::fs::FileExt::read_exact_at(
                &f,
                buf.as_mut_slice(),
                (i * (16 << 20)) as u64,
            )?;
        }
        m[3].push(gbps(chunks * (16 << 20), started.elapsed()));
        drop(f);
        let _ = std::fs::remove_file(&path);
        // And one block per request with the tier's I/O in flight, from as many threads.
        let (pw, pr) = o_direct_parallel(&path, n, bb, in_flight)?;
        let _ = std::fs::remove_file(&path);
        m[4].push(gbps(n * bb, pw));
        m[5].push(gbps(n * bb, pr));
    }
    let [w, r, ow, or, pw, pr] = m.map(median_f64);
    Ok(DiskRow {
        blocks: n,
        bytes,
        hbm_to_disk_gbps: w,
        disk_to_hbm_gbps: r,
        o_direct_write_gbps: ow,
        o_direct_read_gbps: or,
        o_direct_parallel_write_gbps: pw,
        o_direct_parallel_read_gbps: pr,
        write_ratio: w / ow.max(pw),
        read_ratio: r / or.max(pr),
    })
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A new, empty file opened for O_DIRECT reads and writes (the raw baselines).
fn create_direct(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Writes then reads `n` blocks of `bb` bytes (a fresh file, then synced) with
/// O_DIRECT from `threads` threads, block `i` at offset `i * bb` (rounded up to 4 KiB):
/// (write time, read time).
fn o_direct_parallel(
    path: &std::path::Path,
    n: usize,
    bb: usize,
    threads: usize,
) -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
    let stride = bb.div_ceil(4096) * 4096;
    let f = create_direct(path)?;
    let run = |write: bool| -> anyhow::Result<std::time::Duration> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    scope.spawn(|| -> std::io::Result<()> {
                        let mut buf = tierkv_tiers::AlignedBuf::new(stride);
                        buf.as_mut_slice().fill(0x5a);
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if i >= n {
                                return Ok(());
                            }
                            let at = (i * stride) as u64;
                            if write {
                                std::os::unix::fs::FileExt::write_all_at(&f, buf.as_slice(), at)?;
                            } else {
                                std::os::unix::fs::FileExt::read_exact_at(
                                    &f,
                                    buf.as_mut_slice(),
                                    at,
                                )?;
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join()
                    .map_err(|_| anyhow::anyhow!("an O_DIRECT baseline thread panicked"))??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        if write {
            f.sync_all()?;
        }
        Ok(started.elapsed())
    };
    let w = run(true)?;
    let r = run(false)?;
    Ok((w, r))
}

fn print_report(r: &Report) {
    println!("tierkv-bench gpu on {}", r.device);
    println!(
        "| shape | block | layout | batch | path | offload GB/s | ms | ceiling D2H GB/s | ratio | onboard GB/s | ms | ceiling H2D GB/s | ratio | staged off/on GB/s | zero-copy off/on GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let pair = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{a:.1}/{b:.1}"),
        _ => "-".into(),
    };
    for x in &r.transfers {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.3} | {:.1} | {:.2}x | {:.1} | {:.3} | {:.1} | {:.2}x | {} | {} |",
            x.shape,
            x.block_size,
            x.layout,
            x.batch,
            if x.default_zero_copy {
                "zero-copy"
            } else {
                "staged"
            },
            x.offload_gbps,
            x.offload_ms,
            x.ceiling_d2h_gbps,
            x.offload_ratio,
            x.onboard_gbps,
            x.onboard_ms,
            x.ceiling_h2d_gbps,
            x.onboard_ratio,
            pair(x.staged_offload_gbps, x.staged_onboard_gbps),
            pair(x.zero_copy_offload_gbps, x.zero_copy_onboard_gbps)
        );
    }
    println!("| pinning method | GiB | s | of which touch s | GiB/s |");
    println!("|---|---|---|---|---|");
    for p in &r.pinning {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} |",
            p.method, p.gib, p.seconds, p.touch_seconds, p.gib_per_s
        );
    }
    println!(
        "| shape | batch | piece bytes | one copy per piece GB/s | transfer engine GB/s | speed-up |"
    );
    println!("|---|---|---|---|---|---|");
    for n in &r.naive {
        println!(
            "| {} bs{} | {} | {} | {:.1} | {:.1} | {:.1}x |",
            n.shape,
            n.block_size,
            n.batch,
            n.piece_bytes,
            n.per_piece_gbps,
            n.engine_gbps,
            n.speedup
        );
    }
    if let Some(d) = &r.disk {
        println!(
            "| disk path | bytes | GB/s | O_DIRECT 16 MiB x1 GB/s | O_DIRECT block x queue depth GB/s | ratio (to the faster) |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| HBM -> disk | {} | {:.2} | {:.2} (write) | {:.2} (write) | {:.2}x |",
            d.bytes,
            d.hbm_to_disk_gbps,
            d.o_direct_write_gbps,
            d.o_direct_parallel_write_gbps,
            d.write_ratio
        );
        println!(
            "| disk -> HBM | {} | {:.2} | {:.2} (read) | {:.2} (read) | {:.2}x |",
            d.bytes,
            d.disk_to_hbm_gbps,
            d.o_direct_read_gbps,
            d.o_direct_parallel_read_gbps,
            d.read_ratio
        );
    }
}

//! GPU tier tests (feature `cuda`; they need a GPU, so CI builds them and the GPU
//! machine runs them). Random KV in both layouts, a random subset of blocks from several
//! interleaved sequences offloaded to pinned host memory, the device copies scribbled
//! over, the blocks onboarded back: everything must match bit for bit — for block sizes
//! 16 and 128 and 2-byte dtypes (bf16, fp16). Also the disk round trip and the pinned
//! host tier.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure
#![cfg(feature = "cuda")]

use std::sync::Arc;

use tierkv_tiers::gpu::{
    BlockGeometry, CudaContext, EngineStream, GpuLayout, HbmPool, PinMethod, PinnedBuffer,
    TransferConfig, TransferEngine, disk_path, require_context,
};
use tierkv_tiers::{BlockKey, DiskTier, DiskTierConfig, HostTier, HostTierConfig, Tier};

/// xorshift: reproducible random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn ctx() -> Arc<CudaContext> {
    require_context().expect("these tests need a GPU (run them on the GPU machine)")
}

/// A pool filled with random blocks; returns it and each block's bytes (store layout).
fn random_pool(
    ctx: &Arc<CudaContext>,
    layout: GpuLayout,
    g: BlockGeometry,
    n: usize,
    rng: &mut Rng,
) -> (HbmPool, Vec<Vec<u8>>) {
    let pool = HbmPool::new(ctx, layout, g, n).expect("pool");
    let mut blocks = Vec::with_capacity(n);
    for b in 0..n {
        let mut data = vec![0u8; g.block_bytes()];
        rng.fill(&mut data);
        pool.write_block(b as u32, &data).expect("write");
        blocks.push(data);
    }
    (pool, blocks)
}

/// Blocks of three "sequences" interleaved (a request batch as an engine would offload
/// it): distinct, in no particular order.
fn interleaved_subset(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut free: Vec<u32> = (0..n as u32).collect();
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); 3];
    for s in seqs.iter_mut() {
        for _ in 0..(n / 6).max(1) {
            let i = rng.below(free.len());
            s.push(free.swap_remove(i));
        }
    }
    let mut out = Vec::new();
    for k in 0..seqs[0].len() {
        for s in &seqs {
            if let Some(&b) = s.get(k) {
                out.push(b);
            }
        }
    }
    out
}

/// How a round trip's copies are made: through staging, or (layer-separate, pinned
/// host memory) in one zero-copy kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Staged,
    ZeroCopy,
}

async fn round_trip(
    layout: GpuLayout,
    block_size: usize,
    staging_bytes: usize,
    path: Path,
    seed: u64,
) {
    let ctx = ctx();
    let mut rng = Rng(seed);
    // 2-byte elements: the same bytes whether they are bf16 or fp16.
    let g = BlockGeometry::new(4, block_size, 8, 128, 2);
    let n = 48;
    let (pool, truth) = random_pool(&ctx, layout, g, n, &mut rng);
    let engine = TransferEngine::new(
        &ctx,
        TransferConfig {
            staging_bytes,
            zero_copy_bytes: match path {
                Path::Staged => 0,
                Path::ZeroCopy => usize::MAX,
            },
            ..TransferConfig::default()
        },
    )
    .expect("engine");
    // Block-contiguous blocks are single runs: always copy-engine copies.
    let zero_copy = path == Path::ZeroCopy && layout == GpuLayout::LayerSeparate;
    let subset = interleaved_subset(n, &mut rng);
    let bb = g.block_bytes();
    let mut host =
        PinnedBuffer::new(&ctx, subset.len() * bb, PinMethod::HostAlloc).expect("pinned");
    host.as_mut_slice().fill(0x5a);
    {
        let mut dst: Vec<&mut [u8]> = host.as_mut_slice().chunks_exact_mut(bb).collect();
        let s = engine
            .offload(&pool, &subset, &mut dst)
            .await
            .expect("offload");
        assert_eq!(s.blocks, subset.len());
        assert_eq!(s.zero_copy, zero_copy, "{path:?} offload");
    }
    for (i, &b) in subset.iter().enumerate() {
        assert!(
            host.as_slice()[i * bb..(i + 1) * bb] == truth[b as usize][..],
            "{layout:?} bs {block_size}: offloaded block {b} differs"
        );
    }
    for &b in &subset {
        pool.fill_block(b, 0xab).expect("scribble");
    }
    assert_ne!(
        pool.read_block(subset[0]).expect("read"),
        truth[subset[0] as usize]
    );
    let src: Vec<&[u8]> = host.as_slice().chunks_exact(bb).collect();
    let s = engine.onboard(&pool, &subset, &src).await.expect("onboard");
    assert_eq!(s.zero_copy, zero_copy, "{path:?} onboard");
    for (b, want) in truth.iter().enumerate() {
        assert!(
            pool.read_block(b as u32).expect("read") == *want,
            "{layout:?} bs {block_size} {path:?}: block {b} differs after the round trip"
        );
    }
}

#[tokio::test]
async fn layer_separate_round_trip_block_16() {
    round_trip(GpuLayout::LayerSeparate, 16, 256 << 20, Path::Staged, 1).await;
}

#[tokio::test]
async fn layer_separate_round_trip_block_16_zero_copy() {
    round_trip(GpuLayout::LayerSeparate, 16, 256 << 20, Path::ZeroCopy, 11).await;
}

#[tokio::test]
async fn layer_separate_round_trip_block_128_zero_copy() {
    round_trip(GpuLayout::LayerSeparate, 128, 256 << 20, Path::ZeroCopy, 12).await;
}

#[tokio::test]
async fn layer_separate_round_trip_block_128() {
    round_trip(GpuLayout::LayerSeparate, 128, 256 << 20, Path::Staged, 2).await;
}

#[tokio::test]
async fn layer_separate_round_trip_in_several_staging_rounds() {
    // Staging of 3 blocks: the 24 blocks go through in 8 rounds.
    let g = BlockGeometry::new(4, 16, 8, 128, 2);
    round_trip(
        GpuLayout::LayerSeparate,
        16,
        3 * g.block_bytes(),
        Path::Staged,
        3,
    )
    .await;
}

#[tokio::test]
async fn block_contiguous_round_trip_block_16() {
    round_trip(GpuLayout::BlockContiguous, 16, 256 << 20, Path::ZeroCopy, 4).await;
}

#[tokio::test]
async fn block_contiguous_round_trip_block_128() {
    round_trip(GpuLayout::BlockContiguous, 128, 256 << 20, Path::Staged, 5).await;
}

/// Three blocks offloaded into `host` and onboarded back out of it: bit-identical,
/// and through the zero-copy path exactly when `zero_copy` says so.
async fn small_round_trip(host: &mut [u8], zero_copy: bool, seed: u64) {
    let ctx = ctx();
    let mut rng = Rng(seed);
    let g = BlockGeometry::new(4, 16, 8, 128, 2);
    let (pool, truth) = random_pool(&ctx, GpuLayout::LayerSeparate, g, 8, &mut rng);
    let engine = TransferEngine::new(&ctx, TransferConfig::default()).expect("engine");
    let bb = g.block_bytes();
    let ids = [5u32, 1, 6];
    {
        let mut dst: Vec<&mut [u8]> = host.chunks_exact_mut(bb).collect();
        let s = engine
            .offload(&pool, &ids, &mut dst)
            .await
            .expect("offload");
        assert_eq!(s.zero_copy, zero_copy, "offload path");
    }
    for (i, &b) in ids.iter().enumerate() {
        assert!(
            host[i * bb..(i + 1) * bb] == truth[b as usize][..],
            "block {b}"
        );
    }
    for &b in &ids {
        pool.fill_block(b, 0).expect("scribble");
    }
    let src: Vec<&[u8]> = host.chunks_exact(bb).collect();
    let s = engine.onboard(&pool, &ids, &src).await.expect("onboard");
    assert_eq!(s.zero_copy, zero_copy, "onboard path");
    for (b, want) in truth.iter().enumerate() {
        assert!(
            pool.read_block(b as u32).expect("read") == *want,
            "block {b}"
        );
    }
}

#[tokio::test]
async fn pageable_host_memory_is_staged_even_for_a_small_transfer() {
    // Plain heap memory the driver never mapped: the kernel could not reach it.
    let bb = BlockGeometry::new(4, 16, 8, 128, 2).block_bytes();
    small_round_trip(&mut vec![0u8; 3 * bb], false, 21).await;
}

#[tokio::test]
async fn registered_host_memory_takes_the_zero_copy_path() {
    // The host tier's slab is pinned this way (mmap + cuMemHostRegister).
    let bb = BlockGeometry::new(4, 16, 8, 128, 2).block_bytes();
    let mut host = PinnedBuffer::new(&ctx(), 3 * bb, PinMethod::MmapTouchRegister { threads: 2 })
        .expect("pinned");
    small_round_trip(host.as_mut_slice(), true, 22).await;
}

#[tokio::test]
async fn bad_requests_are_errors_not_crashes() {
    let ctx = ctx();
    let g = BlockGeometry::new(2, 16, 8, 128, 2);
    let pool = HbmPool::new(&ctx, GpuLayout::LayerSeparate, g, 4).expect("pool");
    let engine = TransferEngine::new(&ctx, TransferConfig::default()).expect("engine");
    let mut small = vec![0u8; 10];
    let mut dst: Vec<&mut [u8]> = vec![&mut small];
    assert!(
        engine.offload(&pool, &[0], &mut dst).await.is_err(),
        "wrong size"
    );
    let mut ok = vec![0u8; g.block_bytes()];
    let mut dst: Vec<&mut [u8]> = vec![&mut ok];
    assert!(
        engine.offload(&pool, &[9], &mut dst).await.is_err(),
        "block out of range"
    );
    assert!(
        BlockGeometry {
            num_layers: 2,
            layer_bytes: 10
        }
        .validate()
        .is_err()
    );
}

#[tokio::test]
async fn hbm_to_disk_and_back() {
    let ctx = ctx();
    let mut rng = Rng(7);
    let g = BlockGeometry::new(4, 16, 8, 128, 2);
    let n = 20;
    let (pool, truth) = random_pool(&ctx, GpuLayout::LayerSeparate, g, n, &mut rng);
    let engine = TransferEngine::new(&ctx, TransferConfig::default()).expect("engine");
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = DiskTier::open(DiskTierConfig {
        path: dir.path().to_path_buf(),
        capacity_bytes: 64 << 20,
        slot_bytes: g.block_bytes(),
        ..DiskTierConfig::default()
    })
    .expect("disk tier");
    // Fewer staging slots than blocks: buffers are reused while others are on disk.
    let mut staging = disk_path::DiskStaging::new(&ctx, &disk, 6).expect("staging");
    let blocks: Vec<u32> = (0..n as u32).rev().collect();
    let keys: Vec<BlockKey> = blocks
        .iter()
        .map(|&b| BlockKey {
            namespace: 1,
            hash: 1000 + b as u128,
        })
        .collect();
    disk_path::hbm_to_disk(&engine, &pool, &blocks, &keys, &disk, &mut staging)
        .await
        .expect("to disk");
    for (&b, &k) in blocks.iter().zip(&keys) {
        let got = disk.get(k).await.expect("get").expect("stored");
        assert!(
            got[..] == truth[b as usize][..],
            "block {b} on disk differs"
        );
        pool.fill_block(b, 0).expect("scribble");
    }
    disk_path::disk_to_hbm(&engine, &pool, &blocks, &keys, &disk, &mut staging)
        .await
        .expect("from disk");
    for (b, want) in truth.iter().enumerate() {
        assert!(
            pool.read_block(b as u32).expect("read") == *want,
            "block {b} after disk"
        );
    }
    // A block the disk does not hold is an error, and the staging stays whole for
    // the next transfer.
    let missing = [BlockKey {
        namespace: 1,
        hash: 99_999,
    }];
    assert!(
        disk_path::disk_to_hbm(&engine, &pool, &[0], &missing, &disk, &mut staging)
            .await
            .is_err()
    );
    // A damaged block on disk is refused, never copied into HBM.
    let off = disk.slot_offset(keys[0]).expect("on disk");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(disk.data_file())
        .expect("data file");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5a], off + 64 + 100).expect("damage");
    file.sync_all().expect("sync");
    pool.fill_block(blocks[0], 7).expect("scribble");
    assert!(
        disk_path::disk_to_hbm(
            &engine,
            &pool,
            &blocks[..1],
            &keys[..1],
            &disk,
            &mut staging
        )
        .await
        .is_err()
    );
    assert!(
        pool.read_block(blocks[0])
            .expect("read")
            .iter()
            .all(|&x| x == 7),
        "nothing of a damaged block reached HBM"
    );
    disk_path::disk_to_hbm(
        &engine,
        &pool,
        &blocks[1..],
        &keys[1..],
        &disk,
        &mut staging,
    )
    .await
    .expect("the staging is whole after errors");
}

#[test]
fn host_tier_is_pinned_with_a_gpu() {
    let _ = ctx();
    let tier = HostTier::new(HostTierConfig {
        capacity_bytes: 64 << 20,
        ..HostTierConfig::default()
    })
    .expect("host tier");
    assert!(tier.is_pinned(), "the slab should be registered with CUDA");
    let unpinned = HostTier::new(HostTierConfig {
        capacity_bytes: 8 << 20,
        pin: false,
        ..HostTierConfig::default()
    })
    .expect("host tier");
    assert!(!unpinned.is_pinned());
    assert_eq!(tier.capacity_blocks(), 32);
}

#[tokio::test]
async fn consecutive_blocks_round_trip_through_merged_copies() {
    // Consecutive block ids into a contiguous host buffer: both sides of the copies
    // continue each other, so the engine merges them into one copy per run.
    let ctx = ctx();
    let mut rng = Rng(11);
    let g = BlockGeometry::new(3, 16, 8, 128, 2);
    for layout in [GpuLayout::BlockContiguous, GpuLayout::LayerSeparate] {
        let (pool, truth) = random_pool(&ctx, layout, g, 24, &mut rng);
        let engine = TransferEngine::new(&ctx, TransferConfig::default()).expect("engine");
        let ids: Vec<u32> = (5..17).chain([2, 3]).collect();
        let bb = g.block_bytes();
        let mut host = vec![0u8; ids.len() * bb];
        {
            let mut dst: Vec<&mut [u8]> = host.chunks_exact_mut(bb).collect();
            engine
                .offload(&pool, &ids, &mut dst)
                .await
                .expect("offload");
        }
        for (i, &b) in ids.iter().enumerate() {
            assert!(
                host[i * bb..(i + 1) * bb] == truth[b as usize][..],
                "{layout:?} block {b}"
            );
            pool.fill_block(b, 0).expect("scribble");
        }
        let src: Vec<&[u8]> = host.chunks_exact(bb).collect();
        engine.onboard(&pool, &ids, &src).await.expect("onboard");
        for (b, want) in truth.iter().enumerate() {
            assert!(
                pool.read_block(b as u32).expect("read") == *want,
                "{layout:?} block {b}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_wise_offload_lands_every_layer_of_every_block() {
    let ctx = ctx();
    let mut rng = Rng(13);
    let g = BlockGeometry::new(6, 16, 8, 128, 2);
    let n = 24;
    let (pool, truth) = random_pool(&ctx, GpuLayout::LayerSeparate, g, n, &mut rng);
    let engine = Arc::new(TransferEngine::new(&ctx, TransferConfig::default()).expect("engine"));
    let subset = interleaved_subset(n, &mut rng);
    let bb = g.block_bytes();
    let stream = EngineStream::default_stream();
    for round in 0..3 {
        // More jobs than lanes, one after another, as consecutive steps.
        let mut host =
            PinnedBuffer::new(&ctx, subset.len() * bb, PinMethod::HostAlloc).expect("pinned");
        let base = host.as_mut_ptr() as usize;
        let addrs: Vec<usize> = (0..subset.len()).map(|i| base + i * bb).collect();
        // SAFETY: `pool` outlives the job.
        let mut job = unsafe { engine.begin_layered_offload(&pool, &subset, 1) }
            .await
            .expect("begin");
        assert_eq!(job.layers(), 6);
        // Layers in an odd order, one skipped (finish copies it), one twice.
        for l in [3, 0, 5, 1, 3, 2] {
            let ev = stream.record(&ctx).expect("event");
            job.layer(l, &ev).expect("layer");
        }
        assert!(job.layer(6, &stream.record(&ctx).expect("event")).is_err());
        let ev = stream.record(&ctx).expect("event");
        // SAFETY: `host` outlives the copy and is not touched until it completed.
        let in_flight = unsafe { job.finish(&ev, &stream, &addrs) }.expect("finish");
        let stats = in_flight.wait().await.expect("wait");
        assert_eq!(stats.bytes, subset.len() * bb);
        for (i, &b) in subset.iter().enumerate() {
            assert!(
                host.as_slice()[i * bb..(i + 1) * bb] == truth[b as usize][..],
                "round {round}: block {b}"
            );
        }
    }
    // A block pool of one run per block has no layers to save one by one.
    let contiguous = HbmPool::new(&ctx, GpuLayout::BlockContiguous, g, 2).expect("pool");
    assert!(
        // SAFETY: refused before any copy is queued.
        unsafe { engine.begin_layered_offload(&contiguous, &[0], 1) }
            .await
            .is_err()
    );
}

// The GPU tier (HBM slots owned by tierkv) runs the same conformance suite as every
// other tier: round trips, idempotent puts, capacity, bad payloads, concurrency, and
// futures dropped mid-way leaving no orphan slot.
tierkv_tiers::tier_conformance_tests!(
    gpu_tier_conformance,
    tierkv_tiers::testing::conformance::Capabilities::local(),
    async {
        let tier = tierkv_tiers::GpuTier::new(tierkv_tiers::GpuTierConfig {
            capacity_bytes: 24 * (64 << 10),
            slot_bytes: 64 << 10,
            ..Default::default()
        })
        .expect("GPU tier (these tests need a GPU)");
        (Arc::new(tier) as Arc<dyn Tier>, ())
    }
);

#[tokio::test]
async fn a_gpu_tier_larger_than_free_hbm_is_an_error_not_a_crash() {
    let err = tierkv_tiers::GpuTier::new(tierkv_tiers::GpuTierConfig {
        capacity_bytes: 1 << 50,
        slot_bytes: 1 << 20,
        ..Default::default()
    })
    .expect_err("a petabyte of HBM");
    assert!(err.to_string().contains("allocating"), "{err}");
}

#[tokio::test]
async fn the_gpu_tier_keeps_block_bytes_on_the_device() {
    // A block of nearly a whole slot comes back bit for bit, and the stats count it
    // under the GPU's kind.
    let tier = tierkv_tiers::GpuTier::new(tierkv_tiers::GpuTierConfig {
        capacity_bytes: 8 << 20,
        slot_bytes: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    let mut rng = Rng(0x9e37);
    let mut data = vec![0u8; (1 << 20) - 16];
    rng.fill(&mut data);
    let key = BlockKey::new(7, 11);
    tier.put(key, bytes::Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(tier.get(key).await.unwrap().as_deref(), Some(&data[..]));
    let stats = tier.stats();
    assert_eq!((stats.blocks, stats.payload_bytes), (1, data.len() as u64));
    assert_eq!(stats.kind, tierkv_tiers::TierKind::Gpu);
}

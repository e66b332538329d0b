//! A store configured with `kind = "gpu"`, on a real GPU (with the other GPU tests:
//! built by the `cuda` feature, run on the GPU machine).

use bytes::Bytes;
use tierkv_kvstore::{BlockKey, StoreConfig, TieredStore};
use tierkv_tiers::TierKind;

fn block(i: u128) -> Bytes {
    (0..64usize << 10)
        .map(|j| (i as usize * 31 + j * 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_tier_from_config_keeps_the_newest_blocks_in_hbm_and_demotes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        data_dir = "{}"
        slot_bytes = "64KiB"
        [[tier]]
        kind = "gpu"
        capacity = "1MiB"
        [[tier]]
        kind = "host"
        capacity = "4MiB"
        "#,
        dir.path().display()
    );
    let config = StoreConfig::from_toml(&text).unwrap();
    let store = TieredStore::open(&config).await.unwrap();
    for i in 0..40 {
        store.put_key(BlockKey::new(7, i), block(i)).await.unwrap();
    }
    let stats = store.stats();
    let (gpu, host) = (&stats.tiers[0], &stats.tiers[1]);
    assert_eq!(gpu.tier.kind, TierKind::Gpu);
    assert_eq!(gpu.tier.blocks, 16, "1 MiB of 64 KiB slots, full");
    assert_eq!(gpu.demotions, 24, "every evicted block went down");
    assert_eq!(host.tier.blocks, 24);
    // Newest first: the 16 in HBM are read before any host hit promotes a block up and
    // pushes one of them down.
    for i in (0..40).rev() {
        let back = store.get_key(BlockKey::new(7, i)).await.unwrap();
        assert_eq!(back.as_deref(), Some(&block(i)[..]), "block {i}");
    }
    let stats = store.stats();
    let hits = (stats.tiers[0].hits, stats.tiers[1].hits);
    assert_eq!(hits, (16, 24), "{stats:?}");
    assert_eq!(
        stats.tiers[0].tier.corrupt_blocks + stats.tiers[0].tier.io_errors,
        0
    );
}

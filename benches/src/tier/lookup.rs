//! `lookup_prefix` over 10,000-hash chains, answered from the store's in-memory index,
//! against a `std::collections::HashSet<u128>` walk of the same hashes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tierkv_kvstore::{DType, KvLayout, Namespace, TieredStore, hash_blocks};
use tierkv_tiers::{BlockKey, HostTier, HostTierConfig, Tier};

use crate::report::{Row, percentile_us};

const CHAIN: usize = 10_000;

pub(super) async fn bench(rounds: usize) -> anyhow::Result<Row> {
    let layout = KvLayout::new(1, 1, 1, DType::F16, 16)?;
    let ns = Namespace::new("lookup-bench", layout)?;
    let tokens: Vec<u32> = (0..(CHAIN * 16) as u32).collect();
    let hashes = hash_blocks(&ns, &tokens);
    let host: Arc<dyn Tier> = Arc::new(HostTier::new(HostTierConfig {
        name: "host".into(),
        capacity_bytes: (CHAIN * 4096) as u64,
        slot_bytes: 64,
        prefault: false,
        pin: false,
        shared: false,
    })?);
    let store = TieredStore::builder().tier(host).build().await?;
    let one = Bytes::from_static(&[7u8; 64]);
    for h in &hashes {
        store
            .put_key(BlockKey::new(ns.id(), h.0), one.clone())
            .await?;
    }

    let measure = |f: &dyn Fn() -> usize| -> (f64, Vec<Duration>) {
        let mut lat = Vec::with_capacity(rounds);
        let start = Instant::now();
        for _ in 0..rounds {
            let t = Instant::now();
            let n = std::hint::black_box(f());
            assert_eq!(n, CHAIN, "every hash is present");
            lat.push(t.elapsed());
        }
        let rate = (rounds * CHAIN) as f64 / start.elapsed().as_secs_f64() / 1e6;
        (rate, lat)
    };
    let (rate, lat) = measure(&|| store.lookup_prefix(&ns, &hashes));
    let set: HashSet<u128> = hashes.iter().map(|h| h.0).collect();
    let (base_rate, _) = measure(&|| hashes.iter().take_while(|h| set.contains(&h.0)).count());
    Ok(Row {
        tier: "store".into(),
        op: "lookup_prefix".into(),
        block_bytes: 0,
        ops: rounds as u64,
        concurrency: 1,
        gbps: None,
        p50_us: percentile_us(&lat, 0.5),
        p99_us: percentile_us(&lat, 0.99),
        p999_us: percentile_us(&lat, 0.999),
        baseline: "std HashSet<u128> walk".into(),
        baseline_gbps: None,
        baseline_p99_us: None,
        value: rate,
        baseline_value: base_rate,
        unit: "Mhash/s".into(),
        ratio: Some(rate / base_rate),
        note: Some(format!("latency is per {CHAIN}-hash chain, one core")),
    })
}

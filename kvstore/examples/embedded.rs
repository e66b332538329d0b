//! tierkv embedded in an engine's process: a host + disk store from its TOML
//! configuration, the KV blocks of a prompt stored, the process restarted, and the
//! prefix found again on disk (what lets an engine skip recomputing a long system
//! prompt after a restart).
//!
//! `cargo run --release -p tierkv-kvstore --example embedded` (exits non-zero if the
//! store does not behave as described).

use bytes::Bytes;
use tierkv_kvstore::{DType, KvLayout, Namespace, StoreConfig, TieredStore, hash_blocks};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = tempfile::tempdir()?;
    // The KV layout of the engine's model: every block of it has the same size.
    let layout = KvLayout::new(24, 8, 128, DType::Bf16, 16)?;
    let config = StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{dir}"
        slot_bytes = {slot}

        [[tier]]
        kind = "host"
        capacity = "64MiB"
        prefault = false

        [[tier]]
        kind = "disk"
        path = "disk"
        capacity = "1GiB"
        write_through = true
        "#,
        dir = data_dir.path().display(),
        slot = layout.block_bytes(),
    ))?;
    let ns = Namespace::new("llama-3.1-8b", layout)?;
    // A 4,000-token prompt: 250 blocks of 16 tokens (1.5 MiB of KV each), more than the
    // host tier holds: the oldest leave it, and stay on disk (written through).
    let prompt: Vec<u32> = (0..4000).map(|i| (i * 7919) % 128_000).collect();
    let hashes = hash_blocks(&ns, &prompt);

    {
        let store = TieredStore::open(&config).await?;
        for (i, hash) in hashes.iter().enumerate() {
            // The engine's KV of block i (here: a recognisable pattern).
            let kv = Bytes::from(vec![i as u8; layout.block_bytes()]);
            store.put(&ns, *hash, kv).await?;
        }
        let found = store.lookup_prefix(&ns, &hashes);
        println!("stored {} blocks; prefix found: {found}", hashes.len());
        check(
            found == hashes.len(),
            "every block is found before the restart",
        )?;
    }

    // The process restarts: host memory is gone, the disk tier reloads its index.
    let store = TieredStore::open(&config).await?;
    let found = store.lookup_prefix_deep(&ns, &hashes).await;
    println!("after a restart, the prefix found on disk: {found} blocks");
    check(
        found == hashes.len(),
        "every block survives the restart on disk",
    )?;
    let block = store.get(&ns, hashes[42]).await?;
    check(
        block.is_some_and(|b| b.iter().all(|&x| x == 42)),
        "block 42 reads back byte for byte",
    )?;
    for tier in store.stats().tiers {
        println!(
            "tier {:>5}: {:>4} blocks, {:>4} hits, {:>4} misses",
            tier.tier.name, tier.tier.blocks, tier.hits, tier.misses
        );
    }
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("not so: {what}").into())
    }
}

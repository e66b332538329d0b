//! tierkv as a sidecar block service between a prefill worker and a decode worker: the
//! service serves a store on a port with a bearer token; the prefill worker publishes a
//! prompt's KV blocks, the decode worker looks the prefix up, fetches the blocks and
//! sees the publication in its event stream (what a KV-aware router watches).
//!
//! `cargo run --release -p tierkv-kvstore --example sidecar` (exits non-zero if the
//! service does not behave as described).

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig, ServiceConfig, TokenConfig, serve};
use tierkv_kvstore::{
    DType, KvLayout, Namespace, StoreConfig, StoreEventKind, TieredStore, hash_blocks,
};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = tempfile::tempdir()?;
    let layout = KvLayout::new(28, 4, 128, DType::Bf16, 128)?;
    // The default tiers (host, then disk under `data_dir`), slots of one block.
    let config = StoreConfig {
        data_dir: data_dir.path().to_path_buf(),
        slot_bytes: tierkv_kvstore::ByteSize(layout.block_bytes() as u64),
        ..StoreConfig::default()
    };
    let store = TieredStore::open(&config).await?;
    let service = ServiceConfig {
        tokens: vec![TokenConfig {
            token: "cluster-secret".into(),
            namespaces: vec!["*".into()],
        }],
        ..ServiceConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        serve(
            store,
            &service,
            listener,
            Arc::new(Metrics::new()),
            shutdown,
        )
        .await
    });
    println!("block service on {addr}");

    let worker = |token: Option<&str>| {
        let mut c = BlockClientConfig::new(addr.clone());
        c.token = token.map(str::to_string);
        BlockClient::new(c)
    };
    let ns = Namespace::new("qwen3-32b", layout)?;
    let prompt: Vec<u32> = (0..1024).collect();
    let hashes = hash_blocks(&ns, &prompt);
    let blocks: Vec<(u128, Bytes)> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (h.0, Bytes::from(vec![i as u8; layout.block_bytes()])))
        .collect();

    // A router watches what lands where; without the token nothing is served.
    let decode = worker(Some("cluster-secret"))?;
    let mut events = decode.watch(&[ns.name().to_string()]).await?;
    let outsider = worker(None)?;
    check(
        outsider.fetch(ns.name(), &[hashes[0].0]).await.is_err(),
        "a client without the token is refused",
    )?;

    let prefill = worker(Some("cluster-secret"))?;
    let summary = prefill.publish(ns.name(), &blocks).await?;
    println!("prefill published {} blocks", summary.stored);
    check(
        summary.stored == blocks.len() as u64,
        "every block is stored",
    )?;

    let wanted: Vec<u128> = hashes.iter().map(|h| h.0).collect();
    let (hits, tiers) = decode.lookup(ns.name(), &wanted).await?;
    println!("decode found a prefix of {hits} blocks in {tiers:?}");
    check(hits as usize == blocks.len(), "the whole prefix is found")?;
    let fetched = decode.fetch(ns.name(), &wanted).await?;
    check(
        fetched
            .iter()
            .zip(&blocks)
            .all(|(got, (_, want))| got.as_ref() == Some(want)),
        "the decode worker fetches the prefill worker's bytes",
    )?;
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await?;
    let stored = matches!(first, Some(Ok(ref e)) if e.kind == StoreEventKind::Stored);
    check(stored, "the router saw the blocks stored")?;
    let stats = decode.stats().await?;
    println!("service holds {} blocks", stats.blocks);

    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    if ok {
        Ok(())
    } else {
        Err(format!("not so: {what}").into())
    }
}

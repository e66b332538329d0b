//! Greedy decoding is token-identical whether a prompt's KV was computed or loaded back
//! from the engine's pool, the host tier, the disk tier, the object tier or a peer's
//! block service — for block sizes 16 and 128, prompts whose length is and is not a
//! multiple of the block size.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::sync::Arc;

use common::*;
use tierkv_engine::Engine;
use tierkv_kvstore::service::{ServiceConfig, serve};

const GEN: usize = 12;

/// Tokens of KV a warm run of `prompt` should reuse: its full blocks, less the last
/// token when the prompt is an exact multiple (that token is computed for logits).
fn reusable(prompt: &[u32], block: usize) -> usize {
    let full = prompt.len() / block * block;
    if full == prompt.len() { full - 1 } else { full }
}

fn cached_from(usage: &tierkv_engine::Usage, source: &str) -> usize {
    usage
        .cached_by_source
        .iter()
        .filter(|(s, _)| s == source)
        .map(|(_, n)| *n)
        .sum()
}

async fn check_tier(
    engine: &Engine,
    source: &str,
    prompts: &[Vec<u32>],
    reference: &[Vec<u32>],
    block: usize,
) {
    for (p, want) in prompts.iter().zip(reference) {
        let (cold, usage) = greedy(engine, p, GEN).await;
        assert_eq!(usage.cached_tokens, 0, "{source}: first run is cold");
        assert_eq!(
            &cold,
            want,
            "{source}: cold run of a {}-token prompt",
            p.len()
        );
        wait_stored(engine, p, p.len() / block).await;
        engine.reset_prefix_cache().await.expect("reset");
        let (warm, usage) = greedy(engine, p, GEN).await;
        assert_eq!(
            cached_from(&usage, source),
            reusable(p, block),
            "{source}: a {}-token prompt reuses its full blocks: {usage:?}",
            p.len()
        );
        assert_eq!(
            &warm,
            want,
            "{source}: tokens after loading a {}-token prompt",
            p.len()
        );
    }
}

async fn check_all(block: u32, lengths: &[usize]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = block as usize;
    // Reference: computed cold on an engine that neither loads nor publishes.
    let mut cfg = engine_config(block);
    cfg.load_from_store = false;
    cfg.publish_to_store = false;
    let reference_engine = engine(&dir.path().join("ref"), HOST, cfg).await;
    let mut prompts = prompts(&reference_engine);
    prompts.retain(|p| p.len() > b);
    for &n in lengths {
        prompts.push(prompt_of(&reference_engine, n));
    }
    assert!(prompts.iter().any(|p| p.len() % b == 0) && prompts.iter().any(|p| p.len() % b != 0));
    let mut reference = Vec::new();
    for p in &prompts {
        let (t, usage) = greedy(&reference_engine, p, GEN).await;
        assert_eq!(usage.cached_tokens, 0);
        reference.push(t);
    }
    // The same prompt again on the same engine: its own pool.
    let (again, usage) = greedy(&reference_engine, &prompts[0], GEN).await;
    assert_eq!(
        cached_from(&usage, "engine"),
        reusable(&prompts[0], b),
        "{usage:?}"
    );
    assert_eq!(again, reference[0], "engine pool reuse");
    drop(reference_engine);

    for (source, tiers) in [("host", HOST), ("disk", DISK), ("object", OBJECT)] {
        let e = engine(&dir.path().join(source), tiers, engine_config(block)).await;
        check_tier(&e, source, &prompts, &reference, b).await;
        if source != "host" {
            continue;
        }
        // A peer engine fetches this engine's blocks through the block service.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store = e.store().clone();
        let server = tokio::spawn(async move {
            let metrics = Arc::new(tierkv_kvstore::metrics::Metrics::new());
            serve(
                store,
                &ServiceConfig::default(),
                listener,
                metrics,
                std::future::pending(),
            )
            .await
        });
        let remote = format!("{HOST}[[tier]]\nkind = \"remote\"\naddr = \"{addr}\"\n");
        let peer = engine(&dir.path().join("peer"), &remote, engine_config(block)).await;
        for (p, want) in prompts.iter().zip(&reference) {
            let (t, usage) = greedy(&peer, p, GEN).await;
            assert_eq!(
                cached_from(&usage, "remote"),
                reusable(p, b),
                "remote: {usage:?}"
            );
            assert_eq!(
                &t,
                want,
                "remote: tokens after fetching a {}-token prompt",
                p.len()
            );
        }
        server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tokens_from_every_tier_block_16() {
    check_all(16, &[64, 75]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_tokens_from_every_tier_block_128() {
    check_all(128, &[256, 300]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_records_lengths_and_chain_hashes_never_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), HOST, engine_config(16)).await;
    let log_path = dir.path().join("requests.jsonl");
    engine.log_requests(tierkv_engine::scheduler::RequestLog::open(&log_path).unwrap());
    let shared: Vec<u32> = (0..40).map(|t| 100 + t).collect();
    let mut longer = shared.clone();
    longer.extend(300..330u32);
    run(&engine, greedy_request(shared.clone(), 2)).await;
    run(&engine, greedy_request(longer.clone(), 3)).await;
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["input_length"], 40);
    assert_eq!(lines[1]["input_length"], 70);
    assert_eq!(lines[1]["output_length"], 3);
    assert_eq!(lines[0]["block_tokens"], 16);
    let hashes = |v: &serde_json::Value| -> Vec<String> {
        v["block_hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect()
    };
    let (a, b) = (hashes(&lines[0]), hashes(&lines[1]));
    assert_eq!((a.len(), b.len()), (2, 4), "full blocks only");
    assert_eq!(a[..], b[..2], "a shared prefix has the same chain hashes");
    assert!(a.iter().all(|h| h.len() == 32));
    assert!(lines[0]["timestamp"].as_u64().unwrap() <= lines[1]["timestamp"].as_u64().unwrap());
    assert!(lines[0].get("prompt").is_none() && lines[0].get("tokens").is_none());
}

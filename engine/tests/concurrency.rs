//! Continuous batching: concurrent requests produce the same tokens as the same
//! requests run one at a time — with chunked prefill, and with a KV pool so small
//! that requests are preempted and resumed. A request that cannot fit gets an error.

mod common;

use common::*;
use tierkv_engine::{EngineError, GenEvent};
use tierkv_kvstore::ByteSize;

const GEN: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_match_sequential_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = engine_config(16);
    cfg.load_from_store = false;
    cfg.publish_to_store = false;
    let e = engine(&dir.path().join("a"), HOST, cfg.clone()).await;
    let mut prompts = prompts(&e);
    for n in [40, 90, 130] {
        prompts.push(prompt_of(&e, n));
    }
    let mut sequential = Vec::new();
    for p in &prompts {
        sequential.push(greedy(&e, p, GEN).await.0);
        e.reset_prefix_cache().await.expect("reset");
    }

    // All at once, prompts prefilled in chunks of 32 tokens between decode steps.
    cfg.max_batch_tokens = 32;
    let e2 = engine_from(load_model(), &dir.path().join("b"), HOST, cfg.clone()).await;
    let runs = prompts.iter().map(|p| greedy(&e2, p, GEN));
    let concurrent: Vec<Vec<u32>> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        concurrent, sequential,
        "batched and chunked == one at a time"
    );
    let steps = e2.metrics().step_tokens.get_sample_count();
    assert!(steps > 0);

    // A pool of 20 blocks cannot hold all six: requests are preempted and resumed.
    cfg.kv_pool = ByteSize(
        20 * cfg
            .kv_layout(e2.model_config())
            .expect("layout")
            .block_bytes() as u64,
    );
    let e3 = engine_from(load_model(), &dir.path().join("c"), HOST, cfg).await;
    let runs = prompts.iter().map(|p| greedy(&e3, p, GEN));
    let squeezed: Vec<Vec<u32>> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        squeezed, sequential,
        "preempted requests resume to the same tokens"
    );
    assert!(
        e3.metrics().preemptions.get() > 0,
        "the small pool forced preemption"
    );

    // A request larger than the whole pool is refused up front.
    let too_long = prompt_of(&e3, 330);
    match e3.generate(greedy_request(too_long, 4)).await {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("KV pool"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a request larger than the pool was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_cancellation_frees_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), HOST, engine_config(16)).await;
    let ctx = e.max_context();
    for (req, needle) in [
        (greedy_request(vec![], 4), "empty"),
        (greedy_request(vec![1, 2, 99_999_999], 4), "vocabulary"),
        (greedy_request(vec![1; 10], ctx), "context length"),
        // A huge max_tokens is a clear error, not an overflow.
        (greedy_request(vec![1; 10], usize::MAX), "context length"),
    ] {
        match e.generate(req).await {
            Err(EngineError::InvalidRequest(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!(
                "expected an invalid-request error with {needle:?}, got {:?}",
                other.err()
            ),
        }
    }
    // Dropping the receiver cancels: the engine frees the request's blocks.
    let p = prompt_of(&e, 100);
    let mut rx = e.generate(greedy_request(p, 500)).await.expect("accepted");
    loop {
        if let Some(GenEvent::Token(_)) = rx.recv().await {
            break;
        }
    }
    drop(rx);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let u = e.pool_usage().await.expect("usage");
        if u.used == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks still used after cancel: {u:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

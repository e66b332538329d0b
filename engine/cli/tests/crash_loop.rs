//! Crash loops: `tierkv serve` with a write-through disk tier is killed with SIGKILL
//! while a client publishes, then restarted, again and again. Every block the service
//! acknowledged must come back, byte for byte, after every restart; a block that was in
//! flight at the kill may be missing but is never wrong. Both durability modes
//! (`sync_writes` false and true). Cycles per mode: `TIERKV_CRASH_CYCLES` (default 20).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::serve_process::Serve;
use tierkv_kvstore::service::BlockClient;
use tierkv_tiers::testing::payload as block;

const BLOCK_BYTES: usize = 48 << 10;

fn cycles() -> usize {
    std::env::var("TIERKV_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Fetches every acknowledged block: `(lost, wrong)`.
async fn check(client: &BlockClient, acked: &[u128]) -> (usize, usize) {
    let (mut lost, mut wrong) = (0, 0);
    for batch in acked.chunks(64) {
        let got = client
            .fetch("crash", batch)
            .await
            .expect("fetch after restart");
        for (h, g) in batch.iter().zip(got) {
            match g {
                None => lost += 1,
                Some(d) if d != block(*h as u64, BLOCK_BYTES) => wrong += 1,
                Some(_) => {}
            }
        }
    }
    (lost, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_block_survives_kill_9_cycles() {
    let cycles = cycles();
    for sync_writes in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.toml");
        std::fs::write(
            &config,
            format!(
                r#"
                slot_bytes = "48KiB"
                [[tier]]
                kind = "host"
                capacity = "1MiB"
                prefault = false
                [[tier]]
                kind = "disk"
                capacity = "192MiB"
                write_through = true
                sync_writes = {sync_writes}
                queue_depth = 8
                "#
            ),
        )
        .unwrap();
        let acked: Arc<Mutex<Vec<u128>>> = Arc::default();
        let mut next_hash: u128 = 1;
        let mut kills = 0;
        for cycle in 0..cycles {
            let serve = Serve::start(&dir.path().join("data"), Some(&config));
            let client = serve.client();
            let before = acked.lock().unwrap().clone();
            let (lost, wrong) = check(&client, &before).await;
            assert_eq!(
                (lost, wrong),
                (0, 0),
                "sync_writes={sync_writes}, after kill {kills}: {} blocks acknowledged",
                before.len()
            );
            // Publish in batches of 4 until `target` more blocks are acknowledged, with
            // more batches in flight, then kill the server mid-stream.
            let target = 8 + (cycle * 13) % 40;
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
            let mut writers = Vec::new();
            for w in 0..3u128 {
                let client = serve.client();
                let acked = Arc::clone(&acked);
                let tx = tx.clone();
                let start = next_hash + w * 100_000;
                writers.push(tokio::spawn(async move {
                    let mut h = start;
                    loop {
                        let batch: Vec<(u128, Bytes)> = (h..h + 4)
                            .map(|x| (x, block(x as u64, BLOCK_BYTES)))
                            .collect();
                        match client.publish("crash", &batch).await {
                            Ok(r) if r.stored + r.already_present == 4 => {
                                acked.lock().unwrap().extend(h..h + 4);
                                if tx.send(4).is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        }
                        h += 4;
                    }
                }));
            }
            drop(tx);
            let mut new = 0;
            while new < target {
                new += rx.recv().await.expect("writers stopped before the kill");
            }
            drop(serve); // SIGKILL, then reap
            kills += 1;
            for w in writers {
                let _ = w.await;
            }
            next_hash += 1_000_000;
        }
        let serve = Serve::start(&dir.path().join("data"), Some(&config));
        let all = acked.lock().unwrap().clone();
        let (lost, wrong) = check(&serve.client(), &all).await;
        println!(
            "sync_writes={sync_writes}: {kills} kill -9 cycles, {} acknowledged blocks checked, {lost} lost, {wrong} wrong",
            all.len()
        );
        assert_eq!((lost, wrong), (0, 0));
        assert!(all.len() >= cycles * 8);
    }
}

//! Faults injected at the failpoints of the I/O paths (`tierkv_tiers::failpoint`): a
//! failing or full disk, a failing index write, a failing object store, a connection
//! that breaks on send or receive. What must hold under every one: a put that was not
//! stored is an error (never acknowledged), a read is the right bytes, a miss or an
//! error (never wrong bytes), nothing hangs, and the store works again once the fault
//! clears.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use bytes::Bytes;
use tierkv_kvstore::EvictPolicy;
use tierkv_kvstore::service::{ServiceConfig, Transport};
use tierkv_kvstore::{TierPolicy, TieredStore};
use tierkv_tiers::failpoint::{self, Failure};
use tierkv_tiers::testing::payload;
use tierkv_tiers::{BlockKey, DiskTierConfig, HostTierConfig, ObjectBackend, ObjectTierConfig};

mod common;
use common::{client_over, serve_store};

/// Failpoints are process-wide: the tests of this binary take turns (nextest runs each
/// in its own process anyway).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SLOT: usize = 64 << 10;

fn key(i: u128) -> BlockKey {
    BlockKey::new(9, i)
}

fn block(i: u128) -> Bytes {
    payload(i as u64, SLOT - 100)
}

const WRITE_THROUGH: TierPolicy = TierPolicy {
    write_through: true,
    on_evict: EvictPolicy::Demote,
};

/// Host (2 slots) over a write-through disk (64 slots) in `dir`.
async fn host_over_disk(dir: &std::path::Path) -> TieredStore {
    TieredStore::builder()
        .slot_bytes(SLOT)
        .host(HostTierConfig {
            capacity_bytes: 2 * SLOT as u64,
            prefault: false,
            ..Default::default()
        })
        .disk(DiskTierConfig {
            path: dir.join("disk"),
            capacity_bytes: 64 * (SLOT as u64 + 4096),
            queue_depth: 4,
            direct_io: false,
            ..Default::default()
        })
        .policy(WRITE_THROUGH)
        .build()
        .await
        .unwrap()
}

fn fail(name: &str, errno: i32, times: Option<u32>) {
    failpoint::arm(name, Failure { errno, times });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_write_is_never_acknowledged_and_the_retry_writes_through() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = host_over_disk(dir.path()).await;
    fail("disk.write", libc::EIO, Some(1));
    let e = store.put_key(key(1), block(1)).await.unwrap_err();
    assert!(e.to_string().contains("writing slot"), "{e}");
    assert_eq!(store.stats().tiers[1].tier.io_errors, 1);
    // The retry completes the write-through that failed.
    store.put_key(key(1), block(1)).await.unwrap();
    drop(store);
    let store = host_over_disk(dir.path()).await;
    assert_eq!(store.get_key(key(1)).await.unwrap(), Some(block(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_a_clear_error_and_keeps_what_it_had() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = host_over_disk(dir.path()).await;
    for i in 0..4 {
        store.put_key(key(i), block(i)).await.unwrap();
    }
    fail("disk.write", libc::ENOSPC, None);
    for i in 4..8 {
        let e = store.put_key(key(i), block(i)).await.unwrap_err();
        assert!(format!("{e:#}").contains("No space left"), "{e:#}");
    }
    failpoint::disarm("disk.write");
    for i in 0..4 {
        assert_eq!(
            store.get_key(key(i)).await.unwrap(),
            Some(block(i)),
            "block {i}"
        );
    }
    store.put_key(key(8), block(8)).await.unwrap();
    // The reads above queued promotions; a promotion in flight holds the store (and its
    // disk index) open, so let them finish before opening the directory again.
    store.settle_promotions().await;
    drop(store);
    let store = host_over_disk(dir.path()).await;
    for i in (0..4).chain([8]) {
        assert_eq!(
            store.get_key(key(i)).await.unwrap(),
            Some(block(i)),
            "block {i} after restart"
        );
    }
    // A refused put may still have left its block in the host tier (and a later
    // demotion may have carried it to disk): present means the right bytes.
    for i in 4..8 {
        let got = store.get_key(key(i)).await.unwrap();
        assert!(got.is_none() || got == Some(block(i)), "refused block {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_read_is_an_error_never_wrong_bytes_and_the_block_stays() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = host_over_disk(dir.path()).await;
    for i in 0..6 {
        store.put_key(key(i), block(i)).await.unwrap();
    }
    // Blocks 0..4 are on disk only (the host holds the last 2).
    fail("disk.read", libc::EIO, None);
    for i in 0..4 {
        match store.read_key(key(i), false).await {
            Err(e) => assert!(e.to_string().contains("reading slot"), "{e}"),
            Ok(got) => panic!(
                "block {i}: a failed read returned {:?}",
                got.map(|b| b.len())
            ),
        }
    }
    failpoint::disarm("disk.read");
    for i in 0..4 {
        assert_eq!(store.read_key(key(i), false).await.unwrap(), Some(block(i)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_index_write_fails_the_put_and_a_restart_finds_no_half_block() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = host_over_disk(dir.path()).await;
    store.put_key(key(1), block(1)).await.unwrap();
    fail("index.write", libc::EIO, None);
    let e = store.put_key(key(2), block(2)).await.unwrap_err();
    assert!(e.to_string().contains("disk index"), "{e}");
    failpoint::disarm("index.write");
    drop(store);
    let store = host_over_disk(dir.path()).await;
    assert_eq!(store.get_key(key(1)).await.unwrap(), Some(block(1)));
    assert_eq!(store.get_key(key(2)).await.unwrap(), None, "never indexed");
    // Its slot is free again: the disk takes as many blocks as before.
    for i in 10..70 {
        store.put_key(key(i), block(i)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_object_store_is_an_error_or_a_miss_never_a_hang() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::builder()
        .slot_bytes(SLOT)
        .host(HostTierConfig {
            capacity_bytes: SLOT as u64,
            prefault: false,
            ..Default::default()
        })
        .object(ObjectTierConfig {
            backend: ObjectBackend::LocalDir(dir.path().join("object")),
            capacity_bytes: 64 * SLOT as u64,
            ..Default::default()
        })
        .policy(WRITE_THROUGH)
        .build()
        .await
        .unwrap();
    store.put_key(key(1), block(1)).await.unwrap();
    store.put_key(key(2), block(2)).await.unwrap(); // block 1 is now in the object tier only
    fail("object.put", libc::EIO, None);
    assert!(store.put_key(key(3), block(3)).await.is_err());
    fail("object.get", libc::ECONNRESET, None);
    assert!(store.read_key(key(1), false).await.is_err());
    failpoint::disarm("object.put");
    failpoint::disarm("object.get");
    assert_eq!(store.read_key(key(1), false).await.unwrap(), Some(block(1)));
    store.put_key(key(3), block(3)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_breaks_on_send_or_receive_never_delivers_wrong_bytes() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve_store(host_over_disk(dir.path()).await, ServiceConfig::default()).await;
    let c = client_over(&server.addr, None, Transport::Network);
    let blocks: Vec<(u128, Bytes)> = (0..4).map(|i| (i, block(i))).collect();
    // The server drops the connection while receiving: the publish is an error, and
    // says nothing was stored that was not.
    fail("net.recv", libc::ECONNRESET, None);
    let e = c.publish("n", &blocks).await.unwrap_err();
    assert!(
        format!("{e:#}").to_lowercase().contains("unavailable")
            || format!("{e:#}").contains("block channel"),
        "{e:#}"
    );
    failpoint::disarm("net.recv");
    let r = c.publish("n", &blocks).await.unwrap();
    assert_eq!(r.stored + r.already_present, 4);
    // The server drops the connection while sending: a clear error, never a block.
    fail("net.send", libc::EPIPE, None);
    let hashes: Vec<u128> = (0..4).collect();
    assert!(c.fetch("n", &hashes).await.is_err());
    failpoint::disarm("net.send");
    let back = c.fetch("n", &hashes).await.unwrap();
    assert_eq!(
        back,
        blocks
            .iter()
            .map(|(_, d)| Some(d.clone()))
            .collect::<Vec<_>>()
    );
}

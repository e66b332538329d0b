//! TieredStore behaviour across real host, disk (io_uring + RocksDB) and object
//! (local directory) tiers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use bytes::Bytes;
use tierkv_kvstore::{
    BlockHash, DType, KvLayout, KvStoreError, Namespace, PutOutcome, StoreConfig, StoreEventKind,
    TieredStore, hash_blocks,
};

fn layout() -> KvLayout {
    // 2 layers x 2 (K,V) x 16 tokens x 2 heads x 16 dims x 2 bytes = 4 KiB a block.
    KvLayout::new(2, 2, 16, DType::F16, 16).unwrap()
}

fn ns() -> Namespace {
    Namespace::new("test-model", layout()).unwrap()
}

/// One 4 KiB block.
fn block(seed: u64) -> Bytes {
    tierkv_tiers::testing::payload(seed, 4096)
}

/// A chain of `n` block hashes (a prompt of n*16 tokens).
fn chain(n: usize, salt: u32) -> Vec<BlockHash> {
    let tokens: Vec<u32> = (0..n as u32 * 16).map(|t| t * 7 + salt).collect();
    hash_blocks(&ns(), &tokens)
}

/// host 4 blocks -> disk 4 blocks -> object 64 blocks, in `dir`.
fn config(dir: &std::path::Path, extra_disk: &str, promote: bool) -> StoreConfig {
    StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{}"
        slot_bytes = 4096
        promote_on_hit = {promote}
        [[tier]]
        kind = "host"
        capacity = "16KiB"
        [[tier]]
        kind = "disk"
        capacity = "32KiB"   # 4 slots of 8 KiB (header + 4 KiB, rounded to pages)
        queue_depth = 4
        {extra_disk}
        [[tier]]
        kind = "object"
        local_dir = "object"
        capacity = "256KiB"
        "#,
        dir.display()
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_demotes_host_to_disk_to_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(12, 0));
    for (i, h) in hashes.iter().enumerate() {
        assert_eq!(
            store.put(&ns, *h, block(i as u64)).await.unwrap(),
            PutOutcome::Stored
        );
    }
    // Oldest four went all the way down, the next four to disk, the newest stay in host.
    let tiers = store.locate_prefix(&ns, &hashes);
    assert_eq!(tiers, [2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0]);
    let stats = store.stats();
    assert_eq!((stats.tiers[0].evictions, stats.tiers[0].demotions), (8, 8));
    assert_eq!((stats.tiers[1].evictions, stats.tiers[1].demotions), (4, 4));
    assert_eq!(stats.tiers[2].tier.blocks, 4);
    assert_eq!(stats.blocks, 12);
    // Every block reads back intact from wherever it is.
    let no_promote = TieredStore::open(&config(dir.path(), "", false)).await;
    assert!(
        no_promote.is_err(),
        "the disk tier is locked by the open store"
    );
    for (i, h) in hashes.iter().enumerate().rev() {
        assert_eq!(
            store.get(&ns, *h).await.unwrap().unwrap(),
            block(i as u64),
            "block {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_tier_hits_are_promoted_unless_disabled() {
    for promote in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = TieredStore::open(&config(dir.path(), "", promote))
            .await
            .unwrap();
        let (ns, hashes) = (ns(), chain(12, 1));
        for (i, h) in hashes.iter().enumerate() {
            store.put(&ns, *h, block(i as u64)).await.unwrap();
        }
        assert_eq!(store.get(&ns, hashes[0]).await.unwrap().unwrap(), block(0));
        store.settle_promotions().await;
        let stats = store.stats();
        assert_eq!(stats.tiers[2].hits, 1);
        assert_eq!(stats.tiers[0].misses, 1);
        assert_eq!(stats.tiers[1].misses, 1);
        if promote {
            assert_eq!(store.locate_prefix(&ns, &hashes[..1]), [0]);
            assert_eq!(stats.tiers[2].promotions, 1);
            // A second read is a host hit.
            store.get(&ns, hashes[0]).await.unwrap().unwrap();
            assert_eq!(store.stats().tiers[0].hits, 1);
        } else {
            assert_eq!(store.locate_prefix(&ns, &hashes[..1]), [2]);
            assert_eq!(stats.tiers[2].promotions, 0);
        }
    }
}

/// What a read could change behind the reader's back.
fn writes(store: &TieredStore) -> Vec<(u64, u64, u64, u64, u64)> {
    store
        .stats()
        .tiers
        .iter()
        .map(|t| {
            (
                t.evictions,
                t.demotions,
                t.bytes_written,
                t.tier.puts,
                t.promotions,
            )
        })
        .collect()
}

/// The tiers' write counters, the disk file's modification time and the events seen;
/// none of them may move between a read's start and its return.
struct Untouched {
    writes: Vec<(u64, u64, u64, u64, u64)>,
    disk_modified: std::time::SystemTime,
}

impl Untouched {
    fn now(store: &TieredStore, disk_dat: &std::path::Path) -> Untouched {
        Untouched {
            writes: writes(store),
            disk_modified: std::fs::metadata(disk_dat).unwrap().modified().unwrap(),
        }
    }

    fn check(
        &self,
        store: &TieredStore,
        disk_dat: &std::path::Path,
        events: &mut tokio::sync::broadcast::Receiver<tierkv_kvstore::StoreEvent>,
    ) {
        assert_eq!(
            writes(store),
            self.writes,
            "nothing written before the read returned"
        );
        assert!(
            matches!(
                events.try_recv(),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty)
            ),
            "no block entered or left a tier"
        );
        assert_eq!(
            std::fs::metadata(disk_dat).unwrap().modified().unwrap(),
            self.disk_modified
        );
    }
}

// One thread: nothing else (the promoter included) runs between the read's return and
// the checks, so "before it returns" is exactly what is observed. Each read's promotion
// is settled before the next read starts: it may run while that read awaits its I/O.
#[tokio::test(flavor = "current_thread")]
async fn a_read_never_evicts_demotes_or_writes_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(12, 3));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    // host: 8..12, disk: 4..8, object: 0..4 -- every tier full.
    assert_eq!(store.locate_prefix(&ns, &hashes[4..5]), [1]);
    assert_eq!(store.locate_prefix(&ns, &hashes[0..1]), [2]);
    let mut events = store.subscribe();
    let before = writes(&store);
    let disk_dat = dir.path().join("disk").join("blocks.dat");
    // A disk hit and an object hit, each of which would, promoted inline, evict a host
    // block, demote it to the full disk, evict and demote a disk block to the object tier.
    let mut seen = Vec::new();
    for (i, h) in [(4, hashes[4]), (0, hashes[0])] {
        let untouched = Untouched::now(&store, &disk_dat);
        assert_eq!(store.get(&ns, h).await.unwrap().unwrap(), block(i));
        untouched.check(&store, &disk_dat, &mut events);
        // In the background, it is promoted and the tiers below make room.
        store.settle_promotions().await;
        assert_eq!(store.locate_prefix(&ns, &[h]), [0]);
        while let Ok(ev) = events.try_recv() {
            seen.push((ev.kind, ev.tier, ev.key.hash));
        }
    }
    let stats = store.stats();
    assert_eq!(
        (stats.tiers[1].promotions, stats.tiers[2].promotions),
        (1, 1)
    );
    assert_eq!(
        stats.tiers[0].evictions - before[0].0,
        2,
        "one host victim per promotion"
    );
    assert!(stats.tiers[0].demotions - before[0].1 >= 2);
    for h in [hashes[4], hashes[0]] {
        assert!(
            seen.contains(&(StoreEventKind::Stored, 0, h.0)),
            "the promotion was announced: {seen:?}"
        );
    }
    // Every block is still readable.
    for (i, h) in hashes.iter().enumerate() {
        assert_eq!(store.get(&ns, *h).await.unwrap().unwrap(), block(i as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_copies_every_put_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "write_through = true", true))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(3, 2));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    let tiers = store.tiers();
    for h in &hashes {
        let key = tierkv_kvstore::BlockKey::new(ns.id(), h.0);
        assert!(tiers[0].contains(key).await.unwrap());
        assert!(
            tiers[1].contains(key).await.unwrap(),
            "written through to disk"
        );
        assert!(!tiers[2].contains(key).await.unwrap());
    }
    // Evicting from host needs no demotion: disk already has the block.
    for (i, h) in chain(4, 3).iter().enumerate() {
        store.put(&ns, *h, block(100 + i as u64)).await.unwrap();
    }
    let s = store.stats();
    assert_eq!(s.tiers[0].evictions, 3);
    assert_eq!(s.tiers[0].demotions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_blocks_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(4, 4));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    let pin = store.pin(&ns, &hashes[..1]);
    for (i, h) in chain(3, 5).iter().enumerate() {
        store.put(&ns, *h, block(50 + i as u64)).await.unwrap();
    }
    // Block 0 was the least recently used but is pinned: blocks 1..4 went down.
    assert_eq!(store.locate_prefix(&ns, &hashes), [0, 1, 1, 1]);
    assert_eq!(store.stats().pinned, 1);
    drop(pin);
    assert_eq!(store.stats().pinned, 0);

    // With every host block pinned, a put goes to the next tier, not away.
    let all = chain(3, 5);
    let _pins = (store.pin(&ns, &all), store.pin(&ns, &hashes[..1]));
    let late = chain(1, 6);
    assert_eq!(
        store.put(&ns, late[0], block(99)).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(store.locate_prefix(&ns, &late), [1]);
    assert_eq!(store.get(&ns, late[0]).await.unwrap().unwrap(), block(99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_into_a_store_pinned_full_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::from_toml(&format!(
        "data_dir = \"{}\"\nslot_bytes = 4096\n[[tier]]\nkind = \"host\"\ncapacity = \"8KiB\"\n",
        dir.path().display()
    ))
    .unwrap();
    let store = TieredStore::open(&config).await.unwrap();
    let (ns, hashes) = (ns(), chain(3, 8));
    for (i, h) in hashes[..2].iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    let pin = store.pin(&ns, &hashes[..2]);
    let err = store.put(&ns, hashes[2], block(2)).await.unwrap_err();
    assert!(matches!(err, KvStoreError::NoRoom { .. }), "{err}");
    assert!(!store.contains(&ns, hashes[2]));
    drop(pin);
    assert_eq!(
        store.put(&ns, hashes[2], block(2)).await.unwrap(),
        PutOutcome::Stored,
        "room again once the readers let go"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_prefix_stops_at_the_first_missing_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(10, 7));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    assert_eq!(store.lookup_prefix(&ns, &hashes), 10);
    assert!(store.remove(&ns, hashes[6]).await.unwrap());
    assert_eq!(store.lookup_prefix(&ns, &hashes), 6);
    assert_eq!(store.locate_prefix(&ns, &hashes).len(), 6);
    // Another namespace sees nothing of these blocks.
    let other = ns.salted("tenant-b").unwrap();
    assert_eq!(store.lookup_prefix(&other, &hashes), 0);
    assert!(store.get(&other, hashes[0]).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_every_tier_change_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let mut events = store.subscribe();
    let (ns, hashes) = (ns(), chain(5, 8));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let first = tierkv_kvstore::BlockKey::new(ns.id(), hashes[0].0);
    // 5 stores into host, then block 0 demoted: stored in disk, removed from host.
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert!(
        seen[..4]
            .iter()
            .all(|e| e.kind == StoreEventKind::Stored && e.tier == 0)
    );
    assert_eq!(
        (seen[4].kind, seen[4].tier, seen[4].key),
        (StoreEventKind::Stored, 1, first)
    );
    assert_eq!(
        (seen[5].kind, seen[5].tier, seen[5].key),
        (StoreEventKind::Removed, 0, first)
    );
    assert_eq!((seen[6].kind, seen[6].tier), (StoreEventKind::Stored, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_tiers_come_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, hashes) = (ns(), chain(12, 9));
    {
        let store = TieredStore::open(&config(dir.path(), "", true))
            .await
            .unwrap();
        for (i, h) in hashes.iter().enumerate() {
            store.put(&ns, *h, block(i as u64)).await.unwrap();
        }
    }
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    // The host tier's four blocks are gone; disk and object kept theirs.
    let tiers = store.locate_prefix(&ns, &hashes);
    assert_eq!(tiers, [2, 2, 2, 2, 1, 1, 1, 1]);
    for (i, h) in hashes[..8].iter().enumerate() {
        assert_eq!(store.get(&ns, *h).await.unwrap().unwrap(), block(i as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_disk_block_falls_back_to_a_lower_copy_or_misses() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", false))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(8, 10));
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    assert_eq!(store.locate_prefix(&ns, &hashes[..4]), [1, 1, 1, 1]);
    // Damage every slot of the disk file.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("disk/blocks.dat"))
        .unwrap();
    for slot in 0..4u64 {
        file.write_all_at(&[0xAA; 16], slot * 8192 + 64 + 100)
            .unwrap();
    }
    for h in &hashes[..4] {
        assert!(
            store.get(&ns, *h).await.unwrap().is_none(),
            "corrupt data never returned"
        );
    }
    let s = store.stats();
    assert_eq!(s.tiers[1].tier.corrupt_blocks, 4);
    assert_eq!(
        store.lookup_prefix(&ns, &hashes),
        0,
        "dropped from the index"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_payload_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let h = chain(1, 11)[0];
    let err = store
        .put(&ns(), h, Bytes::from(vec![0u8; 4000]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KvStoreError::WrongBlockSize {
                expected: 4096,
                got: 4000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("4096"));
    let err = store
        .put_key(
            tierkv_kvstore::BlockKey::new(1, 1),
            Bytes::from(vec![0u8; 5000]),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("5000"), "{err}");
    assert!(!store.contains(&ns(), h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = TieredStore::open(&config(&blocker, "", true))
        .await
        .expect_err("data_dir is a file");
    assert!(err.to_string().contains("file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_and_gets_keep_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", true))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (ns, hashes) = (ns(), chain(5, 100 + t));
            for (i, h) in hashes.iter().enumerate() {
                store
                    .put(&ns, *h, block((t * 10 + i as u32) as u64))
                    .await
                    .unwrap();
            }
            for (i, h) in hashes.iter().enumerate() {
                let got = store.get(&ns, *h).await.unwrap();
                assert_eq!(got.unwrap(), block((t * 10 + i as u32) as u64));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 40 blocks in 4 + 4 + 64 slots: all still reachable somewhere.
    assert_eq!(store.stats().blocks, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_sets_one_slot_size_on_every_tier_and_demotes_like_a_config() {
    use tierkv_tiers::{DiskTierConfig, HostTierConfig, ObjectBackend, ObjectTierConfig};
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::builder()
        .slot_bytes(4096)
        .host(HostTierConfig {
            capacity_bytes: 2 * 4096,
            prefault: false,
            ..Default::default()
        })
        .disk(DiskTierConfig {
            path: dir.path().join("disk"),
            capacity_bytes: 4 * 8192,
            queue_depth: 4,
            direct_io: false,
            ..Default::default()
        })
        .object(ObjectTierConfig {
            backend: ObjectBackend::LocalDir(dir.path().join("object")),
            capacity_bytes: 64 * 4096,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    assert_eq!(store.slot_bytes(), 4096);
    let stats = store.stats();
    let names: Vec<_> = stats.tiers.iter().map(|t| t.tier.name.as_str()).collect();
    assert_eq!(names, ["host", "disk", "object"]);
    assert_eq!(stats.tiers[0].tier.capacity_bytes, 2 * 4096);
    let hashes = chain(8, 3);
    for (i, h) in hashes.iter().enumerate() {
        store.put(&ns(), *h, block(i as u64)).await.unwrap();
    }
    store.settle_promotions().await;
    let stats = store.stats();
    assert_eq!(stats.tiers[0].tier.blocks, 2, "the host holds 2 slots");
    assert!(stats.tiers[0].demotions >= 6, "{stats:?}");
    for (i, h) in hashes.iter().enumerate() {
        assert_eq!(
            store.get(&ns(), *h).await.unwrap(),
            Some(block(i as u64)),
            "block {i} after demotion"
        );
    }
    // A store needs at least one tier.
    assert!(matches!(
        TieredStore::builder().build().await,
        Err(KvStoreError::Config(_))
    ));
}

/// An in-place writer (the GPU offload path) stages slots of the host tier, fills them,
/// and the put adopts them without a copy; with no slot free, staging evicts (demotes)
/// the least recently used block first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_host_slots_are_adopted_and_make_room_by_demoting() {
    let dir = tempfile::tempdir().unwrap();
    let store = TieredStore::open(&config(dir.path(), "", false))
        .await
        .unwrap();
    let (ns, hashes) = (ns(), chain(6, 3));
    for (i, h) in hashes[..4].iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    assert_eq!(store.locate_prefix(&ns, &hashes[..4]), [0, 0, 0, 0]);
    // Host is full (4 slots): staging demotes the oldest block to disk.
    let slot = store.stage_top().await.unwrap().expect("a host slot");
    assert_eq!(store.locate_prefix(&ns, &hashes[..4]), [1, 0, 0, 0]);
    let want = block(100);
    // SAFETY: the slot is staged for this test alone and holds 4 KiB.
    unsafe { std::ptr::copy_nonoverlapping(want.as_ptr(), slot.as_mut_ptr(), want.len()) };
    let offset = slot.offset();
    let staged = slot.into_bytes(want.len());
    assert_eq!(
        store.put(&ns, hashes[4], staged).await.unwrap(),
        PutOutcome::Stored
    );
    let got = store.get(&ns, hashes[4]).await.unwrap().unwrap();
    assert_eq!(got, want);
    let host = store.top_host().expect("the top tier is a host tier");
    assert_eq!(
        host.offset_of(&got),
        Some(offset),
        "the put adopted the staged slot: no copy"
    );
    assert!(
        store.shared_host().is_none(),
        "this host tier is not shared"
    );
    // A dropped staged slot goes back to the tier unused.
    let before = store.stats().tiers[0].tier.blocks;
    drop(store.stage_top().await.unwrap().expect("a host slot"));
    assert_eq!(
        store.stats().tiers[0].tier.blocks,
        before - 1,
        "staging made room"
    );
    assert!(
        store.stage_top().await.unwrap().is_some(),
        "the dropped slot is free again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_put_completes_the_write_through_that_failed() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{}"
        slot_bytes = 4096
        [[tier]]
        kind = "host"
        capacity = "32KiB"
        [[tier]]
        kind = "disk"
        capacity = "32KiB"   # 4 slots
        queue_depth = 4
        write_through = true
        "#,
        dir.path().display()
    ))
    .unwrap();
    let store = TieredStore::open(&config).await.unwrap();
    let (ns, hashes) = (ns(), chain(5, 9));
    for (i, h) in hashes[..4].iter().enumerate() {
        store.put(&ns, *h, block(i as u64)).await.unwrap();
    }
    // Every disk slot holds a block a reader has pinned: the copy of the next put fails.
    let pin = store.pin(&ns, &hashes[..4]);
    let err = store.put(&ns, hashes[4], block(4)).await.unwrap_err();
    assert!(matches!(err, KvStoreError::NoRoom { .. }), "{err}");
    let disk = &store.tiers()[1];
    let key = tierkv_kvstore::BlockKey::new(ns.id(), hashes[4].0);
    assert!(!disk.contains(key).await.unwrap());
    drop(pin);
    // The caller retries the put it was refused: it must not be acknowledged until the
    // block is written through.
    store.put(&ns, hashes[4], block(4)).await.unwrap();
    assert!(
        disk.contains(key).await.unwrap(),
        "written through on retry"
    );
    assert_eq!(disk.get(key).await.unwrap().unwrap(), block(4));
}

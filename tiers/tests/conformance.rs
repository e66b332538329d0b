//! The conformance suite (`tierkv_tiers::testing::conformance`) on every tier of this
//! crate: host, disk, object on a local directory and object on a real S3-compatible
//! server; then what only the disk and object tiers promise (restarts, damaged files).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::sync::Arc;

use common::{S3Server, payload};
use tierkv_tiers::testing::conformance::Capabilities;
use tierkv_tiers::{
    BlockKey, DiskTier, DiskTierConfig, HostTier, HostTierConfig, ObjectBackend, ObjectTier,
    ObjectTierConfig, PutOutcome, Tier, TierError,
};

const SLOT: usize = 64 * 1024;
const CAPACITY_BLOCKS: u64 = 24;

fn key(i: u64) -> BlockKey {
    BlockKey::new(0xfeed, (i as u128) << 64 | 0x5eed)
}

/// Keeps whatever backs a tier (a temp dir, a server) alive for the test.
#[allow(dead_code)]
enum Guard {
    Dir(tempfile::TempDir),
    S3(S3Server),
}

async fn host() -> (Arc<dyn Tier>, Guard) {
    let tier = HostTier::new(HostTierConfig {
        capacity_bytes: CAPACITY_BLOCKS * SLOT as u64,
        slot_bytes: SLOT,
        ..Default::default()
    })
    .unwrap();
    (Arc::new(tier), Guard::Dir(tempfile::tempdir().unwrap()))
}

fn disk_config(dir: &std::path::Path) -> DiskTierConfig {
    let stride = (SLOT + 64).div_ceil(4096) * 4096;
    DiskTierConfig {
        path: dir.join("disk"),
        capacity_bytes: CAPACITY_BLOCKS * stride as u64,
        slot_bytes: SLOT,
        queue_depth: 8,
        ..Default::default()
    }
}

async fn disk() -> (Arc<dyn Tier>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(disk_config(dir.path())).unwrap();
    (Arc::new(tier), Guard::Dir(dir))
}

fn object_config(backend: ObjectBackend) -> ObjectTierConfig {
    ObjectTierConfig {
        backend,
        capacity_bytes: CAPACITY_BLOCKS * SLOT as u64,
        slot_bytes: SLOT,
        max_concurrency: 8,
        ..Default::default()
    }
}

async fn object_local() -> (Arc<dyn Tier>, Guard) {
    let dir = tempfile::tempdir().unwrap();
    let tier = ObjectTier::open(object_config(ObjectBackend::LocalDir(
        dir.path().join("obj"),
    )))
    .await
    .unwrap();
    (Arc::new(tier), Guard::Dir(dir))
}

fn s3_backend(server: &S3Server, bucket: &str) -> ObjectBackend {
    ObjectBackend::S3 {
        bucket: bucket.into(),
        region: "us-east-1".into(),
        endpoint: Some(server.endpoint.clone()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        allow_http: true,
        virtual_hosted_style: false,
    }
}

async fn object_s3() -> (Arc<dyn Tier>, Guard) {
    let server = S3Server::start();
    server.create_bucket("tierkv-test");
    let tier = ObjectTier::open(object_config(s3_backend(&server, "tierkv-test")))
        .await
        .unwrap();
    (Arc::new(tier), Guard::S3(server))
}

tierkv_tiers::tier_conformance_tests!(host_tier, Capabilities::local(), host());
tierkv_tiers::tier_conformance_tests!(disk_tier, Capabilities::local(), disk());
tierkv_tiers::tier_conformance_tests!(object_tier_local_dir, Capabilities::local(), object_local());
tierkv_tiers::tier_conformance_tests!(object_tier_s3, Capabilities::local(), object_s3());

// ---- medium-specific behaviour -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_blocks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = disk_config(dir.path());
    {
        let tier = DiskTier::open(config.clone()).unwrap();
        for i in 0..10 {
            tier.put(key(i), payload(i, 10_000 + i as usize))
                .await
                .unwrap();
        }
        tier.remove(key(3)).await.unwrap();
    }
    let tier = DiskTier::open(config).unwrap();
    assert_eq!(tier.len(), 9);
    for i in 0..10 {
        let got = tier.get(key(i)).await.unwrap();
        if i == 3 {
            assert!(got.is_none());
        } else {
            assert_eq!(got.unwrap(), payload(i, 10_000 + i as usize), "block {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_corruption_is_a_miss_never_data() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(disk_config(dir.path())).unwrap();
    for i in 0..3 {
        tier.put(key(i), payload(i, 20_000)).await.unwrap();
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(tier.data_file())
        .unwrap();
    // Flip one payload byte of block 0 and one header byte of block 1.
    let off0 = tier.slot_offset(key(0)).unwrap();
    file.write_all_at(&[0xff ^ payload(0, 20_000)[500]], off0 + 64 + 500)
        .unwrap();
    let off1 = tier.slot_offset(key(1)).unwrap();
    file.write_all_at(&[0x42], off1 + 9).unwrap();
    file.sync_all().unwrap();

    assert!(tier.get(key(0)).await.unwrap().is_none());
    assert!(tier.get(key(1)).await.unwrap().is_none());
    assert_eq!(tier.get(key(2)).await.unwrap().unwrap(), payload(2, 20_000));
    let stats = tier.stats();
    assert_eq!(stats.corrupt_blocks, 2);
    assert!(
        !tier.contains(key(0)).await.unwrap(),
        "a corrupt block is dropped"
    );
    assert_eq!(tier.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_slot_buffers_write_from_and_read_into_the_callers_memory() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let tier = DiskTier::open(disk_config(dir.path())).unwrap();
    // A buffer over the caller's own (4 KiB-aligned) memory, as the GPU path pins it.
    let layout = std::alloc::Layout::from_size_align(2 * tier.slot_stride(), 4096).unwrap();
    // SAFETY: `layout` has a non-zero size; the region is freed at the end, after
    // every buffer over it is dropped.
    let region = unsafe { std::alloc::alloc_zeroed(layout) };
    // SAFETY: the region is 4 KiB-aligned, two strides long, and only this buffer
    // uses its first stride until it is dropped.
    let mut mine = unsafe { tier.slot_buffer_in(region, tier.slot_stride()) }.unwrap();
    let data = payload(7, 20_000);
    mine.payload_mut()[..data.len()].copy_from_slice(&data);
    let (mine, outcome) = tier.put_from_buffer(key(7), mine, data.len()).await;
    assert_eq!(outcome.unwrap(), PutOutcome::Stored);
    let mine = mine.expect("the buffer comes back");
    // The written block is an ordinary block of the tier, and the buffer came back.
    assert_eq!(tier.get(key(7)).await.unwrap().unwrap(), data);
    let (mine, outcome) = tier.put_from_buffer(key(7), mine, data.len()).await;
    assert_eq!(outcome.unwrap(), PutOutcome::AlreadyPresent);
    let mine = mine.unwrap();

    // Read back into another buffer (owned by the tier's allocator).
    tier.put(key(8), payload(8, SLOT)).await.unwrap();
    let other = tier.slot_buffer();
    let (other, got) = tier.get_into_buffer(key(8), other).await;
    assert_eq!(got.unwrap(), Some(SLOT));
    let other = other.unwrap();
    assert_eq!(&other.payload()[..SLOT], &payload(8, SLOT)[..]);
    let (other, got) = tier.get_into_buffer(key(99), other).await;
    assert_eq!(got.unwrap(), None, "a block the tier lacks");
    let other = other.unwrap();

    // A damaged block read into a buffer is a miss, never data, and is dropped.
    let off = tier.slot_offset(key(7)).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(tier.data_file())
        .unwrap();
    file.write_all_at(&[0xff ^ data[9]], off + 64 + 9).unwrap();
    file.sync_all().unwrap();
    let (mine, got) = tier.get_into_buffer(key(7), mine).await;
    assert_eq!(got.unwrap(), None);
    assert_eq!(tier.stats().corrupt_blocks, 1);
    assert!(!tier.contains(key(7)).await.unwrap());

    // Bad lengths and buffers are errors, not partial writes.
    let (other, r) = tier.put_from_buffer(key(9), other, 0).await;
    assert!(matches!(r, Err(TierError::Empty(_))));
    let (other, r) = tier.put_from_buffer(key(9), other.unwrap(), SLOT + 1).await;
    assert!(matches!(r, Err(TierError::TooLarge { .. })));
    assert!(other.is_some(), "a refused buffer comes back");
    assert!(!tier.contains(key(9)).await.unwrap());
    // SAFETY: both calls are refused (misaligned, too short), so no buffer is made.
    assert!(unsafe { tier.slot_buffer_in(region.add(8), tier.slot_stride()) }.is_err());
    // SAFETY: as above.
    assert!(unsafe { tier.slot_buffer_in(region, tier.slot_stride() - 4096) }.is_err());
    let small = DiskTier::open(DiskTierConfig {
        path: dir.path().join("small"),
        slot_bytes: 4000,
        capacity_bytes: 1 << 20,
        ..Default::default()
    })
    .unwrap();
    let (back, r) = tier.get_into_buffer(key(8), small.slot_buffer()).await;
    assert!(
        r.is_err() && back.is_some(),
        "a buffer of a tier with smaller slots is refused"
    );
    drop(mine);
    // SAFETY: allocated above with `layout`; no buffer over the region is alive.
    unsafe { std::alloc::dealloc(region, layout) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_refuses_a_file_of_the_wrong_size_or_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let config = disk_config(dir.path());
    let tier = DiskTier::open(config.clone()).unwrap();
    tier.put(key(1), payload(1, 100)).await.unwrap();
    let data_file = tier.data_file();
    drop(tier);

    let mut bigger = config.clone();
    bigger.capacity_bytes *= 2;
    let err = DiskTier::open(bigger).expect_err("geometry changed");
    assert!(err.to_string().contains("slots"), "{err}");

    std::fs::OpenOptions::new()
        .write(true)
        .open(&data_file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = DiskTier::open(config).expect_err("file truncated");
    assert!(err.to_string().contains("truncated"), "{err}");
}

/// A deleted index, a garbage MANIFEST or a missing CURRENT: the tier opens (with a
/// loud log), the damaged index moved aside, and the index rebuilt from the slots'
/// headers brings back every block whose slot is intact, with its bytes; a slot whose
/// header was damaged stays a miss. A tier open elsewhere (RocksDB's lock) is an
/// error, not damage: nothing is moved or rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_index_deleted_or_damaged_is_rebuilt_from_the_slots() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let config = disk_config(dir.path());
    let size = |i: u64| 5_000 + 300 * i as usize;
    let damaged_header;
    {
        let tier = DiskTier::open(config.clone()).unwrap();
        for i in 0..8 {
            tier.put(key(i), payload(i, size(i))).await.unwrap();
        }
        // A second open while this one holds the index is refused, and harmless.
        let err = DiskTier::open(config.clone()).expect_err("index in use");
        assert!(err.to_string().contains("index"), "{err}");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(tier.data_file())
            .unwrap();
        damaged_header = tier.slot_offset(key(5)).unwrap();
        file.write_all_at(&[0x42], damaged_header + 33).unwrap();
        file.sync_all().unwrap();
    }
    let index = config.path.join("index");
    let aside = || {
        std::fs::read_dir(&config.path)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("index.damaged-")
            })
            .count()
    };
    assert_eq!(aside(), 0, "the lock error moved nothing");
    let check = |tier: DiskTier, round: &'static str| async move {
        assert_eq!(tier.len(), 7, "{round}: every intact slot is indexed");
        for i in 0..8 {
            let got = tier.get(key(i)).await.unwrap();
            if i == 5 {
                assert!(got.is_none(), "{round}: the damaged header is a miss");
            } else {
                assert_eq!(got, Some(payload(i, size(i))), "{round}: block {i}");
            }
        }
    };

    // Deleted.
    std::fs::remove_dir_all(&index).unwrap();
    check(DiskTier::open(config.clone()).unwrap(), "deleted").await;

    // Every MANIFEST overwritten with garbage.
    for e in std::fs::read_dir(&index).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("MANIFEST")
        {
            std::fs::write(&p, vec![0x5a; 4096]).unwrap();
        }
    }
    check(DiskTier::open(config.clone()).unwrap(), "garbage MANIFEST").await;
    assert_eq!(aside(), 1, "the damaged index is kept beside, not deleted");

    // CURRENT gone.
    std::fs::remove_file(index.join("CURRENT")).unwrap();
    let tier = DiskTier::open(config.clone()).unwrap();
    // The rebuilt index takes new blocks and reopens as usual.
    tier.put(key(20), payload(20, 1234)).await.unwrap();
    drop(tier);
    let tier = DiskTier::open(config.clone()).unwrap();
    assert_eq!(tier.get(key(20)).await.unwrap(), Some(payload(20, 1234)));
    tier.remove(key(20)).await.unwrap();
    check(tier, "CURRENT gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_reports_an_unusable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let mut config = disk_config(dir.path());
    config.path = file.join("disk");
    let err = DiskTier::open(config).expect_err("path under a file");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_corruption_is_a_miss_never_data() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("obj");
    let tier = ObjectTier::open(object_config(ObjectBackend::LocalDir(root.clone())))
        .await
        .unwrap();
    tier.put(key(1), payload(1, 5000)).await.unwrap();
    let file = root.join(tier.object_path(key(1)).as_ref());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[64 + 10] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    assert!(tier.get(key(1)).await.unwrap().is_none());
    assert_eq!(tier.stats().corrupt_blocks, 1);
    assert!(!file.exists(), "the corrupt object is deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_tier_reopens_from_s3_listing() {
    let server = S3Server::start();
    server.create_bucket("tierkv-test");
    {
        let tier = ObjectTier::open(object_config(s3_backend(&server, "tierkv-test")))
            .await
            .unwrap();
        for i in 0..5 {
            tier.put(key(i), payload(i, 3000)).await.unwrap();
        }
    }
    let tier = ObjectTier::open(object_config(s3_backend(&server, "tierkv-test")))
        .await
        .unwrap();
    assert_eq!(tier.len(), 5);
    for i in 0..5 {
        assert_eq!(tier.get(key(i)).await.unwrap().unwrap(), payload(i, 3000));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_s3_endpoint_is_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = object_config(ObjectBackend::S3 {
        bucket: "kv".into(),
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("a".into()),
        secret_access_key: Some("b".into()),
        allow_http: true,
        virtual_hosted_style: false,
    });
    config.max_retries = 1;
    config.request_timeout = std::time::Duration::from_secs(2);
    let err = ObjectTier::open(config)
        .await
        .expect_err("nothing listens there");
    let msg = format!("{err}");
    assert!(msg.contains("object tier"), "{msg}");
}

//! A real full filesystem: a small tmpfs mounted for each test (needs root for
//! `mount`; without it the test says so and stops, as the multi-host test does). The
//! disk tier refuses a file larger than the filesystem with a clear error; an object
//! tier whose directory fills up fails its puts with "No space left" and keeps every
//! block it acknowledged, through a restart; a disk tier whose index cannot grow fails
//! puts cleanly and keeps what it acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use tierkv_kvstore::{EvictPolicy, TierPolicy, TieredStore};
use tierkv_tiers::testing::payload;
use tierkv_tiers::{
    BlockKey, DiskTier, DiskTierConfig, HostTierConfig, ObjectBackend, ObjectTierConfig, Tier,
};

const SLOT: usize = 64 << 10;

/// A tmpfs of `size` mounted on a fresh directory until dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs here ({}); run as root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: no mount command ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills what is left with a file (until ENOSPC); its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x55u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn key(i: u64) -> BlockKey {
    BlockKey::new(11, u128::from(i))
}

fn block(i: u64) -> Bytes {
    payload(i, SLOT - 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tier_larger_than_its_filesystem_is_refused_clearly() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let err = DiskTier::open(DiskTierConfig {
        path: fs.path().join("disk"),
        capacity_bytes: 16 << 20,
        slot_bytes: SLOT,
        queue_depth: 4,
        direct_io: false,
        ..Default::default()
    })
    .expect_err("16 MiB do not fit in 4 MiB");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("preallocating") && msg.contains("No space left"),
        "{msg}"
    );
}

async fn host_over_objects(dir: &Path) -> TieredStore {
    TieredStore::builder()
        .slot_bytes(SLOT)
        .host(HostTierConfig {
            capacity_bytes: 2 * SLOT as u64,
            prefault: false,
            ..Default::default()
        })
        .object(ObjectTierConfig {
            backend: ObjectBackend::LocalDir(dir.join("objects")),
            capacity_bytes: 1 << 30,
            slot_bytes: SLOT,
            max_concurrency: 4,
            ..Default::default()
        })
        .policy(TierPolicy {
            write_through: true,
            on_evict: EvictPolicy::Demote,
        })
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_tier_on_a_full_filesystem_fails_puts_and_keeps_what_it_acknowledged() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let store = host_over_objects(fs.path()).await;
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..64 {
        match store.put_key(key(i), block(i)).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(msg.contains("No space left"), "block {i}: {msg}");
                refused.push(i);
            }
        }
    }
    assert!(
        acked.len() >= 4 && refused.len() >= 8,
        "the 2 MiB filled up: {} acknowledged, {} refused",
        acked.len(),
        refused.len()
    );
    store.settle_promotions().await;
    drop(store);

    // Every acknowledged block is there after a restart, byte for byte; a refused one
    // is absent (or, if a later demotion carried it out, right).
    let store = host_over_objects(fs.path()).await;
    for &i in &acked {
        assert_eq!(
            store.get_key(key(i)).await.unwrap(),
            Some(block(i)),
            "block {i}"
        );
    }
    for &i in &refused {
        let got = store.get_key(key(i)).await.unwrap();
        assert!(got.is_none() || got == Some(block(i)), "refused block {i}");
    }
    // A failed write left no half-written object behind to eat the space.
    let mut stray = Vec::new();
    let mut dirs = vec![fs.path().join("objects")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if !p.to_string_lossy().ends_with(".kvb") {
                stray.push(p);
            }
        }
    }
    assert!(stray.is_empty(), "staging files left: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_tier_whose_filesystem_fills_keeps_what_it_acknowledged() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let config = DiskTierConfig {
        path: fs.path().join("disk"),
        capacity_bytes: 48 * (SLOT as u64 + 4096),
        slot_bytes: SLOT,
        queue_depth: 4,
        direct_io: false,
        ..Default::default()
    };
    let tier = DiskTier::open(config.clone()).unwrap();
    let filler = fs.fill();
    // The slot file is preallocated: block writes still land; the index's log is what
    // may find no room. Either way a put is acknowledged only when both are in.
    let mut acked = Vec::new();
    for i in 0..48 {
        match tier.put(key(i), block(i)).await {
            Ok(_) => acked.push(i),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("No space left") || msg.contains("index"),
                    "{msg}"
                );
            }
        }
    }
    eprintln!("full filesystem: {} of 48 puts acknowledged", acked.len());
    drop(tier);
    std::fs::remove_file(filler).unwrap();
    let tier = DiskTier::open(config).unwrap();
    for &i in &acked {
        assert_eq!(tier.get(key(i)).await.unwrap(), Some(block(i)), "block {i}");
    }
    assert!(
        tier.len() >= acked.len() as u64,
        "{} indexed, {} acknowledged",
        tier.len(),
        acked.len()
    );
}

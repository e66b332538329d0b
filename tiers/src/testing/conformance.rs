//! The conformance suite of [`Tier`]: what every implementation must do, as public
//! functions any backend's tests call (the way `object_store` exposes its integration
//! suite), so that a tier written outside this crate is held to the same contract.
//!
//! Every case takes a fresh, empty tier and panics, naming the tier and what broke,
//! when the tier misbehaves. [`Capabilities`] says what the tier under test can do:
//! a simulated tier keeps no bytes, a peer's block service neither bounds nor lists
//! what it holds; the cases skip what does not apply. [`tier_conformance_tests!`]
//! writes one `#[tokio::test]` per case.
//!
//! A tier under test should have slots of at least 8 KiB and a capacity of 20 to 1,024
//! blocks (the capacity case fills it).
//!
//! Besides the contract of each call, the suite checks cancellation, which a Rust
//! future makes easy to get wrong: a `put` or `get` dropped at any await point leaves
//! no orphan block, no lost capacity and no half-written block behind, and a `remove`
//! racing reads never makes a read return wrong bytes.
//!
//! [`tier_conformance_tests!`]: crate::tier_conformance_tests

// Test code shipped for other crates' tests: a panic is how a case fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::payload;
use crate::{BlockKey, PutOutcome, Tier, TierError};

/// What the tier under test can do; the cases skip what it cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `get` returns the bytes that were put (a simulated tier returns a payload of
    /// the right length only).
    pub keeps_payloads: bool,
    /// It holds at most `capacity_blocks()` blocks and refuses more with
    /// [`TierError::Full`].
    pub bounded: bool,
    /// It knows what it holds: `len`, `payload_bytes`, `used_bytes`, `keys`, `remove`
    /// and its hit and miss counters are its own (a peer's block service, asked over
    /// the network and evicting on its own, is not).
    pub indexed: bool,
    /// The namespace digest of the suite's keys. Default [`DEFAULT_NAMESPACE`].
    pub namespace: u64,
}

/// The namespace digest of the suite's keys unless [`Capabilities::in_namespace`] says.
pub const DEFAULT_NAMESPACE: u64 = 0xc0f0_4a11_5eed_0001;

impl Capabilities {
    /// A local medium: host memory, disk, object storage.
    pub const fn local() -> Capabilities {
        Capabilities {
            keeps_payloads: true,
            bounded: true,
            indexed: true,
            namespace: DEFAULT_NAMESPACE,
        }
    }

    /// The same, with the suite's keys in namespace digest `namespace` (a peer's block
    /// service needs the name behind a digest: register a name and pass its digest).
    pub const fn in_namespace(self, namespace: u64) -> Capabilities {
        Capabilities { namespace, ..self }
    }

    /// The key of block `i` of the suite.
    pub fn key(&self, i: u64) -> BlockKey {
        BlockKey::new(self.namespace, ((i as u128) << 64) | 0x5eed)
    }

    /// A tier that keeps only which blocks it holds and their lengths.
    pub const fn metadata_only() -> Capabilities {
        Capabilities {
            keeps_payloads: false,
            ..Capabilities::local()
        }
    }

    /// A peer's block service used as a tier (writable).
    pub const fn peer() -> Capabilities {
        Capabilities {
            keeps_payloads: true,
            bounded: false,
            indexed: false,
            namespace: DEFAULT_NAMESPACE,
        }
    }
}

/// The names of the cases, in the order [`run_all`] runs them.
pub const CASES: &[&str] = &[
    "round_trip",
    "idempotent_put",
    "contains_and_remove",
    "capacity_limit",
    "bad_payloads",
    "concurrent_puts_and_gets",
    "dropped_put_leaves_no_orphan",
    "dropped_get_loses_nothing",
    "remove_during_reads",
];

/// Runs case `name` of [`CASES`] on `tier`.
pub async fn run_case(name: &str, tier: Arc<dyn Tier>, caps: Capabilities) {
    match name {
        "round_trip" => round_trip(&*tier, caps).await,
        "idempotent_put" => idempotent_put(&*tier, caps).await,
        "contains_and_remove" => contains_and_remove(&*tier, caps).await,
        "capacity_limit" => capacity_limit(&*tier, caps).await,
        "bad_payloads" => bad_payloads(&*tier, caps).await,
        "concurrent_puts_and_gets" => concurrent_puts_and_gets(tier, caps).await,
        "dropped_put_leaves_no_orphan" => dropped_put_leaves_no_orphan(&*tier, caps).await,
        "dropped_get_loses_nothing" => dropped_get_loses_nothing(&*tier, caps).await,
        "remove_during_reads" => remove_during_reads(tier, caps).await,
        other => panic!("no conformance case {other:?} (see CASES)"),
    }
}

/// Runs every case, each on a fresh tier from `make` (which returns the tier and
/// whatever must stay alive while it is used: a directory, a server).
pub async fn run_all<G, F, Fut>(make: F, caps: Capabilities)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (Arc<dyn Tier>, G)>,
{
    for case in CASES {
        let (tier, guard) = make().await;
        run_case(case, tier, caps).await;
        drop(guard);
    }
}

fn must<T>(tier: &dyn Tier, what: &str, r: crate::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}: {what}: {e}", tier.name()),
    }
}

fn must_key<T>(tier: &dyn Tier, what: &str, k: BlockKey, r: crate::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{}: {what} {k}: {e}", tier.name()),
    }
}

async fn get(tier: &dyn Tier, k: BlockKey) -> Option<Bytes> {
    let r = tier.get(k).await;
    must_key(tier, "get", k, r)
}

async fn put(tier: &dyn Tier, k: BlockKey, data: Bytes) -> PutOutcome {
    let r = tier.put(k, data).await;
    must_key(tier, "put", k, r)
}

/// Whether `got` is what a tier with `caps` must return for `want`.
fn same(caps: Capabilities, got: &Bytes, want: &Bytes) -> bool {
    if caps.keeps_payloads {
        got == want
    } else {
        got.len() == want.len()
    }
}

/// Lengths from one byte to a whole slot, across the 4 KiB page boundary.
fn lengths(tier: &dyn Tier) -> Vec<usize> {
    let slot = tier.slot_bytes();
    assert!(
        slot >= 8192,
        "{}: the suite needs slots of 8 KiB or more",
        tier.name()
    );
    vec![1, 100, 4096, 5000, slot - 1, slot]
}

/// Every length round-trips, misses are `None`, and the tier's figures add up.
pub async fn round_trip(tier: &dyn Tier, caps: Capabilities) {
    let lens = lengths(tier);
    for (i, &len) in lens.iter().enumerate() {
        let data = payload(i as u64, len);
        assert_eq!(
            put(tier, caps.key(i as u64), data.clone()).await,
            PutOutcome::Stored
        );
        let back = get(tier, caps.key(i as u64)).await;
        let back = back.unwrap_or_else(|| panic!("{}: block {i} just stored", tier.name()));
        assert!(
            same(caps, &back, &data),
            "{}: block {i} of {len} bytes differs",
            tier.name()
        );
    }
    assert!(
        get(tier, caps.key(999)).await.is_none(),
        "{}: a block never stored",
        tier.name()
    );
    if !caps.indexed {
        return;
    }
    let n = lens.len() as u64;
    let stats = tier.stats();
    assert_eq!(
        (stats.hits, stats.misses),
        (n, 1),
        "{}: hits and misses",
        tier.name()
    );
    assert_eq!(
        (stats.blocks, tier.len()),
        (n, n),
        "{}: blocks held",
        tier.name()
    );
    let payload_bytes: u64 = lens.iter().map(|&l| l as u64).sum();
    assert_eq!(
        stats.payload_bytes,
        payload_bytes,
        "{}: payload bytes",
        tier.name()
    );
    assert_eq!(
        tier.payload_bytes(),
        payload_bytes,
        "{}: payload bytes",
        tier.name()
    );
    // A block takes a whole slot, whatever its length.
    assert_eq!(
        stats.used_bytes,
        n * tier.slot_bytes() as u64,
        "{}: used bytes",
        tier.name()
    );
    assert_eq!(
        tier.used_bytes(),
        stats.used_bytes,
        "{}: used bytes",
        tier.name()
    );
    let mut keys: Vec<_> = must(tier, "keys", tier.keys().await);
    keys.sort();
    let mut expected: Vec<_> = (0..n)
        .map(|i| (caps.key(i), lens[i as usize] as u64))
        .collect();
    expected.sort();
    assert_eq!(
        keys,
        expected,
        "{}: keys() lists every block with its length",
        tier.name()
    );
}

/// A second put of a key stores nothing: the first write wins.
pub async fn idempotent_put(tier: &dyn Tier, caps: Capabilities) {
    let data = payload(7, 3000);
    assert_eq!(
        put(tier, caps.key(7), data.clone()).await,
        PutOutcome::Stored
    );
    let used = tier.payload_bytes();
    assert_eq!(
        put(tier, caps.key(7), payload(8, 3000)).await,
        PutOutcome::AlreadyPresent,
        "{}: a second put of a key",
        tier.name()
    );
    assert_eq!(
        tier.payload_bytes(),
        used,
        "{}: nothing more stored",
        tier.name()
    );
    let back = get(tier, caps.key(7)).await.expect("stored");
    assert!(
        same(caps, &back, &data),
        "{}: the first write wins",
        tier.name()
    );
}

/// `contains` sees what was stored; `remove` takes it out and frees its room.
pub async fn contains_and_remove(tier: &dyn Tier, caps: Capabilities) {
    put(tier, caps.key(1), payload(1, 100)).await;
    assert!(
        must(tier, "contains", tier.contains(caps.key(1)).await),
        "{}: contains",
        tier.name()
    );
    assert!(
        !must(tier, "contains", tier.contains(caps.key(2)).await),
        "{}: absent",
        tier.name()
    );
    if !caps.indexed {
        return;
    }
    assert!(
        must(tier, "remove", tier.remove(caps.key(1)).await),
        "{}: remove",
        tier.name()
    );
    assert!(
        !must(tier, "remove", tier.remove(caps.key(1)).await),
        "{}: removed twice",
        tier.name()
    );
    assert!(
        !must(tier, "contains", tier.contains(caps.key(1)).await),
        "{}: gone",
        tier.name()
    );
    assert!(
        get(tier, caps.key(1)).await.is_none(),
        "{}: a removed block is a miss",
        tier.name()
    );
    assert_eq!(
        (tier.used_bytes(), tier.payload_bytes()),
        (0, 0),
        "{}: room freed",
        tier.name()
    );
    // The key can be stored again afterwards.
    put(tier, caps.key(1), payload(11, 200)).await;
    let back = get(tier, caps.key(1)).await.expect("stored again");
    assert!(
        same(caps, &back, &payload(11, 200)),
        "{}: stored again",
        tier.name()
    );
}

/// A full tier refuses a put with [`TierError::Full`] and loses nothing; one remove
/// makes room for one block.
pub async fn capacity_limit(tier: &dyn Tier, caps: Capabilities) {
    if !caps.bounded {
        return;
    }
    let capacity = tier.capacity_blocks();
    assert!(
        (1..=1024).contains(&capacity),
        "{}: configure 1..=1024 blocks for the suite (has {capacity})",
        tier.name()
    );
    for i in 0..capacity {
        put(tier, caps.key(i), payload(i, 1000)).await;
    }
    match tier.put(caps.key(100_000), payload(0, 1000)).await {
        Err(TierError::Full { .. }) => {}
        other => panic!("{}: a put into a full tier: {other:?}", tier.name()),
    }
    for i in 0..capacity {
        let back = get(tier, caps.key(i)).await;
        let ok = back.is_some_and(|b| same(caps, &b, &payload(i, 1000)));
        assert!(ok, "{}: block {i} lost by a refused put", tier.name());
    }
    must(tier, "remove", tier.remove(caps.key(0)).await);
    put(tier, caps.key(100_000), payload(0, 1000)).await;
    assert_eq!(tier.len(), capacity, "{}: full again", tier.name());
}

/// Empty and oversized payloads are errors, and store nothing.
pub async fn bad_payloads(tier: &dyn Tier, caps: Capabilities) {
    match tier.put(caps.key(1), Bytes::new()).await {
        Err(TierError::Empty(_)) => {}
        other => panic!("{}: an empty payload: {other:?}", tier.name()),
    }
    let slot = tier.slot_bytes();
    match tier.put(caps.key(1), payload(1, slot + 1)).await {
        Err(e @ TierError::TooLarge { .. }) => {
            assert!(e.to_string().contains(&(slot + 1).to_string()), "{e}");
        }
        other => panic!(
            "{}: a payload of a slot plus one byte: {other:?}",
            tier.name()
        ),
    }
    assert!(
        !must(tier, "contains", tier.contains(caps.key(1)).await),
        "{}: nothing stored",
        tier.name()
    );
}

/// Sixteen tasks put and read their own blocks while racing on one shared key.
pub async fn concurrent_puts_and_gets(tier: Arc<dyn Tier>, caps: Capabilities) {
    let slot = tier.slot_bytes();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let tier = Arc::clone(&tier);
        tasks.push(tokio::spawn(async move {
            let i = 1000 + t;
            let data = payload(i, slot - (t as usize) * 100);
            put(&*tier, caps.key(5000), payload(5000, 777)).await;
            put(&*tier, caps.key(i), data.clone()).await;
            for _ in 0..4 {
                let mine = get(&*tier, caps.key(i)).await.expect("own block");
                assert!(same(caps, &mine, &data), "{}: block {i}", tier.name());
                let shared = get(&*tier, caps.key(5000)).await.expect("shared block");
                assert!(
                    same(caps, &shared, &payload(5000, 777)),
                    "{}: shared",
                    tier.name()
                );
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    if caps.indexed {
        assert_eq!(
            tier.len(),
            17,
            "{}: 16 blocks and the shared one",
            tier.name()
        );
    }
}

/// Polls `fut` at most `polls` times, then drops it: a caller that gave up (a
/// timeout, a `select!`, a client that went away) at one of its await points.
async fn abandon_after<F: Future>(fut: F, polls: usize) -> bool {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..polls {
        if fut.as_mut().poll(&mut cx).is_ready() {
            return true;
        }
        // Let the tier's own tasks and threads move on between polls.
        tokio::task::yield_now().await;
        std::thread::yield_now();
    }
    false
}

/// Waits (up to 10 s) until the tier's count of blocks equals the blocks a read finds
/// among `keys`: work left behind by abandoned calls has settled, or it never will.
async fn settled_count(tier: &dyn Tier, caps: Capabilities, keys: &[BlockKey]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = 0;
        for &k in keys {
            if get(tier, k).await.is_some() {
                found += 1;
            }
        }
        // A tier that does not count its blocks has nothing to settle against.
        if !caps.indexed || tier.len() == found || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fills a bounded tier from its current blocks up: exactly its free capacity must
/// fit, or capacity was lost.
async fn fills_to_capacity(tier: &dyn Tier, caps: Capabilities, held: u64) {
    let free = tier.capacity_blocks() - held;
    for i in 0..free {
        let k = caps.key(900_000 + i);
        match tier.put(k, payload(i, 2000)).await {
            Ok(_) => {}
            Err(e) => panic!(
                "{}: block {i} of {free} free ones refused: {e}",
                tier.name()
            ),
        }
    }
    match tier.put(caps.key(999_999), payload(1, 2000)).await {
        Err(TierError::Full { .. }) => {}
        other => panic!("{}: past its capacity: {other:?}", tier.name()),
    }
}

/// A put dropped at any of its await points leaves the block whole or absent, counts
/// no orphan, loses no capacity, and does not block a later put of the same key.
pub async fn dropped_put_leaves_no_orphan(tier: &dyn Tier, caps: Capabilities) {
    let len = tier.slot_bytes() / 2;
    let keys: Vec<BlockKey> = (0..12).map(|i| caps.key(3000 + i)).collect();
    for (i, &k) in keys.iter().enumerate() {
        abandon_after(tier.put(k, payload(3000 + i as u64, len)), i).await;
    }
    let held = settled_count(tier, caps, &keys).await;
    for (i, &k) in keys.iter().enumerate() {
        if let Some(back) = get(tier, k).await {
            let ok = same(caps, &back, &payload(3000 + i as u64, len));
            assert!(
                ok,
                "{}: block {i} of an abandoned put is not what was put",
                tier.name()
            );
        }
    }
    if caps.indexed {
        assert_eq!(
            tier.len(),
            held,
            "{}: blocks counted but not readable (orphans)",
            tier.name()
        );
    }
    // Every key takes a put again, with its block readable afterwards.
    for (i, &k) in keys.iter().enumerate() {
        let put_again = tokio::time::timeout(
            Duration::from_secs(10),
            tier.put(k, payload(3000 + i as u64, len)),
        );
        match put_again.await {
            Ok(r) => drop(must(tier, "put after an abandoned put", r)),
            Err(_) => panic!(
                "{}: a put after an abandoned put of the key hangs",
                tier.name()
            ),
        }
        let back = get(tier, k).await.expect("put again");
        assert!(
            same(caps, &back, &payload(3000 + i as u64, len)),
            "{}: block {i}",
            tier.name()
        );
    }
    if caps.bounded && caps.indexed {
        fills_to_capacity(tier, caps, keys.len() as u64).await;
    }
}

/// A get dropped at any of its await points changes nothing: every block is still
/// there, whole, and the tier's capacity is intact.
pub async fn dropped_get_loses_nothing(tier: &dyn Tier, caps: Capabilities) {
    let len = tier.slot_bytes() / 3;
    let keys: Vec<BlockKey> = (0..8).map(|i| caps.key(4000 + i)).collect();
    for (i, &k) in keys.iter().enumerate() {
        put(tier, k, payload(4000 + i as u64, len)).await;
    }
    for round in 0..3 {
        for (i, &k) in keys.iter().enumerate() {
            abandon_after(tier.get(k), i + round).await;
        }
    }
    let held = settled_count(tier, caps, &keys).await;
    assert_eq!(
        held,
        keys.len() as u64,
        "{}: an abandoned get lost a block",
        tier.name()
    );
    for (i, &k) in keys.iter().enumerate() {
        let back = get(tier, k).await.expect("still there");
        assert!(
            same(caps, &back, &payload(4000 + i as u64, len)),
            "{}: block {i}",
            tier.name()
        );
        if caps.indexed {
            // Removable, and its room reusable.
            assert!(
                must(tier, "remove", tier.remove(k).await),
                "{}: remove",
                tier.name()
            );
        }
    }
    if caps.bounded && caps.indexed {
        assert_eq!(tier.len(), 0, "{}: every block removed", tier.name());
        fills_to_capacity(tier, caps, 0).await;
    }
    assert_eq!(
        tier.stats().corrupt_blocks,
        0,
        "{}: nothing was corrupt",
        tier.name()
    );
}

/// Reads racing removes and re-puts of their key (into freed slots) return the block
/// whole or nothing, never another block's bytes, and report no corruption.
pub async fn remove_during_reads(tier: Arc<dyn Tier>, caps: Capabilities) {
    if !caps.indexed {
        return;
    }
    let len = tier.slot_bytes() - 1;
    let target = caps.key(6000);
    let data = payload(6000, len);
    put(&*tier, target, data.clone()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (tier, data, stop) = (Arc::clone(&tier), data.clone(), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads == 0 {
                if let Some(back) = get(&*tier, target).await {
                    assert!(
                        same(caps, &back, &data),
                        "{}: a read during a remove returned other bytes",
                        tier.name()
                    );
                }
                reads += 1;
                // A miss returns without awaiting anything: yield, or four readers
                // would keep the runtime's workers from the removes they race.
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    for round in 0..40u64 {
        must(&*tier, "remove", tier.remove(target).await);
        // Other blocks take the freed slots, then the block comes back.
        for j in 0..3 {
            put(
                &*tier,
                caps.key(6100 + round * 3 + j),
                payload(6100 + j, len),
            )
            .await;
        }
        put(&*tier, target, data.clone()).await;
        for j in 0..3 {
            must(
                &*tier,
                "remove",
                tier.remove(caps.key(6100 + round * 3 + j)).await,
            );
        }
        tokio::task::yield_now().await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        match r.await {
            Ok(reads) => assert!(reads > 0),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let back = get(&*tier, target).await.expect("put back last");
    assert!(
        same(caps, &back, &data),
        "{}: the block after the race",
        tier.name()
    );
    assert_eq!(tier.len(), 1, "{}: only the block is left", tier.name());
    assert_eq!(
        tier.stats().corrupt_blocks,
        0,
        "{}: a race reported corruption",
        tier.name()
    );
}

/// One `#[tokio::test]` per case of the conformance suite, in a module `$name`:
/// `$make` is an `async` expression giving `(Arc<dyn Tier>, guard)`, evaluated afresh
/// for every case; `$caps` the tier's [`Capabilities`]. The calling crate needs
/// `tokio` (with `macros` and `rt-multi-thread`) among its dev-dependencies.
///
/// ```ignore
/// tierkv_tiers::tier_conformance_tests!(host_tier, Capabilities::local(), async {
///     (Arc::new(HostTier::new(config).unwrap()) as Arc<dyn Tier>, ())
/// });
/// ```
#[macro_export]
macro_rules! tier_conformance_tests {
    ($name:ident, $caps:expr, $make:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::tier_conformance_tests!(@cases $caps, $make;
                round_trip, idempotent_put, contains_and_remove, capacity_limit,
                bad_payloads, concurrent_puts_and_gets, dropped_put_leaves_no_orphan,
                dropped_get_loses_nothing, remove_during_reads);
        }
    };
    (@cases $caps:expr, $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (tier, _guard) = $make.await;
                $crate::testing::conformance::run_case(stringify!($case), tier, $caps).await;
            }
        )*
    };
}

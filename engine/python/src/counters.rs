//! What a store handle moved for its caller: saves and loads in blocks, bytes and time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Monotonic counters of one `Store` handle (read by `Store.stats()["io"]`).
#[derive(Debug, Default)]
pub(crate) struct IoCounters {
    /// Blocks `save` accepted (copied out and queued; failures are in `save_failed`).
    pub saved_blocks: AtomicU64,
    pub saved_bytes: AtomicU64,
    /// Blocks `save` skipped because the queue was full.
    pub save_skipped: AtomicU64,
    /// Blocks whose background store failed.
    pub save_failed: AtomicU64,
    pub save_nanos: AtomicU64,
    /// Blocks `load` copied into caller memory.
    pub loaded_blocks: AtomicU64,
    pub loaded_bytes: AtomicU64,
    /// Blocks `load` could not use (missing, wrong size, failed checksum, I/O error).
    pub load_failed: AtomicU64,
    pub load_nanos: AtomicU64,
}

impl IoCounters {
    pub(crate) fn add_time(counter: &AtomicU64, elapsed: Duration) {
        counter.fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let secs = |c: &AtomicU64| c.load(Relaxed) as f64 / 1e9;
        serde_json::json!({
            "saved_blocks": self.saved_blocks.load(Relaxed),
            "saved_bytes": self.saved_bytes.load(Relaxed),
            "save_skipped": self.save_skipped.load(Relaxed),
            "save_failed": self.save_failed.load(Relaxed),
            "save_seconds": secs(&self.save_nanos),
            "loaded_blocks": self.loaded_blocks.load(Relaxed),
            "loaded_bytes": self.loaded_bytes.load(Relaxed),
            "load_failed": self.load_failed.load(Relaxed),
            "load_seconds": secs(&self.load_nanos),
        })
    }
}

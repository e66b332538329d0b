//! The background promoter: a lower-tier hit is copied into the top tier *after* the
//! reader has its bytes, by one task per store fed through a bounded queue. A read
//! therefore never evicts, demotes or writes to disk on its own path; when the queue
//! is full the promotion is skipped (and counted), never waited for.

use std::sync::Weak;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tierkv_tiers::{BlockKey, PutOutcome};
use tokio::sync::{mpsc, oneshot};

use super::{Inner, TieredStore, lock};

/// What the promoter is asked to do.
pub(crate) enum Promotion {
    /// Copy a block read from tier `from` into the top tier.
    Block {
        key: BlockKey,
        data: Bytes,
        from: usize,
    },
    /// Answer once everything queued before is done.
    Settle(oneshot::Sender<()>),
}

/// Starts the promoter of the store behind `inner`; it ends when the store is dropped
/// (its queue's sender lives in the store) or the runtime shuts down.
pub(crate) fn spawn(inner: Weak<Inner>, mut queue: mpsc::Receiver<Promotion>) {
    tokio::spawn(async move {
        while let Some(p) = queue.recv().await {
            match p {
                Promotion::Block { key, data, from } => {
                    let Some(inner) = inner.upgrade() else {
                        return;
                    };
                    TieredStore { inner }.promote(key, data, from).await
                }
                // Answered without holding the store: a caller that drops the store
                // once settled must not find it still held by this task.
                Promotion::Settle(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
}

impl TieredStore {
    /// Queues the promotion of a block just read from tier `from`; never waits.
    pub(super) fn queue_promotion(&self, key: BlockKey, data: &Bytes, from: usize) {
        let Some(queue) = &self.inner.promotions else {
            return;
        };
        let p = Promotion::Block {
            key,
            data: data.clone(),
            from,
        };
        if queue.try_send(p).is_err() {
            self.inner.tiers[from]
                .counters
                .promotions_skipped
                .fetch_add(1, Relaxed);
        }
    }

    /// Waits until every promotion queued before this call is done (tests, and
    /// benchmarks that want a settled store).
    pub async fn settle_promotions(&self) {
        let Some(queue) = &self.inner.promotions else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        if queue.send(Promotion::Settle(tx)).await.is_ok() {
            // An error: the promoter is gone, nothing is pending.
            let _ = rx.await;
        }
    }

    async fn promote(&self, key: BlockKey, data: Bytes, from: usize) {
        let inner = &self.inner;
        // Already promoted, or (read from a local tier) removed since: nothing to do.
        let mask = lock(&inner.index).mask(&key);
        if mask & 1 != 0 || (mask == 0 && inner.tiers[from].tier.is_indexed()) {
            return;
        }
        match self.place(0, key, data).await {
            Ok(PutOutcome::Stored) => {
                inner.tiers[from].counters.promotions.fetch_add(1, Relaxed);
            }
            Ok(PutOutcome::AlreadyPresent) => {}
            Err(e) => tracing::warn!(key = %key, error = %e, "promotion failed"),
        }
    }
}

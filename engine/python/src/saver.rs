//! Background saves: the caller's bytes are copied out at once, stored by one task in
//! the order given; a full queue skips (and counts) instead of blocking the caller.

#[cfg(feature = "cuda")]
use std::future::Future;
#[cfg(feature = "cuda")]
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;
use tierkv_kvstore::Namespace;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Backend;
use crate::counters::IoCounters;

/// Blocks whose bytes are still on their way (a GPU copy in flight): the saving task
/// waits for them, in queue order, then stores them.
#[cfg(feature = "cuda")]
pub(crate) type Deferred = Pin<Box<dyn Future<Output = Result<Vec<(u128, Bytes)>, String>> + Send>>;

enum Job {
    Save {
        ns: Namespace,
        blocks: Vec<(u128, Bytes)>,
        bytes: usize,
    },
    #[cfg(feature = "cuda")]
    Deferred {
        ns: Namespace,
        blocks: Deferred,
        count: usize,
        bytes: usize,
    },
    Flush(oneshot::Sender<()>),
}

/// The queue of blocks waiting to be stored.
#[derive(Debug)]
pub(crate) struct Saver {
    tx: mpsc::UnboundedSender<Job>,
    pending_bytes: Arc<AtomicUsize>,
    limit_bytes: usize,
    counters: Arc<IoCounters>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Save { blocks, bytes, .. } => {
                write!(f, "Save({} blocks, {bytes} B)", blocks.len())
            }
            #[cfg(feature = "cuda")]
            Job::Deferred { count, bytes, .. } => write!(f, "Deferred({count} blocks, {bytes} B)"),
            Job::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Saver {
    /// Starts the saving task on `runtime`; at most `limit_bytes` wait at once. The task
    /// holds the store only while it stores a job, so dropping the last handle (after a
    /// flush) closes the store at once, on the caller's thread.
    pub(crate) fn start(
        runtime: &tokio::runtime::Runtime,
        backend: Weak<Backend>,
        counters: Arc<IoCounters>,
        limit_bytes: usize,
    ) -> Saver {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let pending_bytes = Arc::new(AtomicUsize::new(0));
        let pending = Arc::clone(&pending_bytes);
        let task_counters = Arc::clone(&counters);
        runtime.spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Flush(done) => {
                        let _ = done.send(());
                    }
                    Job::Save { ns, blocks, bytes } => {
                        let t0 = Instant::now();
                        store(&backend, &task_counters, &ns, blocks).await;
                        IoCounters::add_time(&task_counters.save_nanos, t0.elapsed());
                        pending.fetch_sub(bytes, Relaxed);
                    }
                    #[cfg(feature = "cuda")]
                    Job::Deferred {
                        ns,
                        blocks,
                        count,
                        bytes,
                    } => {
                        match blocks.await {
                            Ok(blocks) => {
                                let t0 = Instant::now();
                                store(&backend, &task_counters, &ns, blocks).await;
                                IoCounters::add_time(&task_counters.save_nanos, t0.elapsed());
                            }
                            Err(e) => {
                                task_counters.save_failed.fetch_add(count as u64, Relaxed);
                                tracing::warn!(namespace = %ns.name(), blocks = count, error = %e, "background save failed");
                            }
                        }
                        pending.fetch_sub(bytes, Relaxed);
                    }
                }
            }
        });
        Saver {
            tx,
            pending_bytes,
            limit_bytes,
            counters,
        }
    }

    /// Queues blocks (already copied); returns false (and counts them skipped) when the
    /// queue holds too many bytes or the task is gone.
    pub(crate) fn enqueue(&self, ns: Namespace, blocks: Vec<(u128, Bytes)>) -> bool {
        let bytes: usize = blocks.iter().map(|(_, d)| d.len()).sum();
        let n = blocks.len() as u64;
        if !self.admit(bytes) {
            self.counters.save_skipped.fetch_add(n, Relaxed);
            return false;
        }
        if self.tx.send(Job::Save { ns, blocks, bytes }).is_err() {
            self.pending_bytes.fetch_sub(bytes, Relaxed);
            self.counters.save_skipped.fetch_add(n, Relaxed);
            return false;
        }
        // Counted when accepted, so the caller's next report includes them; a store
        // that fails later is counted in `save_failed`.
        self.counters.saved_blocks.fetch_add(n, Relaxed);
        self.counters.saved_bytes.fetch_add(bytes as u64, Relaxed);
        true
    }

    /// Queues `count` blocks of `bytes` in all that `blocks` yields once their copy has
    /// landed; when the queue holds too many bytes (or the task is gone) they are
    /// counted skipped and `blocks` is handed back (it must still be awaited before the
    /// memory it copies into is released).
    #[cfg(feature = "cuda")]
    pub(crate) fn enqueue_deferred(
        &self,
        ns: Namespace,
        blocks: Deferred,
        count: usize,
        bytes: usize,
    ) -> Result<(), Deferred> {
        if !self.admit(bytes) {
            self.counters.save_skipped.fetch_add(count as u64, Relaxed);
            return Err(blocks);
        }
        let job = Job::Deferred {
            ns,
            blocks,
            count,
            bytes,
        };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            self.pending_bytes.fetch_sub(bytes, Relaxed);
            self.counters.save_skipped.fetch_add(count as u64, Relaxed);
            return match job {
                Job::Deferred { blocks, .. } => Err(blocks),
                _ => Ok(()),
            };
        }
        self.counters.saved_blocks.fetch_add(count as u64, Relaxed);
        self.counters.saved_bytes.fetch_add(bytes as u64, Relaxed);
        Ok(())
    }

    fn admit(&self, bytes: usize) -> bool {
        self.pending_bytes
            .fetch_update(Relaxed, Relaxed, |p| {
                (p + bytes <= self.limit_bytes || p == 0).then_some(p + bytes)
            })
            .is_ok()
    }

    /// Bytes waiting to be stored.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Relaxed)
    }

    /// Resolves once every block queued before the call has been stored (or failed).
    pub(crate) fn flush(&self) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        let _ = self.tx.send(Job::Flush(done));
        wait
    }
}

async fn store(
    backend: &Weak<Backend>,
    counters: &IoCounters,
    ns: &Namespace,
    blocks: Vec<(u128, Bytes)>,
) {
    let n = blocks.len() as u64;
    let Some(backend) = backend.upgrade() else {
        counters.save_failed.fetch_add(n, Relaxed);
        tracing::warn!(namespace = %ns.name(), blocks = n, "background save dropped: the store was closed");
        return;
    };
    if let Err(e) = backend.put_many(ns, blocks).await {
        counters.save_failed.fetch_add(n, Relaxed);
        tracing::warn!(namespace = %ns.name(), blocks = n, error = %e, "background save failed");
    }
}

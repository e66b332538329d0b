//! Moving blocks between the engine and the store, off the worker thread: fetching a
//! request's cached prefix before it is queued, and publishing completed blocks.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tierkv_kvstore::{BlockHash, Namespace, TierKind, TieredStore};
use tokio::sync::mpsc;

use super::{GenEvent, KvSource};
use crate::metrics::EngineMetrics;

/// Blocks fetched for a request: payloads of consecutive prefix blocks and where each
/// came from.
#[derive(Default)]
pub(crate) struct Fetched {
    pub blocks: Vec<(Bytes, KvSource)>,
}

/// Fetches the blocks of `hashes[from..]` that the store holds, in order, stopping at
/// the first one it cannot return (missing, evicted meanwhile, corrupt or failed:
/// those tokens are computed instead).
pub(super) async fn fetch_prefix(
    store: &TieredStore,
    ns: &Namespace,
    hashes: &[BlockHash],
    from: usize,
    concurrency: usize,
) -> Fetched {
    if from >= hashes.len() {
        return Fetched::default();
    }
    let located = store.locate_prefix(ns, hashes);
    let available = store.lookup_prefix_deep(ns, hashes).await;
    if available <= from {
        return Fetched::default();
    }
    let tiers = store.tiers();
    let source = |i: usize| match located.get(i) {
        Some(&t) => KvSource::Tier(tiers.get(t).map_or(TierKind::Host, |t| t.kind())),
        None => KvSource::Tier(TierKind::Remote),
    };
    let _pin = store.pin(ns, &hashes[from..available]);
    let mut gets = futures::stream::iter(from..available)
        .map(|i| async move { (i, store.get(ns, hashes[i]).await) })
        .buffered(concurrency);
    let mut out = Fetched::default();
    while let Some((i, got)) = gets.next().await {
        match got {
            Ok(Some(data)) => out.blocks.push((data, source(i))),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(block = %hashes[i], error = %e, "prefix fetch failed; computing the rest");
                break;
            }
        }
    }
    out
}

/// A block to publish.
pub(super) struct Publication {
    pub ns: Namespace,
    pub hash: BlockHash,
    pub data: Bytes,
    /// Told [`GenEvent::Published`] once the block is stored.
    pub ack: Option<mpsc::UnboundedSender<GenEvent>>,
}

/// Starts the task that puts published blocks into the store, and returns its queue.
/// Must be called inside a tokio runtime.
pub(super) fn spawn_publisher(
    store: TieredStore,
    queue: usize,
    metrics: Arc<EngineMetrics>,
) -> mpsc::Sender<Publication> {
    let (tx, mut rx) = mpsc::channel::<Publication>(queue);
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            match store.put(&p.ns, p.hash, p.data).await {
                Ok(_) => {
                    metrics.blocks_published.inc();
                    if let Some(ack) = p.ack {
                        let _ = ack.send(GenEvent::Published(p.hash));
                    }
                }
                Err(e) => {
                    metrics.publish_failures.inc();
                    tracing::warn!(block = %p.hash, error = %e, "publishing a block failed");
                }
            }
        }
    });
    tx
}

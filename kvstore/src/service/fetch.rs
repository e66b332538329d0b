//! Fetch: streaming stored blocks in request order, chunked, with their crc32c.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tierkv_proto::v1::{BlockId, FetchChunk};
use tierkv_tiers::BlockKey;
use tokio::sync::{Semaphore, mpsc};
use tonic::Status;

use super::server::{Limits, acquire_budget};
use crate::TieredStore;
use crate::metrics::Metrics;

/// crc32c of blocks recently published or fetched. Blocks are content-addressed, so a
/// key's checksum never changes: fetches of hot prefix blocks skip recomputing it.
pub(crate) struct CrcCache(Mutex<lru::LruCache<BlockKey, u32, tierkv_tiers::BuildBlockKeyHasher>>);

impl CrcCache {
    pub(super) fn new(entries: usize) -> CrcCache {
        let cap =
            std::num::NonZeroUsize::new(entries.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        CrcCache(Mutex::new(lru::LruCache::with_hasher(
            cap,
            tierkv_tiers::BuildBlockKeyHasher,
        )))
    }

    pub(super) fn get_or_compute(&self, key: BlockKey, data: &[u8]) -> u32 {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        cached.unwrap_or_else(|| {
            let crc = tierkv_tiers::checksum::crc32c(data);
            self.insert(key, crc);
            crc
        })
    }

    pub(super) fn insert(&self, key: BlockKey, crc: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, crc);
    }
}

/// What a fetch stream needs from the server.
pub(super) struct FetchContext {
    pub(super) store: TieredStore,
    pub(super) inflight: Arc<Semaphore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) limits: Limits,
    pub(super) crcs: Arc<CrcCache>,
}

/// Sends the requested blocks in request order, each in chunks, then the list of
/// missing hashes.
pub(super) async fn stream_blocks(
    ctx: FetchContext,
    namespace: String,
    ns_id: u64,
    hashes: Vec<u128>,
    tx: mpsc::Sender<Result<FetchChunk, Status>>,
) {
    let FetchContext {
        store,
        inflight,
        metrics,
        limits,
        crcs,
    } = ctx;
    let mut missing = Vec::new();
    for hash in hashes {
        let raw = Bytes::copy_from_slice(&hash.to_be_bytes());
        let found = store
            .read_key(BlockKey::new(ns_id, hash), limits.promote_on_fetch)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "fetch: read failed; reporting the block missing");
                None
            });
        let Some(data) = found else {
            missing.push(raw);
            metrics
                .blocks_total
                .with_label_values(&["fetch", "missing"])
                .inc();
            continue;
        };
        let _permit = match acquire_budget(&inflight, data.len(), limits.inflight_wait).await {
            Ok(p) => p,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let crc = crcs.get_or_compute(BlockKey::new(ns_id, hash), &data);
        let id = BlockId {
            namespace: namespace.clone(),
            hash: raw,
        };
        let total = data.len();
        let mut offset = 0;
        while offset < total {
            let end = (offset + limits.chunk).min(total);
            let chunk = FetchChunk {
                id: Some(id.clone()),
                offset: offset as u64,
                data: data.slice(offset..end),
                total_len: total as u64,
                crc32c: crc,
                missing: Vec::new(),
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return; // The client went away.
            }
            offset = end;
        }
        metrics
            .bytes_total
            .with_label_values(&["out"])
            .inc_by(total as u64);
        metrics
            .blocks_total
            .with_label_values(&["fetch", "sent"])
            .inc();
    }
    let _ = tx
        .send(Ok(FetchChunk {
            missing,
            ..Default::default()
        }))
        .await;
}

//! `Fetch`: streaming stored blocks in request order, chunked, with their crc32c.

use std::sync::Arc;

use bytes::Bytes;
use tierkv_proto::v1::{BlockId, FetchChunk, FetchRequest};
use tierkv_tiers::BlockKey;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::TieredStore;
use crate::metrics::Metrics;
use crate::service::crc_cache::CrcCache;
use crate::service::idle::within;
use crate::service::request::acquire_budget;
use crate::service::state::BlockServer;
use crate::service::state::Limits;

/// The `Fetch` stream of one request.
pub(crate) type FetchStream = ReceiverStream<Result<FetchChunk, Status>>;

/// Checks the request, then streams the blocks from a task of its own.
pub(crate) fn fetch(
    server: &BlockServer,
    request: Request<FetchRequest>,
) -> Result<FetchStream, Status> {
    let start = std::time::Instant::now();
    let prepared = (|| {
        let access = server.auth.caller(request.metadata())?;
        let req = request.get_ref();
        let (ns_id, hashes) = server.parse_request(&access, &req.namespace, &req.hashes)?;
        Ok((server.stream_slot()?, ns_id, hashes))
    })();
    let (slot, ns_id, hashes) = server.finish("fetch", start, prepared)?;
    let namespace = request.into_inner().namespace;
    let (tx, rx) = mpsc::channel(8);
    let ctx = FetchContext {
        store: server.store.clone(),
        inflight: Arc::clone(&server.inflight),
        metrics: Arc::clone(&server.metrics),
        limits: server.limits,
        crcs: Arc::clone(&server.crcs),
    };
    tokio::spawn(async move {
        let _slot = slot;
        let metrics = Arc::clone(&ctx.metrics);
        metrics.open_streams.inc();
        stream_blocks(ctx, namespace, ns_id, hashes, tx).await;
        metrics.open_streams.dec();
    });
    Ok(ReceiverStream::new(rx))
}

/// What a fetch stream needs from the server.
struct FetchContext {
    store: TieredStore,
    inflight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    limits: Limits,
    crcs: Arc<CrcCache>,
}

/// Sends the requested blocks in request order, each in chunks, then the list of
/// missing hashes.
async fn stream_blocks(
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
        let read = store.read_key(BlockKey::new(ns_id, hash), limits.promote_on_fetch);
        let found = tokio::select! {
            found = read => found,
            // The client went away: stop waiting on the tiers for it.
            () = tx.closed() => return,
        };
        let found = found.unwrap_or_else(|e| {
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
            match within(
                limits.idle_timeout,
                "taking fetched chunks",
                tx.send(Ok(chunk)),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return, // The client went away.
                Err(status) => {
                    // Not read for the whole limit: end the stream (the error is
                    // sent only if there is room for it).
                    let _ = tx.try_send(Err(status));
                    return;
                }
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

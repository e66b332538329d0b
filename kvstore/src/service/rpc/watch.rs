//! `WatchEvents`: a stream of the store's block events (stored, removed), filtered to
//! the namespaces the caller may see, ended when the server shuts down or the client
//! goes away.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tierkv_proto::v1::{KvEvent, WatchRequest, kv_event};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use crate::StoreEventKind;
use crate::service::auth::Access;
use crate::service::request::check_namespace;
use crate::service::state::BlockServer;

/// The `WatchEvents` stream of one request.
pub(crate) type WatchStream = ReceiverStream<Result<KvEvent, Status>>;

pub(crate) fn watch_events(
    server: &BlockServer,
    request: Request<WatchRequest>,
) -> Result<WatchStream, Status> {
    let start = std::time::Instant::now();
    let prepared = (|| {
        let access = server.auth.caller(request.metadata())?;
        let requested = &request.get_ref().namespaces;
        for ns in requested {
            check_namespace(ns)?;
            access.check(ns)?;
        }
        let filter: Option<HashSet<u64>> = match (&access, requested.is_empty()) {
            (Access::All, true) => None,
            (Access::Namespaces(allowed), true) => {
                Some(allowed.iter().map(|n| server.remember(n)).collect())
            }
            (_, false) => Some(requested.iter().map(|n| server.remember(n)).collect()),
        };
        Ok((server.stream_slot()?, filter))
    })();
    let (slot, filter) = server.finish("watch_events", start, prepared)?;
    let mut events = server.store.subscribe();
    let mut closing = server.closing.subscribe();
    let (tx, rx) = mpsc::channel(256);
    let (names, tier_names, metrics) = (
        Arc::clone(&server.names),
        Arc::clone(&server.tier_names),
        Arc::clone(&server.metrics),
    );
    metrics.open_streams.inc();
    tokio::spawn(async move {
        let _slot = slot;
        loop {
            let got = tokio::select! {
                got = events.recv() => got,
                _ = closing.wait_for(|c| *c) => break,
                // The client went away: noticed at once, not at the next event it
                // would have been sent (which, on a quiet namespace, may never come).
                () = tx.closed() => break,
            };
            let ev = match got {
                Ok(ev) => ev,
                // The watcher fell behind: the gap in `seq` tells it to resynchronise.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            };
            if filter
                .as_ref()
                .is_some_and(|f| !f.contains(&ev.key.namespace))
            {
                continue;
            }
            let namespace = names
                .name(ev.key.namespace)
                .unwrap_or_else(|| format!("#{:016x}", ev.key.namespace));
            let kind = match ev.kind {
                StoreEventKind::Stored => kv_event::Kind::Stored,
                StoreEventKind::Removed => kv_event::Kind::Removed,
            };
            let msg = KvEvent {
                kind: kind as i32,
                namespace,
                hashes: vec![Bytes::copy_from_slice(&ev.key.hash.to_be_bytes())],
                tier: tier_names.get(ev.tier).cloned().unwrap_or_default(),
                seq: ev.seq,
            };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
        }
        metrics.open_streams.dec();
    });
    Ok(ReceiverStream::new(rx))
}

//! The block service server over a [`TieredStore`]: authenticated, bounded,
//! checksummed, zero-copy from tier to socket.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tierkv_proto::v1::block_service_server::{BlockService, BlockServiceServer};
use tierkv_proto::v1::{
    FetchChunk, FetchRequest, KvEvent, LookupReply, LookupRequest, PublishChunk, PublishReply,
    StatsReply, StatsRequest, TierStatsProto, WatchRequest, kv_event,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Access, Auth};
use super::config::ServiceConfig;
use super::fetch::{CrcCache, FetchContext, stream_blocks};
use crate::metrics::Metrics;
use crate::namespace_names::{DEFAULT_NAMES, NamespaceNames};
use crate::{KvStoreError, Result, StoreEventKind, TieredStore};

/// HTTP/2 frame size advertised by server and client.
pub(crate) const MAX_FRAME: u32 = (1 << 24) - 1;

/// Longest namespace name accepted.
const MAX_NAMESPACE_LEN: usize = 512;

/// The limits in force, resolved from the configuration and the store.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_block: usize,
    pub(super) max_blocks: usize,
    pub(super) chunk: usize,
    pub(super) inflight_wait: Duration,
    pub(super) promote_on_fetch: bool,
}

/// The gRPC `BlockService` implementation.
pub struct BlockServer {
    pub(super) store: TieredStore,
    pub(super) auth: Auth,
    pub(super) limits: Limits,
    /// Namespace names seen, by digest, so events can name them (the most recent
    /// ones: clients choose the names).
    pub(super) names: Arc<NamespaceNames>,
    pub(super) streams: Arc<Semaphore>,
    pub(super) inflight: Arc<Semaphore>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tier_names: Arc<Vec<String>>,
    pub(super) crcs: Arc<CrcCache>,
    /// Set when the server shuts down: ends open watch streams, which would otherwise
    /// keep a graceful shutdown waiting on their clients forever.
    pub(super) closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Port of the data channel, 0 while there is none (told to clients by `Stats`).
    pub(super) data_port: std::sync::atomic::AtomicU16,
    /// The same-host socket, once listening (told to clients by `Stats`).
    pub(super) local_socket: std::sync::OnceLock<String>,
    /// Random id of this server process.
    pub(super) instance: u128,
}

/// A random 128-bit id (the standard library's per-process random hash keys).
fn random_id() -> u128 {
    use std::hash::BuildHasher;
    let (a, b) = (
        std::collections::hash_map::RandomState::new(),
        std::collections::hash_map::RandomState::new(),
    );
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (u128::from(a.hash_one(t)) << 64) | u128::from(b.hash_one((t, std::process::id())))
}

impl BlockServer {
    pub fn new(
        store: TieredStore,
        config: &ServiceConfig,
        metrics: Arc<Metrics>,
    ) -> Result<BlockServer> {
        config.validate().map_err(KvStoreError::Config)?;
        let max_block = config.max_block_bytes.map_or(store.slot_bytes(), |b| {
            (b.0 as usize).min(store.slot_bytes())
        });
        let inflight =
            (config.max_inflight_bytes.0 as usize).clamp(max_block, Semaphore::MAX_PERMITS);
        let tier_names = store.tiers().iter().map(|t| t.name().to_string()).collect();
        Ok(BlockServer {
            auth: Auth::new(&config.tokens),
            limits: Limits {
                max_block,
                max_blocks: config.max_blocks_per_request,
                chunk: config.chunk_bytes.0 as usize,
                inflight_wait: Duration::from_millis(config.inflight_wait_ms),
                promote_on_fetch: config.promote_on_fetch,
            },
            names: Arc::new(NamespaceNames::new(DEFAULT_NAMES)),
            streams: Arc::new(Semaphore::new(config.max_concurrent_streams)),
            inflight: Arc::new(Semaphore::new(inflight)),
            metrics,
            tier_names: Arc::new(tier_names),
            crcs: Arc::new(CrcCache::new(1 << 20)),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            data_port: std::sync::atomic::AtomicU16::new(0),
            local_socket: std::sync::OnceLock::new(),
            instance: random_id(),
            store,
        })
    }

    /// Ends every open watch stream (what a shutdown does first).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Largest chunk a client may send (the fetch chunk size plus headroom).
    pub fn max_message_bytes(&self) -> usize {
        self.limits.chunk + (64 << 10)
    }

    pub(super) fn remember(&self, namespace: &str) -> u64 {
        self.names.remember(namespace)
    }

    pub(super) fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many concurrent streams on this block service; retry later",
            )
        })
    }

    pub(super) fn finish<T>(
        &self,
        rpc: &str,
        start: Instant,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.record_rpc(rpc, start, code);
        result
    }

    /// Counts one call and its latency.
    pub(super) fn record_rpc(&self, rpc: &str, start: Instant, code: tonic::Code) {
        self.metrics
            .rpc_total
            .with_label_values(&[rpc, &format!("{code:?}")])
            .inc();
        self.metrics
            .rpc_seconds
            .with_label_values(&[rpc])
            .observe(start.elapsed().as_secs_f64());
    }

    /// Counts a block a publish or fetch handled (`outcome`: stored, sent, missing...).
    pub(super) fn count_block(&self, op: &str, outcome: &str) {
        self.metrics
            .blocks_total
            .with_label_values(&[op, outcome])
            .inc();
    }

    /// Counts payload bytes received (`in`) or sent (`out`).
    pub(super) fn count_bytes(&self, direction: &str, n: usize) {
        self.metrics
            .bytes_total
            .with_label_values(&[direction])
            .inc_by(n as u64);
    }

    fn parse_request(
        &self,
        access: &Access,
        namespace: &str,
        hashes: &[Bytes],
    ) -> Result<(u64, Vec<u128>), Status> {
        check_namespace(namespace)?;
        access.check(namespace)?;
        if hashes.len() > self.limits.max_blocks {
            return Err(Status::resource_exhausted(format!(
                "{} hashes in one request; the limit is {}",
                hashes.len(),
                self.limits.max_blocks
            )));
        }
        let parsed = hashes
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((self.remember(namespace), parsed))
    }
}

pub(super) async fn acquire_budget(
    sem: &Arc<Semaphore>,
    bytes: usize,
    wait: Duration,
) -> Result<OwnedSemaphorePermit, Status> {
    let n = u32::try_from(bytes).map_err(|_| Status::resource_exhausted("block too large"))?;
    match tokio::time::timeout(wait, Arc::clone(sem).acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(Status::unavailable("block service is shutting down")),
        Err(_) => Err(Status::resource_exhausted(format!(
            "no room for {bytes} more bytes in flight within {wait:?}; retry later"
        ))),
    }
}

pub(super) fn check_namespace(ns: &str) -> Result<(), Status> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Status::invalid_argument(format!(
            "namespace must be 1 to {MAX_NAMESPACE_LEN} bytes"
        )));
    }
    Ok(())
}

pub(super) fn parse_hash(h: &[u8]) -> Result<u128, Status> {
    let arr: [u8; 16] = h.try_into().map_err(|_| {
        Status::invalid_argument(format!("block hash must be 16 bytes, got {}", h.len()))
    })?;
    Ok(u128::from_be_bytes(arr))
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn store_status(e: KvStoreError) -> Status {
    match e {
        KvStoreError::NoRoom { .. } => Status::resource_exhausted(e.to_string()),
        KvStoreError::Tier(tierkv_tiers::TierError::TooLarge { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl BlockService for BlockServer {
    async fn publish(
        &self,
        request: Request<Streaming<PublishChunk>>,
    ) -> Result<Response<PublishReply>, Status> {
        let start = Instant::now();
        self.metrics.open_streams.inc();
        let result = self.publish_inner(request).await;
        self.metrics.open_streams.dec();
        self.finish("publish", start, result).map(Response::new)
    }

    type FetchStream = ReceiverStream<Result<FetchChunk, Status>>;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let start = Instant::now();
        let prepared = (|| {
            let access = self.auth.caller(request.metadata())?;
            let req = request.get_ref();
            let (ns_id, hashes) = self.parse_request(&access, &req.namespace, &req.hashes)?;
            Ok((self.stream_slot()?, ns_id, hashes))
        })();
        let (slot, ns_id, hashes) = self.finish("fetch", start, prepared)?;
        let namespace = request.into_inner().namespace;
        let (tx, rx) = mpsc::channel(8);
        let (store, inflight, metrics, limits, crcs) = (
            self.store.clone(),
            Arc::clone(&self.inflight),
            Arc::clone(&self.metrics),
            self.limits,
            Arc::clone(&self.crcs),
        );
        metrics.open_streams.inc();
        tokio::spawn(async move {
            let _slot = slot;
            let ctx = FetchContext {
                store,
                inflight,
                metrics: Arc::clone(&metrics),
                limits,
                crcs,
            };
            stream_blocks(ctx, namespace, ns_id, hashes, tx).await;
            metrics.open_streams.dec();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupReply>, Status> {
        let start = Instant::now();
        let result = (|| {
            let access = self.auth.caller(request.metadata())?;
            let req = request.get_ref();
            let (ns_id, hashes) = self.parse_request(&access, &req.namespace, &req.hashes)?;
            let tiers = self.store.locate_prefix_keys(ns_id, &hashes);
            Ok(LookupReply {
                prefix_hits: tiers.len() as u32,
                tiers: tiers.iter().map(|&t| self.tier_names[t].clone()).collect(),
            })
        })();
        self.finish("lookup", start, result).map(Response::new)
    }

    type WatchEventsStream = ReceiverStream<Result<KvEvent, Status>>;

    async fn watch_events(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let start = Instant::now();
        let prepared = (|| {
            let access = self.auth.caller(request.metadata())?;
            let requested = &request.get_ref().namespaces;
            for ns in requested {
                check_namespace(ns)?;
                access.check(ns)?;
            }
            let filter: Option<std::collections::HashSet<u64>> =
                match (&access, requested.is_empty()) {
                    (Access::All, true) => None,
                    (Access::Namespaces(allowed), true) => {
                        Some(allowed.iter().map(|n| self.remember(n)).collect())
                    }
                    (_, false) => Some(requested.iter().map(|n| self.remember(n)).collect()),
                };
            Ok((self.stream_slot()?, filter))
        })();
        let (slot, filter) = self.finish("watch_events", start, prepared)?;
        let mut events = self.store.subscribe();
        let mut closing = self.closing.subscribe();
        let (tx, rx) = mpsc::channel(256);
        let (names, tier_names, metrics) = (
            Arc::clone(&self.names),
            Arc::clone(&self.tier_names),
            Arc::clone(&self.metrics),
        );
        metrics.open_streams.inc();
        tokio::spawn(async move {
            let _slot = slot;
            loop {
                let got = tokio::select! {
                    got = events.recv() => got,
                    _ = closing.wait_for(|c| *c) => break,
                };
                let ev = match got {
                    Ok(ev) => ev,
                    // The watcher fell behind: the gap in `seq` tells it to resynchronise.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
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
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        let start = Instant::now();
        let result = self.auth.caller(request.metadata()).map(|_| {
            let s = self.store.stats();
            StatsReply {
                data_port: u32::from(self.data_port.load(std::sync::atomic::Ordering::Relaxed)),
                local_socket: self.local_socket.get().cloned().unwrap_or_default(),
                instance: Bytes::copy_from_slice(&self.instance.to_le_bytes()),
                blocks: s.blocks,
                tiers: s
                    .tiers
                    .into_iter()
                    .map(|t| TierStatsProto {
                        name: t.tier.name.clone(),
                        kind: t.tier.kind.to_string(),
                        capacity_bytes: t.tier.capacity_bytes,
                        used_bytes: t.tier.used_bytes,
                        blocks: t.tier.blocks,
                        hits: t.hits,
                        misses: t.misses,
                        bytes_in: t.bytes_written,
                        bytes_out: t.bytes_read,
                        evictions: t.evictions,
                        corrupt_blocks: t.tier.corrupt_blocks,
                    })
                    .collect(),
            }
        });
        self.finish("stats", start, result).map(Response::new)
    }
}

/// Serves the block service (and gRPC health) on `listener` until `shutdown`
/// resolves, then stops accepting and lets open calls finish.
pub async fn serve(
    store: TieredStore,
    config: &ServiceConfig,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let server = Arc::new(BlockServer::new(store, config, metrics)?);
    let closing = Arc::clone(&server.closing);
    if config.data_channel && config.tls.is_none() {
        let ip = listener
            .local_addr()
            .map_err(|e| KvStoreError::Config(format!("block service address: {e}")))?
            .ip();
        let data = tokio::net::TcpListener::bind((ip, config.data_port))
            .await
            .map_err(|e| KvStoreError::Connect {
                addr: format!("{ip}:{}", config.data_port),
                reason: format!("binding the data channel: {e}"),
            })?;
        let port = data.local_addr().map(|a| a.port()).unwrap_or(0);
        server
            .data_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%ip, port, "block service data channel listening");
        tokio::spawn(super::data::server::accept_loop(Arc::clone(&server), data));
    }
    if let Some(path) = &config.local_socket {
        let Some(host) = server.store.shared_host().cloned() else {
            return Err(KvStoreError::Config(format!(
                "service local_socket = {} needs a top host tier with shared = true",
                path.display()
            )));
        };
        let (listener, file) =
            super::local::server::bind(path).map_err(|e| KvStoreError::Connect {
                addr: path.display().to_string(),
                reason: format!("binding the same-host socket: {e}"),
            })?;
        let _ = server.local_socket.set(path.display().to_string());
        tracing::info!(socket = %path.display(), "block service same-host channel listening");
        tokio::spawn(super::local::server::accept_loop(
            Arc::clone(&server),
            host,
            listener,
            file,
        ));
    }
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    let max_message = server.max_message_bytes();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<BlockServiceServer<BlockServer>>()
        .await;
    let service = BlockServiceServer::from_arc(server)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Large HTTP/2 frames: a 16 KiB default means a thousand frames per block.
        .max_frame_size(Some(MAX_FRAME))
        .max_concurrent_streams(Some(config.max_concurrent_streams as u32));
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| KvStoreError::Config(format!("reading TLS file {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| KvStoreError::Config(format!("TLS: {e}")))?;
    }
    let local_addr = listener.local_addr();
    // The builder's `tcp_nodelay` only applies to sockets it accepts itself: without
    // TCP_NODELAY here, Nagle + delayed ACK stall small writes for 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(error = %e, "TCP_NODELAY");
        }
        conn
    });
    let addr = local_addr.map_or_else(|_| "?".to_string(), |a| a.to_string());
    builder
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| KvStoreError::Connect {
            addr,
            reason: e.to_string(),
        })
}

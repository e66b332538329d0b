//! The block service server over a [`TieredStore`]: authenticated, bounded,
//! checksummed, zero-copy from tier to socket.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tierkv_proto::v1::block_service_server::{BlockService, BlockServiceServer};
use tierkv_proto::v1::{
    BlockId, FetchChunk, FetchRequest, KvEvent, LookupReply, LookupRequest, PublishChunk,
    PublishReply, StatsReply, StatsRequest, TierStatsProto, WatchRequest, kv_event,
};
use tierkv_tiers::{BlockKey, PutOutcome};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Access, Auth};
use super::config::ServiceConfig;
use crate::metrics::Metrics;
use crate::{KvStoreError, Result, StoreEventKind, TieredStore, namespace_id};

/// HTTP/2 frame size advertised by server and client.
pub(crate) const MAX_FRAME: u32 = (1 << 24) - 1;

/// Longest namespace name accepted.
const MAX_NAMESPACE_LEN: usize = 512;

/// The limits in force, resolved from the configuration and the store.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_block: usize,
    max_blocks: usize,
    chunk: usize,
    inflight_wait: Duration,
}

/// The gRPC `BlockService` implementation.
pub struct BlockServer {
    store: TieredStore,
    auth: Auth,
    limits: Limits,
    /// Namespace names seen, by digest, so events can name them.
    names: Arc<Mutex<HashMap<u64, String>>>,
    streams: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    tier_names: Arc<Vec<String>>,
    crcs: Arc<CrcCache>,
}

/// crc32c of blocks recently published or fetched. Blocks are content-addressed, so a
/// key's checksum never changes: fetches of hot prefix blocks skip recomputing it.
pub(crate) struct CrcCache(Mutex<lru::LruCache<BlockKey, u32, tierkv_tiers::BuildBlockKeyHasher>>);

impl CrcCache {
    fn new(entries: usize) -> CrcCache {
        let cap =
            std::num::NonZeroUsize::new(entries.max(1)).unwrap_or(std::num::NonZeroUsize::MIN);
        CrcCache(Mutex::new(lru::LruCache::with_hasher(
            cap,
            tierkv_tiers::BuildBlockKeyHasher,
        )))
    }

    fn get_or_compute(&self, key: BlockKey, data: &[u8]) -> u32 {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        cached.unwrap_or_else(|| {
            let crc = crc32c::crc32c(data);
            self.insert(key, crc);
            crc
        })
    }

    fn insert(&self, key: BlockKey, crc: u32) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, crc);
    }
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
            },
            names: Arc::new(Mutex::new(HashMap::new())),
            streams: Arc::new(Semaphore::new(config.max_concurrent_streams)),
            inflight: Arc::new(Semaphore::new(inflight)),
            metrics,
            tier_names: Arc::new(tier_names),
            crcs: Arc::new(CrcCache::new(1 << 20)),
            store,
        })
    }

    /// Largest chunk a client may send (the fetch chunk size plus headroom).
    pub fn max_message_bytes(&self) -> usize {
        self.limits.chunk + (64 << 10)
    }

    fn remember(&self, namespace: &str) -> u64 {
        let id = namespace_id(namespace);
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names.entry(id).or_insert_with(|| namespace.to_string());
        id
    }

    fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many concurrent streams on this block service; retry later",
            )
        })
    }

    fn finish<T>(&self, rpc: &str, start: Instant, result: Result<T, Status>) -> Result<T, Status> {
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        };
        self.metrics
            .rpc_total
            .with_label_values(&[rpc, &format!("{code:?}")])
            .inc();
        self.metrics
            .rpc_seconds
            .with_label_values(&[rpc])
            .observe(start.elapsed().as_secs_f64());
        result
    }

    async fn publish_inner(
        &self,
        request: Request<Streaming<PublishChunk>>,
    ) -> Result<PublishReply, Status> {
        let access = self.auth.caller(request.metadata())?;
        let _slot = self.stream_slot()?;
        let mut stream = request.into_inner();
        let mut reply = PublishReply::default();
        let mut current: Option<Assembly> = None;
        let mut blocks = 0usize;
        while let Some(chunk) = stream.message().await? {
            let data_len = chunk.data.len() as u64;
            if chunk.offset == 0 {
                if let Some(open) = &current {
                    return Err(Status::invalid_argument(format!(
                        "block {} ended after {} of {} bytes",
                        open.describe(),
                        open.buf_len(),
                        open.total_len
                    )));
                }
                blocks += 1;
                if blocks > self.limits.max_blocks {
                    return Err(Status::resource_exhausted(format!(
                        "more than {} blocks in one publish stream",
                        self.limits.max_blocks
                    )));
                }
                current = Some(self.start_block(&access, chunk).await?);
            } else {
                let Some(open) = current.as_mut() else {
                    return Err(Status::invalid_argument(format!(
                        "chunk at offset {} without a block started at offset 0",
                        chunk.offset
                    )));
                };
                open.append(chunk)?;
            }
            self.metrics
                .bytes_total
                .with_label_values(&["in"])
                .inc_by(data_len);
            if current.as_ref().is_some_and(Assembly::is_complete)
                && let Some(done) = current.take()
            {
                self.store_block(done, &mut reply).await?;
            }
        }
        if let Some(open) = current {
            return Err(Status::invalid_argument(format!(
                "stream ended inside block {} after {} of {} bytes; nothing of it was stored",
                open.describe(),
                open.buf_len(),
                open.total_len
            )));
        }
        Ok(reply)
    }

    async fn start_block(&self, access: &Access, chunk: PublishChunk) -> Result<Assembly, Status> {
        let id = chunk.id.ok_or_else(|| {
            Status::invalid_argument("the first chunk of a block must carry its id")
        })?;
        check_namespace(&id.namespace)?;
        access.check(&id.namespace)?;
        let hash = parse_hash(&id.hash)?;
        let total = chunk.total_len;
        if total == 0 {
            return Err(Status::invalid_argument("empty block (total_len = 0)"));
        }
        if total > self.limits.max_block as u64 {
            return Err(Status::resource_exhausted(format!(
                "block of {total} bytes exceeds this service's limit of {} bytes",
                self.limits.max_block
            )));
        }
        if chunk.data.len() as u64 > total {
            return Err(Status::invalid_argument("chunk is longer than total_len"));
        }
        let permit =
            acquire_budget(&self.inflight, total as usize, self.limits.inflight_wait).await?;
        self.metrics.inflight_bytes.add(total as i64);
        let key = BlockKey::new(self.remember(&id.namespace), hash);
        let buf = if chunk.data.len() as u64 == total {
            Buf::Whole(chunk.data)
        } else {
            let mut b = BytesMut::with_capacity(total as usize);
            b.extend_from_slice(&chunk.data);
            Buf::Parts(b)
        };
        Ok(Assembly {
            id,
            key,
            total_len: total,
            crc: chunk.crc32c,
            buf,
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Stores a complete block; its in-flight budget is held until the store has it.
    async fn store_block(
        &self,
        mut done: Assembly,
        reply: &mut PublishReply,
    ) -> Result<(), Status> {
        let data = done.take_data();
        let (id, key, crc) = (std::mem::take(&mut done.id), done.key, done.crc);
        let outcome = if crc32c::crc32c(&data) != crc {
            tracing::warn!(namespace = %id.namespace, "publish: crc32c mismatch; block rejected");
            reply.rejected.push(id);
            "rejected"
        } else {
            self.crcs.insert(key, crc);
            match self.store.put_key(key, data).await {
                Ok(PutOutcome::Stored) => {
                    reply.stored += 1;
                    "stored"
                }
                Ok(PutOutcome::AlreadyPresent) => {
                    reply.already_present += 1;
                    "already_present"
                }
                Err(e) => return Err(store_status(e)),
            }
        };
        self.metrics
            .blocks_total
            .with_label_values(&["publish", outcome])
            .inc();
        Ok(())
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

/// A block being received.
struct Assembly {
    id: BlockId,
    key: BlockKey,
    total_len: u64,
    crc: u32,
    buf: Buf,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

enum Buf {
    /// The block arrived in one chunk: kept as received, no copy.
    Whole(Bytes),
    Parts(BytesMut),
}

impl Assembly {
    fn buf_len(&self) -> u64 {
        match &self.buf {
            Buf::Whole(b) => b.len() as u64,
            Buf::Parts(b) => b.len() as u64,
        }
    }

    fn is_complete(&self) -> bool {
        self.buf_len() == self.total_len
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.id.namespace, hex(&self.id.hash))
    }

    fn append(&mut self, chunk: PublishChunk) -> Result<(), Status> {
        if let Some(id) = &chunk.id
            && (id.namespace != self.id.namespace || id.hash != self.id.hash)
        {
            return Err(Status::invalid_argument(format!(
                "chunk of another block inside block {}",
                self.describe()
            )));
        }
        if chunk.offset != self.buf_len() {
            return Err(Status::invalid_argument(format!(
                "block {}: chunk at offset {}, expected {}",
                self.describe(),
                chunk.offset,
                self.buf_len()
            )));
        }
        if self.buf_len() + chunk.data.len() as u64 > self.total_len {
            return Err(Status::invalid_argument(format!(
                "block {}: chunks run past total_len {}",
                self.describe(),
                self.total_len
            )));
        }
        match &mut self.buf {
            Buf::Parts(b) => b.extend_from_slice(&chunk.data),
            Buf::Whole(_) => return Err(Status::invalid_argument("chunk after a complete block")),
        }
        Ok(())
    }

    fn take_data(&mut self) -> Bytes {
        match std::mem::replace(&mut self.buf, Buf::Whole(Bytes::new())) {
            Buf::Whole(b) => b,
            Buf::Parts(b) => b.freeze(),
        }
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        self.metrics.inflight_bytes.sub(self.total_len as i64);
    }
}

async fn acquire_budget(
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

fn check_namespace(ns: &str) -> Result<(), Status> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Status::invalid_argument(format!(
            "namespace must be 1 to {MAX_NAMESPACE_LEN} bytes"
        )));
    }
    Ok(())
}

fn parse_hash(h: &[u8]) -> Result<u128, Status> {
    let arr: [u8; 16] = h.try_into().map_err(|_| {
        Status::invalid_argument(format!("block hash must be 16 bytes, got {}", h.len()))
    })?;
    Ok(u128::from_be_bytes(arr))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn store_status(e: KvStoreError) -> Status {
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
                let ev = match events.recv().await {
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
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&ev.key.namespace)
                    .cloned()
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
        let data = match store.get_key(BlockKey::new(ns_id, hash)).await {
            Ok(Some(data)) => data,
            Ok(None) => {
                missing.push(raw);
                metrics
                    .blocks_total
                    .with_label_values(&["fetch", "missing"])
                    .inc();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch: read failed; reporting the block missing");
                missing.push(raw);
                metrics
                    .blocks_total
                    .with_label_values(&["fetch", "missing"])
                    .inc();
                continue;
            }
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

/// Serves the block service (and gRPC health) on `listener` until `shutdown`
/// resolves, then stops accepting and lets open calls finish.
pub async fn serve(
    store: TieredStore,
    config: &ServiceConfig,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let server = BlockServer::new(store, config, metrics)?;
    let max_message = server.max_message_bytes();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<BlockServiceServer<BlockServer>>()
        .await;
    let service = BlockServiceServer::new(server)
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

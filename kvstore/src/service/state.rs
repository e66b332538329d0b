//! [`BlockServer`]: the state every entry point of the block service shares (the store,
//! auth, limits, budgets, metrics) and the checks and counters they all use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::auth::{Access, Auth};
use super::config::ServiceConfig;
use super::crc_cache::CrcCache;
use super::request::{check_namespace, parse_hash};
use crate::metrics::Metrics;
use crate::namespace_names::{DEFAULT_NAMES, NamespaceNames};
use crate::{KvStoreError, Result, TieredStore};

/// The limits in force, resolved from the configuration and the store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_block: usize,
    pub(crate) max_blocks: usize,
    pub(crate) chunk: usize,
    pub(crate) inflight_wait: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) promote_on_fetch: bool,
}

/// The gRPC `BlockService` implementation.
pub(crate) struct BlockServer {
    pub(crate) store: TieredStore,
    pub(crate) auth: Auth,
    pub(crate) limits: Limits,
    /// Namespace names seen, by digest, so events can name them (the most recent
    /// ones: clients choose the names).
    pub(crate) names: Arc<NamespaceNames>,
    pub(crate) streams: Arc<Semaphore>,
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tier_names: Arc<Vec<String>>,
    pub(crate) crcs: Arc<CrcCache>,
    /// Set when the server shuts down: ends open watch streams, which would otherwise
    /// keep a graceful shutdown waiting on their clients forever.
    pub(crate) closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Port of the data channel, 0 while there is none (told to clients by `Stats`).
    pub(crate) data_port: std::sync::atomic::AtomicU16,
    /// The same-host socket, once listening (told to clients by `Stats`).
    pub(crate) local_socket: std::sync::OnceLock<String>,
    /// Random id of this server process.
    pub(crate) instance: u128,
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
    pub(crate) fn new(
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
                idle_timeout: Duration::from_millis(config.idle_timeout_ms),
                promote_on_fetch: config.promote_on_fetch,
            },
            names: Arc::new(NamespaceNames::new(DEFAULT_NAMES)),
            streams: Arc::new(Semaphore::new(config.max_concurrent_streams)),
            inflight: Arc::new(Semaphore::new(inflight)),
            metrics,
            tier_names: Arc::new(tier_names),
            crcs: Arc::new(CrcCache::new(crc_entries(&store))),
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            data_port: std::sync::atomic::AtomicU16::new(0),
            local_socket: std::sync::OnceLock::new(),
            instance: random_id(),
            store,
        })
    }

    /// Largest chunk a client may send (the fetch chunk size plus headroom).
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.limits.chunk + (64 << 10)
    }

    pub(crate) fn remember(&self, namespace: &str) -> u64 {
        self.names.remember(namespace)
    }

    pub(crate) fn stream_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "too many concurrent streams on this block service; retry later",
            )
        })
    }

    pub(crate) fn finish<T>(
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
    pub(crate) fn record_rpc(&self, rpc: &str, start: Instant, code: tonic::Code) {
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
    pub(crate) fn count_block(&self, op: &str, outcome: &str) {
        self.metrics
            .blocks_total
            .with_label_values(&[op, outcome])
            .inc();
    }

    /// Counts payload bytes received (`in`) or sent (`out`).
    pub(crate) fn count_bytes(&self, direction: &str, n: usize) {
        self.metrics
            .bytes_total
            .with_label_values(&[direction])
            .inc_by(n as u64);
    }

    pub(crate) fn parse_request(
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

/// Checksums worth remembering: one per block the store's own tiers can hold (more
/// would only remember evicted blocks), between 1,024 and 2^20.
fn crc_entries(store: &TieredStore) -> usize {
    store
        .tiers()
        .iter()
        .filter(|t| t.is_indexed())
        .map(|t| t.capacity_blocks())
        .fold(0u64, u64::saturating_add)
        .clamp(1024, 1 << 20) as usize
}

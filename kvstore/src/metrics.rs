//! Prometheus metrics of the kvstore crate: every name is here, all prefixed `tierkv_`.
//! Service counters live in a registry; the store's per-tier figures are read from
//! [`crate::TieredStore::stats`] at scrape time.

use std::fmt::Write;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::TieredStore;

/// Block service calls, by `rpc` and gRPC `code`.
pub const RPC_TOTAL: &str = "tierkv_service_rpc_total";
/// Block service call durations, by `rpc`.
pub const RPC_SECONDS: &str = "tierkv_service_rpc_seconds";
/// Blocks through the block service, by `rpc` and `outcome`.
pub const BLOCKS_TOTAL: &str = "tierkv_service_blocks_total";
/// Block bytes through the block service, by `direction`.
pub const BYTES_TOTAL: &str = "tierkv_service_bytes_total";
/// Block bytes the service holds in flight now.
pub const INFLIGHT_BYTES: &str = "tierkv_service_inflight_bytes";
/// Publish, fetch and watch streams open now.
pub const OPEN_STREAMS: &str = "tierkv_service_open_streams";
/// Gets a tier served, by `tier`.
pub const TIER_HITS: &str = "tierkv_tier_hits_total";
/// Gets that reached a tier and missed, by `tier`.
pub const TIER_MISSES: &str = "tierkv_tier_misses_total";
/// Bytes read from a tier, by `tier`.
pub const TIER_BYTES_READ: &str = "tierkv_tier_bytes_read_total";
/// Bytes written into a tier, by `tier`.
pub const TIER_BYTES_WRITTEN: &str = "tierkv_tier_bytes_written_total";
/// Blocks evicted from a tier, by `tier`.
pub const TIER_EVICTIONS: &str = "tierkv_tier_evictions_total";
/// Blocks demoted from a tier to the next, by `tier`.
pub const TIER_DEMOTIONS: &str = "tierkv_tier_demotions_total";
/// Blocks promoted from a tier into the top tier, by `tier`.
pub const TIER_PROMOTIONS: &str = "tierkv_tier_promotions_total";
/// Blocks a tier found damaged on read, by `tier`.
pub const TIER_CORRUPT: &str = "tierkv_tier_corrupt_blocks_total";
/// Failed I/O operations of a tier, by `tier`.
pub const TIER_IO_ERRORS: &str = "tierkv_tier_io_errors_total";
/// Capacity a tier's blocks take (whole slots), by `tier`.
pub const TIER_USED_BYTES: &str = "tierkv_tier_used_bytes";
/// Sum of a tier's block payloads, by `tier`.
pub const TIER_PAYLOAD_BYTES: &str = "tierkv_tier_payload_bytes";
/// A tier's capacity, by `tier`.
pub const TIER_CAPACITY_BYTES: &str = "tierkv_tier_capacity_bytes";
/// Blocks a tier holds, by `tier`.
pub const TIER_BLOCKS: &str = "tierkv_tier_blocks";

/// The block service's metrics.
pub struct Metrics {
    registry: Registry,
    /// By `rpc` and gRPC `code`.
    pub rpc_total: IntCounterVec,
    /// By `rpc`.
    pub rpc_seconds: HistogramVec,
    /// By `rpc` and `outcome` (stored, already_present, rejected, sent, missing).
    pub blocks_total: IntCounterVec,
    /// By `direction` (in, out).
    pub bytes_total: IntCounterVec,
    /// Block bytes held in flight.
    pub inflight_bytes: IntGauge,
    /// Streams open.
    pub open_streams: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("inflight_bytes", &self.inflight_bytes.get())
            .field("open_streams", &self.open_streams.get())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// The block service's metrics, registered in a registry of their own.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let rpc_total = IntCounterVec::new(
            Opts::new(RPC_TOTAL, "Block service calls"),
            &["rpc", "code"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let rpc_seconds = HistogramVec::new(
            HistogramOpts::new(RPC_SECONDS, "Block service call latency").buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["rpc"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let blocks_total = IntCounterVec::new(
            Opts::new(BLOCKS_TOTAL, "Blocks by call and outcome"),
            &["rpc", "outcome"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let bytes_total = IntCounterVec::new(
            Opts::new(BYTES_TOTAL, "Block payload bytes"),
            &["direction"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let inflight_bytes = IntGauge::new(INFLIGHT_BYTES, "Block bytes being received or sent")
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let open_streams =
            IntGauge::new(OPEN_STREAMS, "Publish, Fetch and WatchEvents streams open")
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        for c in [
            Box::new(rpc_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rpc_seconds.clone()),
            Box::new(blocks_total.clone()),
            Box::new(bytes_total.clone()),
            Box::new(inflight_bytes.clone()),
            Box::new(open_streams.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                tracing::error!(error = %e, "registering a metric");
            }
        }
        Metrics {
            registry,
            rpc_total,
            rpc_seconds,
            blocks_total,
            bytes_total,
            inflight_bytes,
            open_streams,
        }
    }

    /// The Prometheus text exposition of the service metrics and the store's tiers.
    pub fn render(&self, store: &TieredStore) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        let mut out = String::from_utf8_lossy(&buf).into_owned();
        out.push_str(&render_store(store));
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A metric family derived from the store's stats: name, type, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&crate::TierStoreStats) -> u64,
);

/// The store's per-tier figures in the text format.
pub fn render_store(store: &TieredStore) -> String {
    let stats = store.stats();
    let mut out = String::new();
    let families: [Family; 13] = [
        (TIER_HITS, "counter", "Gets served by the tier", |s| s.hits),
        (TIER_MISSES, "counter", "Gets that missed the tier", |s| {
            s.misses
        }),
        (
            TIER_BYTES_READ,
            "counter",
            "Bytes read from the tier",
            |s| s.bytes_read,
        ),
        (
            TIER_BYTES_WRITTEN,
            "counter",
            "Bytes written to the tier",
            |s| s.bytes_written,
        ),
        (
            TIER_EVICTIONS,
            "counter",
            "Blocks evicted from the tier",
            |s| s.evictions,
        ),
        (
            TIER_DEMOTIONS,
            "counter",
            "Blocks moved to the next tier on eviction",
            |s| s.demotions,
        ),
        (
            TIER_PROMOTIONS,
            "counter",
            "Blocks copied from the tier into the top tier",
            |s| s.promotions,
        ),
        (
            TIER_CORRUPT,
            "counter",
            "Blocks that failed verification",
            |s| s.tier.corrupt_blocks,
        ),
        (TIER_IO_ERRORS, "counter", "I/O errors of the tier", |s| {
            s.tier.io_errors
        }),
        (
            TIER_USED_BYTES,
            "gauge",
            "Capacity the blocks take (a whole slot each)",
            |s| s.tier.used_bytes,
        ),
        (TIER_PAYLOAD_BYTES, "gauge", "Payload bytes held", |s| {
            s.tier.payload_bytes
        }),
        (TIER_CAPACITY_BYTES, "gauge", "Capacity in bytes", |s| {
            s.tier.capacity_bytes
        }),
        (TIER_BLOCKS, "gauge", "Blocks held", |s| s.tier.blocks),
    ];
    for (name, kind, help, get) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for t in &stats.tiers {
            let _ = writeln!(
                out,
                "{name}{{tier=\"{}\",kind=\"{}\"}} {}",
                t.tier.name,
                t.tier.kind,
                get(t)
            );
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    store: TieredStore,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, store) = (metrics.clone(), store.clone());
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(&store),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

//! Prometheus metrics of the frontend (`tierkv_frontend_*`): every name is here.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Requests received.
pub const FRONTEND_REQUESTS: &str = "tierkv_frontend_requests_total";
/// Requests routed to a decode worker.
pub const FRONTEND_ROUTED: &str = "tierkv_frontend_routed_total";
/// Prompt blocks the chosen worker already held.
pub const FRONTEND_OVERLAP_BLOCKS: &str = "tierkv_frontend_kv_overlap_blocks";
/// Requests a worker failed.
pub const FRONTEND_WORKER_FAILURES: &str = "tierkv_frontend_worker_failures_total";
/// Known workers by role.
pub const FRONTEND_WORKERS: &str = "tierkv_frontend_workers";
/// Blocks in the router's KV index.
pub const FRONTEND_INDEX_BLOCKS: &str = "tierkv_frontend_index_blocks";
/// Requests being served.
pub const FRONTEND_INFLIGHT: &str = "tierkv_frontend_requests_in_flight";
/// Where the frontend had a vLLM decode worker's prompt computed.
pub const FRONTEND_PREFILL_DECISIONS: &str = "tierkv_frontend_prefill_decisions_total";
/// A vLLM prefill worker's prefill request until its answer.
pub const FRONTEND_REMOTE_PREFILL_SECONDS: &str = "tierkv_frontend_remote_prefill_seconds";

fn ok<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

/// The frontend's metrics (names above), in a registry of their own.
pub struct FrontendMetrics {
    registry: Registry,
    /// See [`FRONTEND_REQUESTS`].
    pub requests: IntCounter,
    /// By `worker` and `policy` (round-robin, kv-aware).
    pub routed: IntCounterVec,
    /// Prompt blocks the chosen decode worker already held (the router's score).
    pub overlap_blocks: Histogram,
    /// Workers that failed a request, by `worker`.
    pub worker_failures: IntCounterVec,
    /// Known workers by `role`.
    pub workers: IntGaugeVec,
    /// Blocks in the router's index, by `worker`.
    pub index_blocks: IntGaugeVec,
    /// See [`FRONTEND_INFLIGHT`].
    pub in_flight: IntGauge,
    /// Requests to decode workers that cannot choose for themselves (vLLM), by
    /// `decision`: remote, local_short, local_busy, local_no_prefill_worker, fallback.
    pub prefill_decisions: IntCounterVec,
    /// vLLM decode workers: the prefill request (one output token) until its answer.
    pub remote_prefill_seconds: Histogram,
}

impl std::fmt::Debug for FrontendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontendMetrics")
            .field("requests", &self.requests.get())
            .field("in_flight", &self.in_flight.get())
            .finish_non_exhaustive()
    }
}

impl FrontendMetrics {
    /// The frontend's metrics, registered in a registry of their own.
    pub fn new() -> FrontendMetrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| ok(registry.register(c));
        let requests = ok(IntCounter::new(FRONTEND_REQUESTS, "Requests received"));
        reg(Box::new(requests.clone()));
        let routed = ok(IntCounterVec::new(
            Opts::new(FRONTEND_ROUTED, "Requests routed to a decode worker"),
            &["worker", "policy"],
        ));
        reg(Box::new(routed.clone()));
        let overlap_blocks = ok(Histogram::with_opts(
            HistogramOpts::new(
                FRONTEND_OVERLAP_BLOCKS,
                "Prompt blocks the chosen worker already held",
            )
            .buckets(vec![
                0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0,
            ]),
        ));
        reg(Box::new(overlap_blocks.clone()));
        let worker_failures = ok(IntCounterVec::new(
            Opts::new(FRONTEND_WORKER_FAILURES, "Requests a worker failed"),
            &["worker"],
        ));
        reg(Box::new(worker_failures.clone()));
        let workers = ok(IntGaugeVec::new(
            Opts::new(FRONTEND_WORKERS, "Known workers by role"),
            &["role"],
        ));
        reg(Box::new(workers.clone()));
        let index_blocks = ok(IntGaugeVec::new(
            Opts::new(FRONTEND_INDEX_BLOCKS, "Blocks in the router's KV index"),
            &["worker"],
        ));
        reg(Box::new(index_blocks.clone()));
        let in_flight = ok(IntGauge::new(FRONTEND_INFLIGHT, "Requests being served"));
        reg(Box::new(in_flight.clone()));
        let prefill_decisions = ok(IntCounterVec::new(
            Opts::new(
                FRONTEND_PREFILL_DECISIONS,
                "Where the frontend had a vLLM decode worker's prompt computed",
            ),
            &["decision"],
        ));
        reg(Box::new(prefill_decisions.clone()));
        let remote_prefill_seconds = ok(Histogram::with_opts(HistogramOpts::new(
            FRONTEND_REMOTE_PREFILL_SECONDS,
            "A vLLM prefill worker's prefill request until its answer",
        )));
        reg(Box::new(remote_prefill_seconds.clone()));
        FrontendMetrics {
            registry,
            requests,
            routed,
            overlap_blocks,
            worker_failures,
            workers,
            index_blocks,
            in_flight,
            prefill_decisions,
            remote_prefill_seconds,
        }
    }

    /// The frontend's metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        render_registry(&self.registry)
    }
}

impl Default for FrontendMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `registry`'s metrics in the Prometheus text format.
pub fn render_registry(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

//! Prometheus metrics of the engine (`tierkv_engine_*`): every name is here (the
//! frontend's, `tierkv_frontend_*`, are in `tierkv_serving::metrics`).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Requests queued.
pub const REQUESTS: &str = "tierkv_engine_requests_total";
/// Requests finished.
pub const FINISHED: &str = "tierkv_engine_requests_finished_total";
/// Requests whose client went away.
pub const CANCELLED: &str = "tierkv_engine_requests_cancelled_total";
/// Requests preempted when the KV pool ran out.
pub const PREEMPTIONS: &str = "tierkv_engine_preemptions_total";
/// Prompt tokens by where their KV came from.
pub const PROMPT_TOKENS: &str = "tierkv_engine_prompt_tokens_total";
/// Tokens generated.
pub const GENERATED_TOKENS: &str = "tierkv_engine_generated_tokens_total";
/// KV blocks published to the store.
pub const BLOCKS_PUBLISHED: &str = "tierkv_engine_blocks_published_total";
/// KV block publications the store refused.
pub const PUBLISH_FAILURES: &str = "tierkv_engine_publish_failures_total";
/// KV blocks not published: queue full.
pub const PUBLISH_SKIPPED: &str = "tierkv_engine_publish_skipped_total";
/// Time to first token.
pub const TTFT: &str = "tierkv_engine_time_to_first_token_seconds";
/// Time between tokens of a request.
pub const ITL: &str = "tierkv_engine_inter_token_latency_seconds";
/// Duration of one model step.
pub const STEP_SECONDS: &str = "tierkv_engine_step_seconds";
/// Tokens computed in one model step.
pub const STEP_TOKENS: &str = "tierkv_engine_step_tokens";
/// KV pool blocks by state.
pub const POOL_BLOCKS: &str = "tierkv_engine_kv_pool_blocks";
/// Requests being decoded or prefilled.
pub const RUNNING: &str = "tierkv_engine_requests_running";
/// Requests waiting for room.
pub const WAITING: &str = "tierkv_engine_requests_waiting";
/// Where prompts were prefilled (decode role).
pub const PREFILL_DECISIONS: &str = "tierkv_engine_prefill_decisions_total";
/// Remote prefill call until the answer.
pub const REMOTE_PREFILL_SECONDS: &str = "tierkv_engine_remote_prefill_seconds";
/// Remote prefills served (prefill role).
pub const PREFILLS_SERVED: &str = "tierkv_engine_prefills_served_total";
/// KV blocks fetched from prefill workers.
pub const PEER_BLOCKS_FETCHED: &str = "tierkv_engine_peer_blocks_fetched_total";
/// KV bytes fetched from prefill workers.
pub const PEER_BYTES_FETCHED: &str = "tierkv_engine_peer_bytes_fetched_total";
/// Fetching a request's blocks from a prefill worker.
pub const PEER_FETCH_SECONDS: &str = "tierkv_engine_peer_fetch_seconds";
/// Peer fetches failed or cut short by a missing or corrupt block.
pub const PEER_FETCH_FAILURES: &str = "tierkv_engine_peer_fetch_failures_total";

/// The engine's metrics (names above), in a registry of their own.
pub struct EngineMetrics {
    registry: Registry,
    /// See [`REQUESTS`].
    pub requests: IntCounter,
    /// By `reason` (stop, length).
    pub finished: IntCounterVec,
    /// See [`CANCELLED`].
    pub cancelled: IntCounter,
    /// See [`PREEMPTIONS`].
    pub preemptions: IntCounter,
    /// Prompt tokens by `source`: computed, engine (own pool), host, disk, object, remote.
    pub prompt_tokens: IntCounterVec,
    /// See [`GENERATED_TOKENS`].
    pub generated_tokens: IntCounter,
    /// See [`BLOCKS_PUBLISHED`].
    pub blocks_published: IntCounter,
    /// See [`PUBLISH_FAILURES`].
    pub publish_failures: IntCounter,
    /// Blocks not published because the publish queue was full.
    pub publish_skipped: IntCounter,
    /// See [`TTFT`].
    pub ttft_seconds: Histogram,
    /// See [`ITL`].
    pub itl_seconds: Histogram,
    /// See [`STEP_SECONDS`].
    pub step_seconds: Histogram,
    /// See [`STEP_TOKENS`].
    pub step_tokens: Histogram,
    /// By `state`: used, cached, free.
    pub pool_blocks: IntGaugeVec,
    /// See [`RUNNING`].
    pub running: IntGauge,
    /// See [`WAITING`].
    pub waiting: IntGauge,
    /// Decode role, by `decision`: remote, local_short, local_busy,
    /// local_no_prefill_worker, fallback (the remote path failed).
    pub prefill_decisions: IntCounterVec,
    /// Decode role: asking a prefill worker until its answer.
    pub remote_prefill_seconds: Histogram,
    /// Prefill role: prompts computed and published for decode workers.
    pub prefills_served: IntCounter,
    /// Decode role: blocks fetched from prefill workers' block services.
    pub peer_blocks_fetched: IntCounter,
    /// Decode role: bytes of those blocks.
    pub peer_bytes_fetched: IntCounter,
    /// Decode role: one fetch from a prefill worker's block service.
    pub peer_fetch_seconds: Histogram,
    /// Fetches that failed or returned a missing or corrupt block (recomputed).
    pub peer_fetch_failures: IntCounter,
}

fn ok<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics")
            .field("requests", &self.requests.get())
            .field("running", &self.running.get())
            .field("waiting", &self.waiting.get())
            .finish_non_exhaustive()
    }
}

impl EngineMetrics {
    /// The engine's metrics, registered in a registry of their own.
    pub fn new() -> EngineMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = ok(IntCounter::new(name, help));
            ok(registry.register(Box::new(c.clone())));
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = ok(IntCounterVec::new(Opts::new(name, help), &[label]));
            ok(registry.register(Box::new(c.clone())));
            c
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = ok(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets),
            ));
            ok(registry.register(Box::new(h.clone())));
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = ok(IntGauge::new(name, help));
            ok(registry.register(Box::new(g.clone())));
            g
        };
        let pool_blocks = ok(IntGaugeVec::new(
            Opts::new(POOL_BLOCKS, "KV pool blocks by state"),
            &["state"],
        ));
        ok(registry.register(Box::new(pool_blocks.clone())));
        EngineMetrics {
            requests: counter(REQUESTS, "Requests queued"),
            finished: counter_vec(FINISHED, "Requests finished", "reason"),
            cancelled: counter(CANCELLED, "Requests whose client went away"),
            preemptions: counter(PREEMPTIONS, "Requests preempted when the KV pool ran out"),
            prompt_tokens: counter_vec(
                PROMPT_TOKENS,
                "Prompt tokens by where their KV came from",
                "source",
            ),
            generated_tokens: counter(GENERATED_TOKENS, "Tokens generated"),
            blocks_published: counter(BLOCKS_PUBLISHED, "KV blocks published to the store"),
            publish_failures: counter(PUBLISH_FAILURES, "KV block publications the store refused"),
            publish_skipped: counter(PUBLISH_SKIPPED, "KV blocks not published: queue full"),
            ttft_seconds: hist(TTFT, "Time to first token", latency_buckets()),
            itl_seconds: hist(ITL, "Time between tokens of a request", latency_buckets()),
            step_seconds: hist(
                STEP_SECONDS,
                "Duration of one model step",
                latency_buckets(),
            ),
            step_tokens: hist(
                STEP_TOKENS,
                "Tokens computed in one model step",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            pool_blocks,
            running: gauge(RUNNING, "Requests being decoded or prefilled"),
            waiting: gauge(WAITING, "Requests waiting for room"),
            prefill_decisions: counter_vec(
                PREFILL_DECISIONS,
                "Where prompts were prefilled (decode role)",
                "decision",
            ),
            remote_prefill_seconds: hist(
                REMOTE_PREFILL_SECONDS,
                "Remote prefill call until the answer",
                latency_buckets(),
            ),
            prefills_served: counter(PREFILLS_SERVED, "Remote prefills served (prefill role)"),
            peer_blocks_fetched: counter(
                PEER_BLOCKS_FETCHED,
                "KV blocks fetched from prefill workers",
            ),
            peer_bytes_fetched: counter(
                PEER_BYTES_FETCHED,
                "KV bytes fetched from prefill workers",
            ),
            peer_fetch_seconds: hist(
                PEER_FETCH_SECONDS,
                "Fetching a request's blocks from a prefill worker",
                latency_buckets(),
            ),
            peer_fetch_failures: counter(
                PEER_FETCH_FAILURES,
                "Peer fetches failed or cut short by a missing or corrupt block",
            ),
            registry,
        }
    }

    /// The engine's metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        tierkv_serving::metrics::render_registry(&self.registry)
    }
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self::new()
    }
}

//! How the frontend talks to a worker; the worker's engine is a detail of this module.
//! A tierkv engine speaks the internal API ([`tierkv`]); a `vllm serve` with
//! TierkvConnector speaks the OpenAI API with `kv_transfer_params`, and the frontend
//! runs the prefill-then-decode flow for it ([`vllm`]). Both turn the worker's
//! response stream into engine events the same way ([`forward`]).

mod tierkv;
mod vllm;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tierkv_kvstore::Namespace;
use tokio::sync::mpsc;

use super::PrefillConfig;
use super::registry::{PrefillReservation, Reservation};
use crate::ServingError;
use crate::discovery::{WorkerEngine, WorkerSpec};
use crate::metrics::FrontendMetrics;
use crate::pd::{WireRequest, WorkerInfo, WorkerLoad};
use crate::request::GenEvent;

/// Why a worker did not take a request.
pub(super) enum StartError {
    /// The request itself is bad (the worker answered 4xx): no other worker will
    /// take it either.
    Rejected(ServingError),
    /// The worker failed or is unreachable: another one may serve the request.
    Failed(String),
}

/// What a request needs besides the request: the frontend's shared parts.
pub(super) struct Context<'a> {
    pub http: &'a reqwest::Client,
    pub metrics: &'a Arc<FrontendMetrics>,
    pub prefill: &'a PrefillConfig,
}

/// Starts `req` on the reserved decode (or aggregated) worker; once it accepted, its
/// events arrive on the receiver (the reservation lasts until the stream ends). A
/// worker that fails mid-stream yields a [`GenEvent::Error`], never silence.
/// `cached_tokens`: the prompt tokens the worker's store holds.
pub(super) async fn start(
    cx: &Context<'_>,
    reservation: Reservation,
    prefill: Option<PrefillReservation>,
    req: &WireRequest,
    cached_tokens: usize,
) -> Result<mpsc::UnboundedReceiver<GenEvent>, StartError> {
    match reservation.worker.spec.engine {
        WorkerEngine::Tierkv => tierkv::start(cx, reservation, prefill, req).await,
        WorkerEngine::Vllm => vllm::start(cx, reservation, prefill, req, cached_tokens).await,
    }
}

/// A joining worker's answer to "who are you".
pub(super) enum InfoPoll {
    /// It answered: what it serves, and the namespace its blocks are hashed in.
    Ready(Box<(WorkerInfo, Namespace)>),
    /// Not up yet: ask again.
    NotYet,
    /// It answered something that will not change: give up on it.
    Refused(String),
}

pub(super) async fn info(http: &reqwest::Client, spec: &WorkerSpec) -> InfoPoll {
    match spec.engine {
        WorkerEngine::Tierkv => tierkv::info(http, spec).await,
        WorkerEngine::Vllm => vllm::info(http, spec).await,
    }
}

/// The worker's queue; `None` when it did not answer.
pub(super) async fn load(
    http: &reqwest::Client,
    spec: &WorkerSpec,
    timeout: Duration,
) -> Option<WorkerLoad> {
    match spec.engine {
        WorkerEngine::Tierkv => tierkv::load(http, spec, timeout).await,
        WorkerEngine::Vllm => vllm::load(http, spec, timeout).await,
    }
}

/// A non-success answer as a [`StartError`]: 4xx is the request's fault, the rest
/// the worker's. Both engines put the reason in `error.message` (vLLM sometimes in
/// `message`).
async fn refusal(resp: reqwest::Response) -> StartError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or_else(|| v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or(text);
    if status.is_client_error() {
        StartError::Rejected(ServingError::InvalidRequest(message))
    } else {
        StartError::Failed(format!("{status}: {message}"))
    }
}

/// Turns one line of a worker's response stream into events.
trait LineDecoder: Send + 'static {
    fn line(&mut self, line: &[u8]) -> Result<Vec<GenEvent>, String>;
    /// Whether the stream said it is complete (a normal end may follow).
    fn ended(&self) -> bool;
}

/// Forwards `resp`'s lines as events until the stream ends or the client goes away
/// (dropping the body then cancels the request on the worker). `prefill` is released
/// at the first token.
fn forward(
    resp: reqwest::Response,
    mut decoder: impl LineDecoder,
    reservation: Reservation,
    prefill: Option<PrefillReservation>,
    metrics: Arc<FrontendMetrics>,
) -> mpsc::UnboundedReceiver<GenEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let name = reservation.worker.spec.name.clone();
        let _reservation = reservation;
        let mut prefill = prefill;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let outcome: Result<(), String> = 'read: loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let events = match decoder.line(&line) {
                            Ok(ev) => ev,
                            Err(e) => break 'read Err(format!("bad event: {e}")),
                        };
                        for ev in events {
                            if matches!(ev, GenEvent::Token(_)) {
                                drop(prefill.take());
                            }
                            if tx.send(ev).is_err() {
                                break 'read Ok(());
                            }
                        }
                    }
                }
                Some(Err(e)) => break 'read Err(e.to_string()),
                None if decoder.ended() => break 'read Ok(()),
                None => break 'read Err("the stream ended early".into()),
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(worker = %name, error = %e, "worker failed mid-stream");
            metrics.worker_failures.with_label_values(&[&name]).inc();
            let _ = tx.send(GenEvent::Error(format!(
                "worker {name} failed while streaming: {e}"
            )));
        }
    });
    rx
}

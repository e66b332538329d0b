//! The frontend's side of `/internal/generate`: start a request on a worker and turn
//! its newline-delimited events back into engine events.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::registry::{PrefillReservation, Reservation};
use crate::metrics::FrontendMetrics;
use crate::pd::{WireEvent, WireRequest};
use crate::{EngineError, GenEvent};

/// Why a worker did not take a request.
pub enum StartError {
    /// The request itself is bad (the worker answered 4xx): no other worker will
    /// take it either.
    Rejected(EngineError),
    /// The worker failed or is unreachable: another one may serve the request.
    Failed(String),
}

/// Sends `req` to the reserved worker; once it accepted, its events arrive on the
/// receiver (the reservation lasts until the stream ends). A worker that fails
/// mid-stream yields a [`GenEvent::Error`], never silence.
pub async fn start(
    http: &reqwest::Client,
    reservation: Reservation,
    prefill: Option<PrefillReservation>,
    req: &WireRequest,
    metrics: Arc<FrontendMetrics>,
) -> Result<mpsc::UnboundedReceiver<GenEvent>, StartError> {
    let worker = Arc::clone(&reservation.worker);
    let body = serde_json::to_vec(req)
        .map_err(|e| StartError::Rejected(EngineError::InvalidRequest(e.to_string())))?;
    let resp = http
        .post(format!("{}/internal/generate", worker.spec.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| StartError::Failed(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(if status.is_client_error() {
            StartError::Rejected(EngineError::InvalidRequest(message))
        } else {
            StartError::Failed(format!("{status}: {message}"))
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _reservation = reservation;
        // Released at the first token: the prompt is prefilled by then.
        let mut prefill = prefill;
        let name = worker.spec.name.clone();
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut ended = false;
        let outcome: Result<(), String> = 'read: loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    buf.extend_from_slice(&chunk);
                    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let ev = match serde_json::from_slice::<WireEvent>(&line) {
                            Ok(ev) => ev,
                            Err(e) => break 'read Err(format!("bad event: {e}")),
                        };
                        if matches!(ev, WireEvent::Finished { .. } | WireEvent::Error { .. }) {
                            ended = true;
                        }
                        if !matches!(ev, WireEvent::Admitted { .. }) {
                            drop(prefill.take());
                        }
                        if tx.send(ev.into_event()).is_err() {
                            // The client went away: dropping the body cancels the
                            // request on the worker.
                            break 'read Ok(());
                        }
                    }
                }
                Some(Err(e)) => break 'read Err(e.to_string()),
                None if ended => break 'read Ok(()),
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
    Ok(rx)
}

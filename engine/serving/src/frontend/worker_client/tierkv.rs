//! A `tierkv engine` worker: `/internal/info`, `/internal/load` and
//! `/internal/generate` (newline-delimited [`WireEvent`]s). A decode worker is handed
//! the prefill candidates and decides about remote prefill itself.

use std::time::Duration;

use tierkv_kvstore::Namespace;
use tokio::sync::mpsc;

use super::{Context, InfoPoll, LineDecoder, StartError, forward, refusal};
use crate::ServingError;
use crate::discovery::WorkerSpec;
use crate::frontend::registry::{PrefillReservation, Reservation};
use crate::pd::{WireEvent, WireRequest, WorkerInfo, WorkerLoad};
use crate::request::GenEvent;

pub(super) async fn start(
    cx: &Context<'_>,
    reservation: Reservation,
    prefill: Option<PrefillReservation>,
    req: &WireRequest,
) -> Result<mpsc::UnboundedReceiver<GenEvent>, StartError> {
    let body = serde_json::to_vec(req)
        .map_err(|e| StartError::Rejected(ServingError::InvalidRequest(e.to_string())))?;
    let resp = cx
        .http
        .post(format!(
            "{}/internal/generate",
            reservation.worker.spec.http
        ))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| StartError::Failed(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    Ok(forward(
        resp,
        WireLines::default(),
        reservation,
        prefill,
        cx.metrics.clone(),
    ))
}

#[derive(Default)]
struct WireLines {
    ended: bool,
}

impl LineDecoder for WireLines {
    fn line(&mut self, line: &[u8]) -> Result<Vec<GenEvent>, String> {
        let ev = serde_json::from_slice::<WireEvent>(line).map_err(|e| e.to_string())?;
        if matches!(ev, WireEvent::Finished { .. } | WireEvent::Error { .. }) {
            self.ended = true;
        }
        Ok(vec![ev.into_event()])
    }
    fn ended(&self) -> bool {
        self.ended
    }
}

pub(super) async fn info(http: &reqwest::Client, spec: &WorkerSpec) -> InfoPoll {
    let got = http
        .get(format!("{}/internal/info", spec.http))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let Ok(r) = got else { return InfoPoll::NotYet };
    if !r.status().is_success() {
        return InfoPoll::NotYet;
    }
    let Ok(b) = r.bytes().await else {
        return InfoPoll::NotYet;
    };
    let info = match serde_json::from_slice::<WorkerInfo>(&b) {
        Ok(i) => i,
        Err(e) => return InfoPoll::Refused(format!("bad /internal/info: {e}")),
    };
    match Namespace::new(info.model_id.clone(), info.layout) {
        Ok(ns) => InfoPoll::Ready(Box::new((info, ns))),
        Err(e) => InfoPoll::Refused(format!("invalid KV layout: {e}")),
    }
}

pub(super) async fn load(
    http: &reqwest::Client,
    spec: &WorkerSpec,
    timeout: Duration,
) -> Option<WorkerLoad> {
    let r = http
        .get(format!("{}/internal/load", spec.http))
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    let b = r.bytes().await.ok()?;
    serde_json::from_slice::<WorkerLoad>(&b).ok()
}

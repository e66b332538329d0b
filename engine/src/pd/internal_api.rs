//! The internal HTTP API every engine serves beside the OpenAI one:
//!
//! - `POST /internal/generate`: a [`WireRequest`] in, [`WireEvent`]s out, one JSON
//!   object per line (what a frontend sends a decode or aggregated worker);
//! - `POST /internal/prefill`: compute a prompt, publish its full blocks, answer a
//!   [`PrefillReply`] (what a decode worker asks a prefill worker);
//! - `GET /internal/info` ([`WorkerInfo`]) and `GET /internal/load` ([`WorkerLoad`](super::WorkerLoad)).

use std::collections::HashSet;
use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tierkv_kvstore::hash_blocks;

use super::{PdWorker, PrefillReply, WireEvent, WireRequest, WorkerInfo};
use crate::GenEvent;
use crate::api::{ApiError, json_response, parse};

/// The internal API of `worker` (merge it with the engine's OpenAI routes).
pub fn router(worker: PdWorker) -> Router {
    Router::new()
        .route("/internal/generate", post(generate))
        .route("/internal/prefill", post(prefill))
        .route("/internal/info", get(info))
        .route("/internal/load", get(load))
        .with_state(worker)
}

async fn generate(State(worker): State<PdWorker>, body: Bytes) -> Response {
    let result = async {
        let wire: WireRequest = parse(&body)?;
        let rx = worker.engine.generate(worker.request(wire)).await?;
        Ok::<_, ApiError>(rx)
    };
    let rx = match result.await {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            let ev = rx.recv().await?;
            if let Some(w) = WireEvent::from_event(&ev) {
                let mut line = serde_json::to_vec(&w).unwrap_or_else(|e| {
                    format!("{{\"event\":\"error\",\"message\":\"encoding: {e}\"}}").into_bytes()
                });
                line.push(b'\n');
                return Some((Ok::<_, Infallible>(Bytes::from(line)), rx));
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|e| ApiError::invalid(e.to_string()).into_response())
}

async fn prefill(State(worker): State<PdWorker>, body: Bytes) -> Response {
    let engine = &worker.engine;
    let result = async {
        let wire: WireRequest = parse(&body)?;
        // A prefill worker computes the prompt itself.
        let mut req = wire.into_request();
        req.max_tokens = 1;
        req.await_publish = true;
        let ns = engine.namespace_for(req.cache_salt.as_deref())?;
        let hashes = hash_blocks(&ns, &req.prompt);
        let _serving = worker.prefilling();
        let mut rx = engine.generate(req).await?;
        let (mut first, mut usage, mut stored) = (None, None, HashSet::new());
        // The channel closes once the request finished and every block it published
        // is stored.
        while let Some(ev) = rx.recv().await {
            match ev {
                GenEvent::Token(t) => first = first.or(Some(t)),
                GenEvent::Published(h) => {
                    stored.insert(h);
                }
                GenEvent::Finished { usage: u, .. } => usage = Some(u),
                GenEvent::Error(m) => {
                    return Err(ApiError::from(crate::EngineError::Unavailable(m)));
                }
                GenEvent::Admitted(_) => {}
            }
        }
        let (Some(first_token), Some(usage)) = (first, usage) else {
            return Err(ApiError::from(crate::EngineError::Unavailable(
                "the prefill ended without a token".into(),
            )));
        };
        engine.metrics().prefills_served.inc();
        let blocks = hashes.iter().take_while(|h| stored.contains(h)).count();
        Ok(PrefillReply {
            first_token,
            blocks,
            usage,
        })
    };
    match result.await {
        Ok(reply) => json_response(serde_json::json!(reply)),
        Err(e) => e.into_response(),
    }
}

async fn info(State(worker): State<PdWorker>) -> Response {
    let engine = &worker.engine;
    json_response(serde_json::json!(WorkerInfo {
        name: worker.name.clone(),
        blocks: worker.blocks.clone(),
        role: worker.role(),
        model_id: engine.model_id().to_string(),
        layout: *engine.namespace().layout(),
        max_context: engine.max_context(),
    }))
}

async fn load(State(worker): State<PdWorker>) -> Response {
    json_response(serde_json::json!(worker.load()))
}

//! The internal HTTP API every engine serves beside the OpenAI one:
//!
//! - `POST /internal/generate`: a [`WireRequest`] in, [`WireEvent`]s out, one JSON
//!   object per line (what a frontend sends a decode or aggregated worker);
//! - `POST /internal/prefill`: compute a prompt, publish its full blocks, answer a
//!   [`PrefillReply`] (what a decode worker asks a prefill worker);
//! - `GET /internal/info` ([`WorkerInfo`]) and `GET /internal/load` ([`WorkerLoad`]).

use std::collections::HashSet;
use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tierkv_kvstore::hash_blocks;

use super::{PrefillReply, WireEvent, WireRequest, WorkerInfo};
use crate::api::{ApiError, json_response, parse};
use crate::{Engine, GenEvent};

pub fn routes() -> Router<Engine> {
    Router::new()
        .route("/internal/generate", post(generate))
        .route("/internal/prefill", post(prefill))
        .route("/internal/info", get(info))
        .route("/internal/load", get(load))
}

async fn generate(State(engine): State<Engine>, body: Bytes) -> Response {
    let result = async {
        let req: WireRequest = parse(&body)?;
        let rx = engine.generate(req.into_request()).await?;
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

async fn prefill(State(engine): State<Engine>, body: Bytes) -> Response {
    let result = async {
        let wire: WireRequest = parse(&body)?;
        let mut req = wire.into_request();
        req.max_tokens = 1;
        req.await_publish = true;
        req.prefill_candidates.clear();
        let ns = engine.namespace_for(req.cache_salt.as_deref())?;
        let hashes = hash_blocks(&ns, &req.prompt);
        let _serving = engine.prefilling();
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

async fn info(State(engine): State<Engine>) -> Response {
    let (name, blocks) = engine.identity();
    json_response(serde_json::json!(WorkerInfo {
        name,
        role: engine.role(),
        model_id: engine.model_id().to_string(),
        layout: *engine.namespace().layout(),
        max_context: engine.max_context(),
        blocks,
    }))
}

async fn load(State(engine): State<Engine>) -> Response {
    json_response(serde_json::json!(engine.load()))
}

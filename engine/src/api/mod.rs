//! The engine's HTTP API: the OpenAI routes of `tierkv_serving::api` served from the
//! engine's own model, plus vLLM's `POST /reset_prefix_cache`.

mod backend;

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

pub use tierkv_serving::api::*;

use crate::{Engine, EngineError};

/// An engine's routes: the OpenAI API and `/reset_prefix_cache` (a cluster worker
/// merges `pd::internal_api::router` beside them).
pub fn router(engine: Engine) -> Router {
    openai_routes::<Engine>()
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .with_state(engine)
}

async fn reset_prefix_cache(State(engine): State<Engine>) -> Response {
    match engine.reset_prefix_cache().await {
        Ok(n) => json_response(json!({ "dropped_blocks": n })),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// An engine error as the API answers it (see `From<EngineError> for ServingError`).
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError::from(tierkv_serving::ServingError::from(e))
    }
}

/// Serves an engine's API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(engine), shutdown).await
}

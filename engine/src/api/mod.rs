//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions`, `POST /v1/completions`
//! (both with SSE streaming), `GET /v1/models`, `GET /health`, `GET /metrics`, and
//! vLLM's `POST /reset_prefix_cache`.

mod error;
mod generation;
mod handlers;
mod types;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::Engine;

/// The API's routes over `engine`.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::models))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/reset_prefix_cache", post(handlers::reset_prefix_cache))
        .fallback(handlers::not_found)
        .with_state(engine)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

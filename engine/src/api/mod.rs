//! The OpenAI-compatible HTTP API: `POST /v1/chat/completions`, `POST /v1/completions`
//! (both with SSE streaming), `GET /v1/models`, `GET /health`, `GET /metrics`, and
//! vLLM's `POST /reset_prefix_cache`.

mod auth;
mod backend;
mod error;
mod generation;
mod handlers;
pub(crate) mod types;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};

pub use auth::{ApiAccess, bearer_headers, require_api_key};
pub use backend::{Backend, Routed};
pub use error::{ApiError, json_errors};
pub use handlers::WORKER_HEADER;
pub(crate) use handlers::{json_response, parse};

use crate::Engine;

/// The OpenAI routes over any backend.
pub fn openai_routes<B: Backend>() -> Router<B> {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat::<B>))
        .route("/v1/completions", post(handlers::completions::<B>))
        .route("/v1/models", get(handlers::models::<B>))
        .route("/health", get(handlers::health))
        .route("/metrics", get(handlers::metrics::<B>))
        .fallback(handlers::not_found)
}

/// An engine's routes: the OpenAI API and `/reset_prefix_cache` (a cluster worker
/// merges `pd::internal_api::router` beside them).
pub fn router(engine: Engine) -> Router {
    openai_routes::<Engine>()
        .route("/reset_prefix_cache", post(handlers::reset_prefix_cache))
        .with_state(engine)
}

/// Serves `router` on `listener` until `shutdown` resolves; errors axum writes itself
/// (413 and the like) go out as JSON, as every other error does.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, json_errors(router))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves an engine's API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, router(engine), shutdown).await
}

//! The OpenAI-compatible HTTP API over any [`Backend`]: `POST /v1/chat/completions`,
//! `POST /v1/completions` (both with SSE streaming), `GET /v1/models`, `GET /health`,
//! `GET /metrics`. An engine serves it from its own model (`tierkv_engine::api`, which
//! adds vLLM's `POST /reset_prefix_cache`), the frontend from its workers.

mod auth;
mod backend;
mod error;
mod generation;
mod handlers;
#[doc(hidden)]
pub mod types;

use std::future::Future;

use axum::Router;
use axum::routing::{get, post};

pub use auth::{ApiAccess, bearer_headers, require_api_key};
pub use backend::{Backend, Routed};
pub use error::{ApiError, json_errors};
pub use handlers::WORKER_HEADER;
pub use handlers::{json_response, parse};

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

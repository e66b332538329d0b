//! The HTTP API key (vLLM's `--api-key` convention): with a key set, every route asks
//! for `Authorization: Bearer <key>` except `/health` (and `/metrics` when it is made
//! public), so the OpenAI routes, `/reset_prefix_cache` and the cluster's `/internal/*`
//! routes are closed to anyone without it.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{Result, ServingError};

/// Who may call an HTTP API.
#[derive(Clone, Default)]
pub struct ApiAccess {
    /// The key callers must present; `None`: the API is open.
    pub api_key: Option<String>,
    /// Serve `/metrics` without the key (a Prometheus scraper without credentials).
    pub public_metrics: bool,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("public_metrics", &self.public_metrics)
            .finish()
    }
}

/// `router` behind `access`'s key (unchanged when no key is set).
pub fn require_api_key(router: Router, access: &ApiAccess) -> Router {
    let Some(key) = access.api_key.clone() else {
        return router;
    };
    let expected: Arc<str> = Arc::from(format!("Bearer {key}"));
    let public_metrics = access.public_metrics;
    router.layer(axum::middleware::from_fn(
        move |request: Request, next: Next| {
            let expected = Arc::clone(&expected);
            async move {
                let path = request.uri().path();
                let open = path == "/health" || (public_metrics && path == "/metrics");
                let presented = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes);
                if open || presented.is_some_and(|p| same(p, expected.as_bytes())) {
                    next.run(request).await
                } else {
                    unauthorized()
                }
            }
        },
    ))
}

/// Headers that present `api_key` to another tierkv API (none without a key); the
/// value is marked sensitive so that it is never logged.
pub fn bearer_headers(api_key: Option<&str>) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if let Some(key) = api_key {
        let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ServingError::Config("the API key is not a valid header value".into()))?;
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized() -> Response {
    let body = serde_json::json!({
        "error": {
            "message": "a valid API key is required (Authorization: Bearer <key>)",
            "type": "invalid_request_error",
            "code": 401,
        }
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        super::json_response(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"Bearer k3y", b"Bearer k3y"));
        assert!(!same(b"Bearer k3y", b"Bearer k3z"));
        assert!(!same(b"Bearer k3", b"Bearer k3y"));
    }
}

//! OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::ServingError;

/// An error answer in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`).
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type` (`invalid_request_error`, `server_error`, ...).
    pub kind: &'static str,
    /// OpenAI's `code`, if any (`invalid_value`, `model_not_found`, ...).
    pub code: Option<&'static str>,
    /// The request parameter at fault, if any.
    pub param: Option<&'static str>,
    /// What went wrong, for the caller.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// 400: parameter `param` has an invalid value.
    pub fn param(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            code: Some("invalid_value"),
            ..ApiError::invalid(message)
        }
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            code: None,
            param: None,
            message: message.into(),
        }
    }

    /// 404: no model `model` is served here.
    pub fn model_not_found(model: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("model_not_found"),
            param: Some("model"),
            message: format!("The model `{model}` does not exist."),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<ServingError> for ApiError {
    fn from(e: ServingError) -> ApiError {
        match e {
            ServingError::InvalidRequest(m) => ApiError::invalid(m),
            ServingError::Tokenizer(m) => ApiError::invalid(format!("tokenizer: {m}")),
            ServingError::Unavailable(m) => ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                code: None,
                param: None,
                message: m,
            },
            other => {
                // The client gets the kind and an id to quote; the server's log has the
                // whole error (paths, endpoints and object keys stay in it).
                static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(error_id = id, error = %other, "request failed");
                let what = match &other {
                    ServingError::Store(e) => e.public_summary(),
                    ServingError::Internal { summary, .. } => summary.clone(),
                    _ => "internal error".into(),
                };
                ApiError::internal(format!("{what} (error {id} in the server's log)"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            [("content-type", "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

/// `router` with every plain-text error that axum writes itself (a body over the size
/// limit: 413; a wrong content type: 415; an unreadable body: 400) rewritten as an
/// OpenAI-style JSON error, so clients parse every error the same way.
pub fn json_errors(router: Router) -> Router {
    router.layer(axum::middleware::map_response(
        |response: Response| async move {
            let plain = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/plain"));
            let status = response.status();
            if !plain || !(status.is_client_error() || status.is_server_error()) {
                return response;
            }
            let text = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            };
            let kind = if status.is_client_error() {
                "invalid_request_error"
            } else {
                "server_error"
            };
            ApiError {
                status,
                kind,
                code: None,
                param: None,
                message,
            }
            .into_response()
        },
    ))
}

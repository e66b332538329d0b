//! Request handlers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::backend::Backend;
use super::error::ApiError;
use super::generation::{Piece, TextGeneration};
use super::types::{ChatRequest, CompletionRequest, Prompt, Sampling};
use crate::request::{GenerateRequest, SamplingParams, Usage};

/// Response header naming the worker that served a routed request.
pub const WORKER_HEADER: &str = "x-tierkv-worker";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{:06x}", now_secs(), n)
}

/// `body` as JSON of `T`; a 400 in OpenAI's shape when it is not.
pub fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

fn check_model<B: Backend>(engine: &B, model: &str) -> Result<(), ApiError> {
    if model == engine.model_id() {
        Ok(())
    } else {
        Err(ApiError::model_not_found(model))
    }
}

/// `v` as an `application/json` response.
pub fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

/// Everything a request asks of the engine besides its prompt.
struct Plan {
    request: GenerateRequest,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn plan<B: Backend>(
    engine: &B,
    s: &Sampling,
    prompt: Vec<u32>,
    default_max: Option<usize>,
) -> Result<Plan, ApiError> {
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::param("n", "only n = 1 is supported"));
    }
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::param(
            "temperature",
            format!("temperature {temperature} is not in [0, 2]"),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::param(
            "top_p",
            format!("top_p {top_p} is not in (0, 1]"),
        ));
    }
    let max_tokens = match s.max_completion_tokens.or(s.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::param(
                "max_tokens",
                format!("max_tokens must be at least 1, got {m}"),
            ));
        }
        Some(m) => m as usize,
        None => default_max.unwrap_or_else(|| engine.default_max_tokens(prompt.len()).max(1)),
    };
    let stops = s.stop.as_ref().map(|v| match v {
        super::types::OneOrMany::One(x) => vec![x.clone()],
        super::types::OneOrMany::Many(v) => v.clone(),
    });
    let stops = stops.unwrap_or_default();
    if stops.len() > 4 {
        return Err(ApiError::param("stop", "at most 4 stop sequences"));
    }
    Ok(Plan {
        request: GenerateRequest {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_p,
                seed: s.seed.map(|x| x as u64),
            },
            stop_token_ids: Vec::new(),
            ignore_eos: s.ignore_eos,
            cache_salt: s.cache_salt.clone(),
            ..GenerateRequest::default()
        },
        stops,
        stream: s.stream,
        include_usage: s.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

pub(super) async fn chat<B: Backend>(State(engine): State<B>, body: Bytes) -> Response {
    let result = async {
        let req: ChatRequest = parse(&body)?;
        check_model(&engine, &req.model)?;
        let messages = req.chat_messages()?;
        let text = engine.codec().apply_chat_template(&messages)?;
        let prompt = tokenize(&engine, text, false).await?;
        let plan = plan(&engine, &req.sampling, prompt, None)?;
        run(engine, plan, Kind::Chat).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn completions<B: Backend>(State(engine): State<B>, body: Bytes) -> Response {
    let result = async {
        let req: CompletionRequest = parse(&body)?;
        check_model(&engine, &req.model)?;
        let prompt = match req.prompt {
            Prompt::Tokens(t) => t,
            Prompt::Text(t) => tokenize(&engine, t, true).await?,
            Prompt::Texts(mut v) if v.len() == 1 => tokenize(&engine, v.remove(0), true).await?,
            Prompt::Texts(_) => {
                return Err(ApiError::param(
                    "prompt",
                    "one prompt per request is supported",
                ));
            }
        };
        // OpenAI's and vLLM's default for completions.
        let plan = plan(&engine, &req.sampling, prompt, Some(16))?;
        run(engine, plan, Kind::Completion).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Token ids of a prompt (after the model's BOS when `bos` and the model adds one).
/// A text that cannot fit the context is refused before it is tokenized, and
/// tokenizing runs on a blocking thread: a long prompt never stalls the threads that
/// serve other requests (`/health` included).
async fn tokenize<B: Backend>(engine: &B, text: String, bos: bool) -> Result<Vec<u32>, ApiError> {
    let codec = Arc::clone(engine.codec());
    let max_ctx = engine.max_context();
    let limit = max_ctx.saturating_mul(codec.max_token_bytes());
    if text.len() > limit {
        return Err(ApiError::invalid(format!(
            "this model's maximum context length is {max_ctx} tokens; a prompt of {} bytes \
             has more (one token stands for at most {} bytes)",
            text.len(),
            codec.max_token_bytes()
        )));
    }
    let c = engine.model_config();
    let bos = if bos && c.add_bos {
        c.bos_token_id
    } else {
        None
    };
    let ids = tokio::task::spawn_blocking(move || codec.encode(&text))
        .await
        .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
    Ok(bos.into_iter().chain(ids).collect())
}

async fn run<B: Backend>(engine: B, plan: Plan, kind: Kind) -> Result<Response, ApiError> {
    let prompt_tokens = plan.request.prompt.len();
    let routed = engine.generate(plan.request).await?;
    let mut response = run_routed(
        &engine,
        routed.events,
        plan.stops,
        plan.stream,
        plan.include_usage,
        prompt_tokens,
        kind,
    )
    .await?;
    if let Some(w) = routed.worker
        && let Ok(v) = axum::http::HeaderValue::from_str(&w)
    {
        response.headers_mut().insert(WORKER_HEADER, v);
    }
    Ok(response)
}

async fn run_routed<B: Backend>(
    engine: &B,
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::request::GenEvent>,
    stops: Vec<String>,
    stream_it: bool,
    include_usage: bool,
    prompt_tokens: usize,
    kind: Kind,
) -> Result<Response, ApiError> {
    let mut generation = TextGeneration::new(rx, engine.codec().clone(), stops, prompt_tokens);
    let id = request_id(match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    });
    let model = engine.model_id().to_string();
    let created = now_secs();
    if stream_it {
        return Ok(stream(generation, kind, id, model, created, include_usage));
    }
    let mut text = String::new();
    loop {
        match generation.next().await {
            Some(Piece::Text(t)) => text.push_str(&t),
            Some(Piece::Done {
                finish_reason,
                usage,
            }) => {
                let choice = match kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": { "role": "assistant", "content": text },
                        "logprobs": null,
                        "finish_reason": finish_reason,
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason,
                    }),
                };
                return Ok(json_response(json!({
                    "id": id,
                    "object": match kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
                    "created": created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage_json(&usage),
                })));
            }
            Some(Piece::Error(m)) => {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: "server_error",
                    code: None,
                    param: None,
                    message: m,
                });
            }
            None => {
                return Err(ApiError::from(crate::ServingError::Unavailable(
                    "no result".into(),
                )));
            }
        }
    }
}

fn stream(
    generation: TextGeneration,
    kind: Kind,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
) -> Response {
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = move |choices: Value, usage: Option<Value>| -> Bytes {
        let mut v = json!({
            "id": id, "object": object, "created": created, "model": model, "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let choice = move |text: Option<&str>, finish: Option<&str>, first: bool| -> Value {
        match kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
            Kind::Completion => {
                json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }])
            }
        }
    };
    struct St<C, H> {
        generation: TextGeneration,
        chunk: C,
        choice: H,
        first: bool,
        finished: bool,
    }
    let st = St {
        generation,
        chunk,
        choice,
        first: true,
        finished: false,
    };
    let body = futures::stream::unfold(st, move |mut st| async move {
        if st.finished {
            return None;
        }
        let out = match st.generation.next().await {
            Some(Piece::Text(t)) => {
                let first = std::mem::replace(&mut st.first, false);
                (st.chunk)((st.choice)(Some(&t), None, first), None)
            }
            Some(Piece::Done {
                finish_reason,
                usage,
            }) => {
                let first = std::mem::replace(&mut st.first, false);
                let mut b =
                    (st.chunk)((st.choice)(None, Some(finish_reason), first), None).to_vec();
                if include_usage {
                    b.extend_from_slice(&(st.chunk)(json!([]), Some(usage_json(&usage))));
                }
                b.extend_from_slice(b"data: [DONE]\n\n");
                st.finished = true;
                Bytes::from(b)
            }
            Some(Piece::Error(m)) => {
                st.finished = true;
                let e = ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    kind: "server_error",
                    code: None,
                    param: None,
                    message: m,
                };
                Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", e.body()))
            }
            None => return None,
        };
        Some((Ok::<_, Infallible>(out), st))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| ApiError::invalid(e.to_string()).into_response())
}

pub(super) async fn models<B: Backend>(State(engine): State<B>) -> Response {
    json_response(json!({
        "object": "list",
        "data": [{
            "id": engine.model_id(),
            "object": "model",
            "created": now_secs(),
            "owned_by": "tierkv",
            "max_model_len": engine.max_context(),
        }],
    }))
}

pub(super) async fn health() -> &'static str {
    "ok"
}

pub(super) async fn metrics<B: Backend>(State(engine): State<B>) -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        engine.render_metrics(),
    )
        .into_response()
}

pub(super) async fn not_found() -> Response {
    ApiError {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: Some("not_found"),
        param: None,
        message: "no such endpoint".into(),
    }
    .into_response()
}

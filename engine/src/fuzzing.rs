//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are. Not an API.

use crate::api::types::{ChatRequest, CompletionRequest};
use crate::pd::{PrefillReply, WireEvent, WireRequest, WorkerInfo, WorkerLoad};

/// An OpenAI request body (`/v1/chat/completions` or `/v1/completions`, by the first
/// byte), parsed and checked as the API does before it tokenizes anything.
pub fn openai_request_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if kind.is_multiple_of(2) {
        if let Ok(req) = serde_json::from_slice::<ChatRequest>(body) {
            let _ = req.chat_messages();
        }
    } else {
        let _ = serde_json::from_slice::<CompletionRequest>(body);
    }
}

/// What a cluster worker's internal API reads (`/internal/generate`,
/// `/internal/prefill`) and what a frontend or decode worker reads back from another
/// worker (event lines, prefill replies, info, load), by the first byte.
pub fn internal_api_body(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(w) = serde_json::from_slice::<WireRequest>(body) {
                let _ = w.into_request();
            }
        }
        1 => {
            for line in body.split(|&b| b == b'\n') {
                let _ = serde_json::from_slice::<WireEvent>(line);
            }
        }
        2 => {
            let _ = serde_json::from_slice::<PrefillReply>(body);
        }
        3 => {
            if let Ok(info) = serde_json::from_slice::<WorkerInfo>(body) {
                let _ = tierkv_kvstore::Namespace::new(info.model_id.clone(), info.layout);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<WorkerLoad>(body);
        }
    }
}

/// A GGUF file's metadata (what `tierkv engine --model x.gguf` reads first).
pub fn gguf_metadata(data: &[u8]) {
    let mut reader = std::io::Cursor::new(data);
    let _ = crate::model::parse_gguf_header(&mut reader, "fuzz.gguf");
}

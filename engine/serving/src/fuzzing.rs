//! Entry points for the fuzz targets (`fuzz/`) over what the serving layer decodes
//! from outside the process: each must never panic, whatever the bytes are, and says
//! whether the decoder accepted them. None needs the model code, so these targets build
//! (instrumented) without candle. Not an API.

use crate::pd::{PrefillReply, WireEvent, WireRequest, WorkerInfo, WorkerLoad};

/// An OpenAI request body (`/v1/chat/completions` or `/v1/completions`, by the first
/// byte), parsed and checked as the API does before it tokenizes anything.
pub fn openai_request_body(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else {
        return false;
    };
    crate::api::types::request_body_is_valid(body, kind.is_multiple_of(2))
}

/// What a cluster worker's internal API reads (`/internal/generate`,
/// `/internal/prefill`) and what a frontend or decode worker reads back from another
/// worker (event lines, prefill replies, info, load), by the first byte.
pub fn internal_api_body(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else {
        return false;
    };
    match kind % 5 {
        0 => serde_json::from_slice::<WireRequest>(body).is_ok_and(|w| {
            let _ = w.into_request();
            true
        }),
        1 => body
            .split(|&b| b == b'\n')
            .all(|line| serde_json::from_slice::<WireEvent>(line).is_ok()),
        2 => serde_json::from_slice::<PrefillReply>(body).is_ok(),
        3 => serde_json::from_slice::<WorkerInfo>(body).is_ok_and(|info| {
            tierkv_kvstore::Namespace::new(info.model_id.clone(), info.layout).is_ok()
        }),
        _ => serde_json::from_slice::<WorkerLoad>(body).is_ok(),
    }
}

/// A GGUF file's metadata (what `tierkv engine --model x.gguf` reads first); accepted
/// when the GGUF container decodes (a model may still be refused for what it holds).
pub fn gguf_metadata(data: &[u8]) -> bool {
    let mut reader = std::io::Cursor::new(data);
    let read = crate::text::GgufMetadata::read(&mut reader, "fuzz.gguf")
        .and_then(|meta| crate::text::model_config_from_gguf(&meta));
    match read {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("is not a GGUF file"),
    }
}

/// Lines of a trace or request log (`tierkv-bench replay/tune --trace`), parsed and
/// checked; what parses prints back to lines that parse to the same records.
pub fn trace_lines(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(records) = crate::request_log::parse_trace(text, "fuzz.jsonl") else {
        return false;
    };
    let mut again = String::new();
    for r in &records {
        if let Ok(line) = serde_json::to_string(r) {
            again.push_str(&line);
            again.push('\n');
        }
    }
    let back = crate::request_log::parse_trace(&again, "again.jsonl");
    assert!(back.as_ref().is_ok_and(|b| *b == records), "{again}");
    true
}

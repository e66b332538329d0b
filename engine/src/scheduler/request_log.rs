//! The request log (`tierkv engine --request-log FILE`): one JSON line per request —
//! arrival time, prompt and output lengths, and the prompt's block hashes at the
//! engine's block size — the trace `tierkv-bench replay` and `tune` read to size the
//! tiers from a deployment's own traffic. Prompts' tokens are never written.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tierkv_kvstore::BlockHash;

use crate::{EngineError, Result};

pub struct RequestLog {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
    start: Instant,
}

impl RequestLog {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path) -> Result<RequestLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| EngineError::Config(format!("request log {}: {e}", path.display())))?;
        Ok(RequestLog {
            file: Mutex::new(std::io::BufWriter::new(file)),
            start: Instant::now(),
        })
    }

    /// One request; a failed write is logged, never fails the request.
    pub fn record(
        &self,
        input_length: usize,
        output_length: usize,
        block_tokens: u32,
        hashes: &[BlockHash],
    ) {
        let line = serde_json::json!({
            "timestamp": self.start.elapsed().as_millis() as u64,
            "input_length": input_length,
            "output_length": output_length,
            "block_tokens": block_tokens,
            "block_hashes": hashes.iter().map(|h| format!("{:032x}", h.0)).collect::<Vec<_>>(),
        });
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = serde_json::to_writer(&mut *f, &line)
            .map_err(std::io::Error::other)
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "request log: write failed");
        }
    }
}

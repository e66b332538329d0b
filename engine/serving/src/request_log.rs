//! The request log (`tierkv engine --request-log FILE`): one JSON line per request —
//! arrival time, prompt and output lengths, and the prompt's block hashes at the
//! engine's block size — the trace `tierkv-bench replay` and `tune` read to size the
//! tiers from a deployment's own traffic. Prompts' tokens are never written.
//!
//! The same lines, [`TraceRecord`], also carry the public Mooncake trace format
//! (`hash_ids`: one id per 512-token block, equal ids for equal prefix content);
//! [`parse_trace`] reads both.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tierkv_kvstore::BlockHash;

use crate::{Result, ServingError};

/// Tokens per hash id in the Mooncake format.
pub const TRACE_BLOCK_TOKENS: u64 = 512;

/// One request of a trace: a line of a request log or of a Mooncake trace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRecord {
    /// Arrival time in milliseconds from the start of the trace.
    pub timestamp: u64,
    /// Prompt tokens.
    pub input_length: u64,
    /// Generated tokens.
    pub output_length: u64,
    /// Mooncake format: one id per 512-token block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hash_ids: Vec<u64>,
    /// Request-log format: the block size of `block_hashes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_tokens: Option<u64>,
    /// Request-log format: the chain hash of every full block of the prompt.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_hashes")]
    pub block_hashes: Vec<u128>,
}

/// `block_hashes` as 32-digit hex strings.
mod hex_hashes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u128], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|h| format!("{h:032x}")))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u128>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|h| {
                u128::from_str_radix(h, 16)
                    .map_err(|_| serde::de::Error::custom(format!("block hash `{h}` is not hex")))
            })
            .collect()
    }
}

impl TraceRecord {
    /// Why the record is inconsistent (counts that do not match its lengths), if it is.
    pub fn check(&self) -> Result<(), String> {
        if let Some(bt) = self.block_tokens {
            if bt == 0 || !self.hash_ids.is_empty() {
                return Err("a request-log record has block_tokens > 0 and no hash_ids".into());
            }
            let full = self.input_length / bt;
            if self.block_hashes.len() as u64 != full {
                return Err(format!(
                    "input_length {} has {full} full blocks of {bt} tokens, but {} block_hashes",
                    self.input_length,
                    self.block_hashes.len()
                ));
            }
            return Ok(());
        }
        if !self.block_hashes.is_empty() {
            return Err("block_hashes without block_tokens".into());
        }
        let needed = self.input_length.div_ceil(TRACE_BLOCK_TOKENS);
        if self.hash_ids.len() as u64 != needed {
            return Err(format!(
                "input_length {} needs {needed} hash_ids of {TRACE_BLOCK_TOKENS} tokens, found {}",
                self.input_length,
                self.hash_ids.len()
            ));
        }
        Ok(())
    }
}

/// Parses a trace (`origin` names it in errors); a malformed line is an error naming
/// the origin and the line.
pub fn parse_trace(text: &str, origin: &str) -> Result<Vec<TraceRecord>> {
    let bad = |line: usize, why: String| ServingError::Trace(format!("{origin}:{line}: {why}"));
    let mut out = Vec::new();
    let mut last_ts = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec: TraceRecord = serde_json::from_str(line)
            .map_err(|e| bad(i + 1, format!("not a trace record: {e}")))?;
        rec.check().map_err(|why| bad(i + 1, why))?;
        if rec.timestamp < last_ts {
            return Err(bad(
                i + 1,
                format!(
                    "timestamp {} goes back in time (previous {last_ts})",
                    rec.timestamp
                ),
            ));
        }
        last_ts = rec.timestamp;
        out.push(rec);
    }
    if out.is_empty() {
        return Err(ServingError::Trace(format!(
            "{origin}: the trace has no records"
        )));
    }
    Ok(out)
}

/// A request log being written: one [`TraceRecord`] per admitted request, a JSON
/// line each (the format `tierkv-bench tune` reads).
#[derive(Debug)]
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
            .map_err(|e| ServingError::Config(format!("request log {}: {e}", path.display())))?;
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
        let line = TraceRecord {
            timestamp: self.start.elapsed().as_millis() as u64,
            input_length: input_length as u64,
            output_length: output_length as u64,
            hash_ids: Vec::new(),
            block_tokens: Some(u64::from(block_tokens)),
            block_hashes: hashes.iter().map(|h| h.0).collect(),
        };
        let mut f = tierkv_kvstore::sync::lock(&self.file);
        let written = serde_json::to_writer(&mut *f, &line)
            .map_err(std::io::Error::other)
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.flush());
        if let Err(e) = written {
            tracing::warn!(error = %e, "request log: write failed");
        }
    }
}

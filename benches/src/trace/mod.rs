//! KV-cache workload traces in the public Mooncake format: one JSON object per line with
//! `timestamp` (ms), `input_length`, `output_length` and `hash_ids` — each id names one
//! 512-token block of the prompt, and equal ids mean equal prefix content.

mod curve;
pub mod generate;
pub mod replay;
mod sim_tier;
pub mod tune;

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Tokens per hash id in the Mooncake format.
pub const TRACE_BLOCK_TOKENS: u64 = 512;

/// One request of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRecord {
    /// Arrival time in milliseconds from the start of the trace.
    pub timestamp: u64,
    pub input_length: u64,
    pub output_length: u64,
    pub hash_ids: Vec<u64>,
}

impl TraceRecord {
    fn check(&self) -> Result<(), String> {
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

/// Parses a trace; a malformed line is an error naming the file and the line.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<TraceRecord>> {
    let mut out = Vec::new();
    let mut last_ts = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let rec: TraceRecord = serde_json::from_str(line)
            .with_context(|| format!("{origin}:{}: not a trace record", i + 1))?;
        if let Err(why) = rec.check() {
            bail!("{origin}:{}: {why}", i + 1);
        }
        if rec.timestamp < last_ts {
            bail!(
                "{origin}:{}: timestamp {} goes back in time (previous {last_ts})",
                i + 1,
                rec.timestamp
            );
        }
        last_ts = rec.timestamp;
        out.push(rec);
    }
    if out.is_empty() {
        bail!("{origin}: the trace has no records");
    }
    Ok(out)
}

pub fn load(path: &Path) -> anyhow::Result<Vec<TraceRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// The block hashes of a request's prompt at `block_tokens` tokens per block: a chain
/// over the trace's 512-token ids, so equal id prefixes give equal hash prefixes. Only
/// full blocks are hashed.
pub fn block_hashes(rec: &TraceRecord, block_tokens: u64) -> Vec<u128> {
    let full = rec.input_length / block_tokens;
    let mut prev: u128 = 0x7472_6163_655f_7265_706c_6179; // "trace_replay"
    let mut out = Vec::with_capacity(full as usize);
    for k in 0..full {
        let start = k * block_tokens;
        let end = start + block_tokens; // exclusive
        let first = (start / TRACE_BLOCK_TOKENS) as usize;
        let last = ((end - 1) / TRACE_BLOCK_TOKENS) as usize;
        let mut bytes = Vec::with_capacity(16 + 8 * (last - first + 2));
        bytes.extend_from_slice(&prev.to_le_bytes());
        bytes.extend_from_slice(&(start % TRACE_BLOCK_TOKENS).to_le_bytes());
        for id in &rec.hash_ids[first..=last] {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
        prev = xxhash_rust::xxh3::xxh3_128(&bytes);
        out.push(prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(len: u64, ids: &[u64]) -> TraceRecord {
        TraceRecord {
            timestamp: 0,
            input_length: len,
            output_length: 10,
            hash_ids: ids.to_vec(),
        }
    }

    #[test]
    fn equal_id_prefixes_give_equal_block_prefixes_at_any_block_size() {
        let a = rec(1536, &[1, 2, 3]);
        let b = rec(1300, &[1, 2, 9]);
        for bs in [16u64, 128, 512, 1024] {
            let (ha, hb) = (block_hashes(&a, bs), block_hashes(&b, bs));
            assert_eq!(ha.len() as u64, 1536 / bs);
            assert_eq!(hb.len() as u64, 1300 / bs);
            let shared = (1024 / bs) as usize; // two ids in common
            assert_eq!(ha[..shared], hb[..shared], "block size {bs}");
            if hb.len() > shared {
                assert_ne!(ha[shared], hb[shared]);
            }
        }
    }

    #[test]
    fn malformed_lines_are_named() {
        let good =
            r#"{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}"#;
        assert_eq!(parse(good, "t").unwrap().len(), 1);
        let err = parse(&format!("{good}\n{{\"timestamp\": 1}}"), "t.jsonl").unwrap_err();
        assert!(format!("{err:#}").contains("t.jsonl:2"), "{err:#}");
        let err = parse(
            r#"{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1]}"#,
            "t",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("needs 2 hash_ids"), "{err:#}");
        // Equal timestamps are fine.
        assert_eq!(parse(&format!("{good}\n{good}"), "t").unwrap().len(), 2);
        let back = format!(
            "{}\n{good}",
            good.replace("\"timestamp\": 0", "\"timestamp\": 5")
        );
        assert!(format!("{:#}", parse(&back, "t").unwrap_err()).contains("back in time"));
        assert!(parse("", "empty").is_err());
    }
}

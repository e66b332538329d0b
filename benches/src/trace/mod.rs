//! KV-cache workload traces, one JSON object per line with `timestamp` (ms),
//! `input_length` and `output_length`, and either
//! - `hash_ids` (the public Mooncake format): each id names one 512-token block of the
//!   prompt, and equal ids mean equal prefix content; or
//! - `block_tokens` and `block_hashes` (a tierkv request log, `tierkv engine
//!   --request-log`, or TierkvConnector's `request_log`): the prompt's chain hashes
//!   (32 hex digits) at that block size, replayable at any multiple of it.

mod curve;
pub(crate) mod generate;
mod policy_sim;
pub(crate) mod replay;
mod sim_tier;
pub(crate) mod tune;

use std::path::Path;

use anyhow::{Context, bail};

pub(crate) use tierkv_engine::scheduler::{TRACE_BLOCK_TOKENS, TraceRecord};

/// Parses a trace; a malformed line is an error naming the file and the line.
pub(crate) fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<TraceRecord>> {
    Ok(tierkv_engine::scheduler::parse_trace(text, origin)?)
}

/// Checks that `block_tokens` can be replayed from `trace`: any size from Mooncake
/// ids, a multiple of the logged size from a request log.
pub(crate) fn check_block_tokens(trace: &[TraceRecord], block_tokens: u64) -> anyhow::Result<()> {
    if let Some(logged) = trace.iter().find_map(|r| r.block_tokens)
        && (block_tokens == 0 || !block_tokens.is_multiple_of(logged))
    {
        bail!(
            "this request log has {logged}-token blocks: --block-tokens {block_tokens} is not a multiple of it"
        );
    }
    Ok(())
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Vec<TraceRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading trace {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// The block hashes of a request's prompt at `block_tokens` tokens per block: a chain
/// over the trace's 512-token ids, so equal id prefixes give equal hash prefixes. Only
/// full blocks are hashed.
pub(crate) fn block_hashes(rec: &TraceRecord, block_tokens: u64) -> Vec<u128> {
    if let Some(logged) = rec.block_tokens {
        // A block of `block_tokens` is named by the chain hash of its last logged
        // sub-block (a chain hash names the whole prefix). Callers check the multiple.
        let step = (block_tokens / logged.max(1)).max(1) as usize;
        return rec
            .block_hashes
            .iter()
            .skip(step - 1)
            .step_by(step)
            .copied()
            .collect();
    }
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

/// A trace whose requests are the given chains of 512-token hash ids (for tests).
#[cfg(test)]
pub(crate) fn id_trace(requests: &[&[u64]]) -> Vec<TraceRecord> {
    requests
        .iter()
        .enumerate()
        .map(|(i, ids)| TraceRecord {
            timestamp: i as u64,
            input_length: ids.len() as u64 * 512,
            output_length: 1,
            hash_ids: ids.to_vec(),
            ..TraceRecord::default()
        })
        .collect()
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
            ..TraceRecord::default()
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

    #[test]
    fn request_logs_replay_at_multiples_of_their_block_size() {
        let text = concat!(
            r#"{"timestamp":0,"input_length":40,"output_length":4,"block_tokens":16,"block_hashes":["0000000000000000000000000000000a","0000000000000000000000000000000b"]}"#,
            "\n",
            r#"{"timestamp":5,"input_length":70,"output_length":4,"block_tokens":16,"block_hashes":["0000000000000000000000000000000a","0000000000000000000000000000000b","0000000000000000000000000000000c","0000000000000000000000000000000d"]}"#,
            "\n",
        );
        let t = parse(text, "log.jsonl").unwrap();
        assert_eq!(block_hashes(&t[1], 16), [0xa, 0xb, 0xc, 0xd]);
        assert_eq!(
            block_hashes(&t[1], 32),
            [0xb, 0xd],
            "the last sub-block names a block"
        );
        assert_eq!(block_hashes(&t[0], 32), [0xb]);
        assert!(check_block_tokens(&t, 48).is_ok());
        let err = check_block_tokens(&t, 24).unwrap_err().to_string();
        assert!(err.contains("multiple"), "{err}");
        // Wrong counts and bad hex name the line.
        let short = r#"{"timestamp":0,"input_length":40,"output_length":4,"block_tokens":16,"block_hashes":["0a"]}"#;
        let err = format!("{:#}", parse(short, "log.jsonl").unwrap_err());
        assert!(
            err.contains("log.jsonl:1") && err.contains("2 full blocks"),
            "{err}"
        );
        let bad = r#"{"timestamp":0,"input_length":16,"output_length":4,"block_tokens":16,"block_hashes":["xyz"]}"#;
        let err = format!("{:#}", parse(bad, "log.jsonl").unwrap_err());
        assert!(
            err.contains("log.jsonl:1") && err.contains("not hex"),
            "{err}"
        );
        // Round trip.
        let again = parse(&(serde_json::to_string(&t[1]).unwrap() + "\n"), "x").unwrap();
        assert_eq!(again[0], t[1]);
    }
}

//! `tierkv-bench gen-trace`: a synthetic workload in the Mooncake trace format —
//! multi-turn chat sessions over shared system prompts, and long-document QA — with
//! zipf-distributed reuse and Poisson arrivals.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, ensure};

use super::{TRACE_BLOCK_TOKENS, TraceRecord};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct GenArgs {
    /// Where to write the trace (JSON lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Requests to generate.
    #[arg(long, default_value_t = 500)]
    pub requests: usize,
    /// Chat sessions open at once.
    #[arg(long, default_value_t = 16)]
    pub users: usize,
    /// Turns per chat session.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// Distinct system prompts, and their length in tokens.
    #[arg(long, default_value_t = 4)]
    pub system_prompts: usize,
    #[arg(long, default_value_t = 2048)]
    pub system_tokens: u64,
    /// Tokens of a user message (each turn), and of an answer.
    #[arg(long, default_value_t = 384)]
    pub user_tokens: u64,
    #[arg(long, default_value_t = 256)]
    pub output_tokens: u64,
    /// Distinct long documents, their length, and the share of requests that are
    /// questions about one of them.
    #[arg(long, default_value_t = 8)]
    pub documents: usize,
    #[arg(long, default_value_t = 8192)]
    pub document_tokens: u64,
    #[arg(long, default_value_t = 0.25)]
    pub document_share: f64,
    /// Zipf exponent of system-prompt and document popularity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Mean arrival rate, requests per second (Poisson).
    #[arg(long, default_value_t = 4.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// xorshift64* — small, fast, reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Samples `0..n` with probability proportional to `1 / (i + 1)^s`.
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, s: f64) -> Zipf {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (0..n.max(1))
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect();
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }
    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A prompt as segments of distinct content: `(segment id, tokens)`.
type Prompt = Vec<(u64, u64)>;

/// The content of one trace block: (previous block's id, pieces of segments in it as
/// `(segment, from, to)`).
type BlockContent = (u64, Vec<(u64, u64, u64)>);

/// Assigns trace hash ids: equal (previous id, block content) -> equal id.
#[derive(Default)]
struct Interner {
    ids: HashMap<BlockContent, u64>,
}

impl Interner {
    fn hash_ids(&mut self, prompt: &Prompt) -> (u64, Vec<u64>) {
        let total: u64 = prompt.iter().map(|s| s.1).sum();
        let mut out = Vec::new();
        let mut prev = 0u64;
        let mut block_start = 0;
        while block_start < total {
            let block_end = (block_start + TRACE_BLOCK_TOKENS).min(total);
            // The pieces of segments inside this block: (segment, from, to).
            let mut pieces = Vec::new();
            let mut seg_start = 0;
            for &(seg, len) in prompt {
                let (a, b) = (seg_start.max(block_start), (seg_start + len).min(block_end));
                if a < b {
                    pieces.push((seg, a - seg_start, b - seg_start));
                }
                seg_start += len;
            }
            let next = self.ids.len() as u64 + 1;
            let id = *self.ids.entry((prev, pieces)).or_insert(next);
            out.push(id);
            prev = id;
            block_start = block_end;
        }
        (total, out)
    }
}

struct Session {
    prompt: Prompt,
    turns_left: usize,
}

/// Generates the requests described by `args`.
pub(crate) fn generate(args: &GenArgs) -> anyhow::Result<Vec<TraceRecord>> {
    ensure!(
        args.requests > 0 && args.users > 0 && args.turns > 0,
        "requests, users and turns must be > 0"
    );
    ensure!(args.system_prompts > 0, "system_prompts must be > 0");
    ensure!(
        (0.0..=1.0).contains(&args.document_share),
        "document_share must be in 0..=1"
    );
    ensure!(args.rate > 0.0, "rate must be > 0");
    let mut rng = Rng::new(args.seed);
    let sys_pick = Zipf::new(args.system_prompts, args.zipf);
    let doc_pick = Zipf::new(args.documents.max(1), args.zipf);
    let mut next_segment = 1_000_000u64;
    let mut fresh = |rng: &mut Rng, tokens: u64| {
        next_segment += 1 + rng.next_u64() % 2; // distinct content
        (next_segment, tokens)
    };
    let mut interner = Interner::default();
    let mut sessions: Vec<Session> = Vec::new();
    let mut out = Vec::with_capacity(args.requests);
    let mut t_ms = 0f64;
    for _ in 0..args.requests {
        t_ms += -(1.0 - rng.unit()).ln() / args.rate * 1000.0;
        let prompt = if args.documents > 0 && rng.unit() < args.document_share {
            // Long-document QA: the document, then a fresh question.
            let doc = doc_pick.sample(&mut rng) as u64;
            vec![(doc, args.document_tokens), fresh(&mut rng, 128)]
        } else {
            if sessions.len() < args.users {
                let sys = 1000 + sys_pick.sample(&mut rng) as u64;
                sessions.push(Session {
                    prompt: vec![(sys, args.system_tokens)],
                    turns_left: args.turns,
                });
            }
            let i = (rng.next_u64() % sessions.len() as u64) as usize;
            let s = &mut sessions[i];
            s.prompt.push(fresh(&mut rng, args.user_tokens));
            let prompt = s.prompt.clone();
            // The answer becomes part of the next turn's prefix.
            s.prompt.push(fresh(&mut rng, args.output_tokens));
            s.turns_left -= 1;
            if s.turns_left == 0 {
                sessions.swap_remove(i);
            }
            prompt
        };
        let (input_length, hash_ids) = interner.hash_ids(&prompt);
        out.push(TraceRecord {
            timestamp: t_ms as u64,
            input_length,
            output_length: args.output_tokens,
            hash_ids,
            ..TraceRecord::default()
        });
    }
    Ok(out)
}

pub(crate) fn run(args: GenArgs) -> anyhow::Result<()> {
    let records = generate(&args)?;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("creating {}", args.out.display()))?,
    );
    for r in &records {
        serde_json::to_writer(&mut f, r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    let blocks: usize = records.iter().map(|r| r.hash_ids.len()).sum();
    let distinct: std::collections::HashSet<u64> = records
        .iter()
        .flat_map(|r| r.hash_ids.iter().copied())
        .collect();
    println!(
        "wrote {} requests ({} blocks of {TRACE_BLOCK_TOKENS} tokens, {} distinct) over {:.1} s to {}",
        records.len(),
        blocks,
        distinct.len(),
        records.last().map_or(0, |r| r.timestamp) as f64 / 1000.0,
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GenArgs {
        GenArgs {
            out: PathBuf::from("unused"),
            requests: 200,
            users: 4,
            turns: 3,
            system_prompts: 2,
            system_tokens: 1024,
            user_tokens: 300,
            output_tokens: 200,
            documents: 2,
            document_tokens: 2048,
            document_share: 0.3,
            zipf: 1.0,
            rate: 10.0,
            seed: 7,
        }
    }

    #[test]
    fn traces_are_reproducible_valid_and_share_prefixes() {
        let a = generate(&args()).unwrap();
        assert_eq!(a, generate(&args()).unwrap(), "same seed, same trace");
        assert_eq!(a.len(), 200);
        for r in &a {
            r.check().unwrap();
        }
        assert!(a.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
        // Shared system prompts and documents: many requests start with the same id.
        let mut firsts = std::collections::HashMap::new();
        for r in &a {
            *firsts.entry(r.hash_ids[0]).or_insert(0) += 1;
        }
        assert!(
            firsts.len() <= 4,
            "2 system prompts + 2 documents, got {}",
            firsts.len()
        );
        // A later turn of a session extends an earlier prompt.
        let extends = a.iter().any(|r| {
            a.iter().any(|o| {
                o.hash_ids.len() > r.hash_ids.len() + 1
                    && o.hash_ids.starts_with(&r.hash_ids[..r.hash_ids.len() - 1])
            })
        });
        assert!(extends);
    }

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(10, 1.2);
        let mut rng = Rng::new(1);
        let mut counts = [0usize; 10];
        for _ in 0..10_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[9], "{counts:?}");
    }
}

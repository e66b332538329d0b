//! A request inside the worker.

use std::time::Instant;

use tierkv_kvstore::{BlockHash, Namespace};
use tokio::sync::mpsc::UnboundedSender;

use super::fetch::Fetched;
use super::sampler::Sampler;
use super::{GenEvent, GenerateRequest, Usage};

/// A request as it reaches the worker, with its prefix already fetched.
pub(crate) struct NewSequence {
    pub req: GenerateRequest,
    pub ns: Namespace,
    /// Hashes of the prompt's full blocks.
    pub hashes: Vec<BlockHash>,
    /// Index of the first block in `fetched` (blocks before it were in the pool).
    pub fetched_from: usize,
    pub fetched: Fetched,
    /// The first generated token, when a prefill worker computed the prompt.
    pub first_token: Option<u32>,
    pub events: UnboundedSender<GenEvent>,
    pub arrived: Instant,
}

pub(super) struct Sequence {
    pub new: Option<Box<NewSequence>>,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose KV is in `blocks`.
    pub num_computed: usize,
    pub blocks: Vec<u32>,
    /// Chain hashes of the full blocks registered so far.
    pub hashes: Vec<BlockHash>,
    pub ns: Namespace,
    pub max_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub sampler: Sampler,
    pub events: UnboundedSender<GenEvent>,
    pub arrived: Instant,
    pub last_token_at: Option<Instant>,
    pub usage: Usage,
    /// See [`super::GenerateRequest::await_publish`].
    pub await_publish: bool,
}

impl Sequence {
    pub(super) fn new(new: Box<NewSequence>) -> Sequence {
        let req = &new.req;
        let mut tokens = req.prompt.clone();
        let mut sampler = Sampler::new(req.sampling);
        if let Some(t) = new.first_token {
            // The prefill worker sampled it with the same seed: continue its sequence.
            tokens.push(t);
            sampler.skip_draws(1);
        }
        Sequence {
            tokens,
            prompt_len: req.prompt.len(),
            num_computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            ns: new.ns.clone(),
            max_tokens: req.max_tokens,
            stop_ids: req.stop_token_ids.clone(),
            ignore_eos: req.ignore_eos,
            sampler,
            await_publish: req.await_publish,
            events: new.events.clone(),
            arrived: new.arrived,
            last_token_at: None,
            usage: Usage {
                prompt_tokens: req.prompt.len(),
                ..Usage::default()
            },
            new: Some(new),
        }
    }

    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to compute before the next token can be sampled.
    pub(super) fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    pub(super) fn add_cached(&mut self, source: &str, tokens: usize) {
        if tokens == 0 {
            return;
        }
        self.usage.cached_tokens += tokens;
        match self
            .usage
            .cached_by_source
            .iter_mut()
            .find(|(s, _)| s == source)
        {
            Some((_, n)) => *n += tokens,
            None => self
                .usage
                .cached_by_source
                .push((source.to_string(), tokens)),
        }
    }
}

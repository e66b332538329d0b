//! The worker thread: admission with prefix reuse, step planning (decode first, then
//! prefill chunks), preemption when the pool runs out, sampling, and publishing of
//! completed blocks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Instant;

use tierkv_kvstore::hash_next;
use tokio::sync::mpsc::error::TrySendError;

use super::fetch::Publication;
use super::sequence::Sequence;
use super::{Command, EngineConfig, FinishReason, GenEvent};
use crate::kv::KvPool;
use crate::metrics::EngineMetrics;
use crate::model::{Model, SeqStep};

pub(super) struct Worker {
    model: Model,
    pool: KvPool,
    config: EngineConfig,
    publish: tokio::sync::mpsc::Sender<Publication>,
    metrics: Arc<EngineMetrics>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    eos: Vec<u32>,
    max_context: usize,
    block: usize,
}

enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The client went away.
    Cancelled,
}

impl Worker {
    pub(super) fn new(
        model: Model,
        pool: KvPool,
        config: EngineConfig,
        publish: tokio::sync::mpsc::Sender<Publication>,
        metrics: Arc<EngineMetrics>,
    ) -> Worker {
        let eos = model.config().eos_token_ids.clone();
        let max_context = config.max_context(model.config());
        let block = pool.layout().block_size as usize;
        Worker {
            model,
            pool,
            config,
            publish,
            metrics,
            waiting: VecDeque::new(),
            running: Vec::new(),
            eos,
            max_context,
            block,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Command>) {
        let mut connected = true;
        loop {
            if self.waiting.is_empty() && self.running.is_empty() {
                if !connected {
                    return;
                }
                match rx.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            while connected {
                match rx.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => connected = false,
                }
            }
            self.admit();
            self.step();
            self.update_gauges();
        }
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Add(new) => {
                self.metrics.requests.inc();
                self.waiting.push_back(Sequence::new(new));
            }
            Command::ResetPrefixCache(reply) => {
                let _ = reply.send(self.pool.clear_cache());
                self.update_gauges();
            }
            Command::Usage(reply) => {
                let _ = reply.send(self.pool.usage());
            }
        }
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block)
    }

    /// Moves waiting requests to running while there is room, reusing their prefix.
    fn admit(&mut self) {
        while self.running.len() < self.config.max_running {
            let Some(mut seq) = self.waiting.pop_front() else {
                return;
            };
            if seq.events.is_closed() {
                self.release(&mut seq);
                continue;
            }
            if let Some(reason) = self.attach_prefix(&mut seq) {
                // A prefill worker's first token already ended it.
                self.finish(seq, reason);
                continue;
            }
            let need = self
                .blocks_for(seq.tokens.len() + 1)
                .saturating_sub(seq.blocks.len());
            if need > self.pool.available() && !self.running.is_empty() {
                // Not enough room now: keep its reused blocks cached and retry later.
                self.release(&mut seq);
                self.waiting.push_front(seq);
                return;
            }
            self.running.push(seq);
        }
    }

    /// Takes the longest prefix the pool holds, then the blocks fetched from the store,
    /// and leaves at least one token to compute so that there are logits to sample.
    /// Returns why the request is already finished, when a remote prefill's first token
    /// ends it.
    fn attach_prefix(&mut self, seq: &mut Sequence) -> Option<FinishReason> {
        let b = self.block;
        let mut sources: Vec<String> = Vec::new();
        let first_time = seq.new.is_some();
        if let Some(new) = seq.new.take() {
            for &h in &new.hashes {
                match self.pool.acquire(h) {
                    Some(id) => {
                        seq.blocks.push(id);
                        sources.push("engine".into());
                    }
                    None => break,
                }
            }
            let mut i = seq.blocks.len();
            if i >= new.fetched_from {
                for (j, (data, src)) in new.fetched.blocks.iter().enumerate() {
                    let idx = new.fetched_from + j;
                    if idx < i {
                        continue;
                    }
                    let Some(id) = self.pool.allocate() else {
                        break;
                    };
                    if let Err(e) = self.pool.import(id, data) {
                        tracing::warn!(error = %e, "a fetched block does not fit the layout; computing it");
                        self.pool.release(id);
                        break;
                    }
                    self.pool.register(id, new.hashes[idx]);
                    seq.blocks.push(id);
                    sources.push(src.label());
                    i += 1;
                }
            }
            seq.hashes = new.hashes[..i].to_vec();
        } else {
            // Resumed after preemption: its own blocks, if still cached.
            let mut kept = 0;
            for &h in &seq.hashes {
                match self.pool.acquire(h) {
                    Some(id) => seq.blocks.push(id),
                    None => break,
                }
                kept += 1;
            }
            seq.hashes.truncate(kept);
        }
        let mut computed = seq.blocks.len() * b;
        if computed >= seq.tokens.len() && computed > 0 {
            // Everything is cached: compute the last token again into a private copy
            // of the last block (other sequences may share the original).
            let last = seq.blocks.pop();
            seq.hashes.pop();
            if let Some(last) = last {
                match self.pool.allocate() {
                    Some(id) => {
                        self.pool.copy_block(last, id);
                        seq.blocks.push(id);
                        computed = seq.tokens.len() - 1;
                    }
                    None => computed = seq.blocks.len() * b,
                }
                self.pool.release(last);
            }
        }
        seq.num_computed = computed;
        if seq.await_publish {
            // A prefill worker's answer promises every full block of the prompt is in
            // its store, including those it reused.
            for k in 0..seq.hashes.len() {
                self.publish(seq, k);
            }
        }
        if first_time {
            for (k, src) in sources.iter().enumerate() {
                seq.add_cached(src, computed.saturating_sub(k * b).min(b));
            }
            for (src, n) in &seq.usage.cached_by_source {
                self.metrics
                    .prompt_tokens
                    .with_label_values(&[src])
                    .inc_by(*n as u64);
            }
            self.metrics
                .prompt_tokens
                .with_label_values(&["computed"])
                .inc_by((seq.prompt_len - seq.usage.cached_tokens) as u64);
            let _ = seq.events.send(GenEvent::Admitted(seq.usage.clone()));
            if seq.tokens.len() > seq.prompt_len {
                // The first token came from a prefill worker: stream it now.
                let now = Instant::now();
                self.metrics
                    .ttft_seconds
                    .observe(now.duration_since(seq.arrived).as_secs_f64());
                seq.last_token_at = Some(now);
                self.metrics.generated_tokens.inc();
                let first = seq.tokens[seq.prompt_len];
                let _ = seq.events.send(GenEvent::Token(first));
                return self.finished(seq, first);
            }
        }
        None
    }

    /// Whether `token`, just generated, ends `s`.
    fn finished(&self, s: &Sequence, token: u32) -> Option<FinishReason> {
        if (!s.ignore_eos && self.eos.contains(&token)) || s.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if s.generated() >= s.max_tokens || s.tokens.len() >= self.max_context {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    fn finish(&mut self, mut s: Sequence, reason: FinishReason) {
        s.usage.completion_tokens = s.generated();
        let _ = s.events.send(GenEvent::Finished {
            reason,
            usage: s.usage.clone(),
        });
        self.metrics
            .finished
            .with_label_values(&[reason.as_str()])
            .inc();
        self.release(&mut s);
    }

    fn release(&mut self, seq: &mut Sequence) {
        for id in seq.blocks.drain(..) {
            self.pool.release(id);
        }
    }

    /// Tokens each running sequence computes this step: decodes first, then prefill
    /// chunks within the token budget.
    fn plan(&self) -> Vec<usize> {
        let budget = self.config.max_batch_tokens;
        let mut plan = vec![0; self.running.len()];
        let mut used = 0;
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() == 1 {
                plan[i] = 1;
                used += 1;
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() > 1 && used < budget {
                plan[i] = s.pending().min(budget - used);
                used += plan[i];
            }
        }
        plan
    }

    fn step(&mut self) {
        // Cancelled requests leave before they cost a step.
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].events.is_closed() {
                let mut s = self.running.remove(i);
                self.release(&mut s);
                self.metrics.cancelled.inc();
            } else {
                i += 1;
            }
        }
        let plan = loop {
            let plan = self.plan();
            let need: usize = plan
                .iter()
                .zip(&self.running)
                .map(|(&n, s)| {
                    self.blocks_for(s.num_computed + n)
                        .saturating_sub(s.blocks.len())
                })
                .sum();
            if need <= self.pool.available() {
                break plan;
            }
            // Out of KV blocks: preempt the most recently admitted request. Its full
            // blocks stay cached, so resuming it recomputes little.
            match self.running.pop() {
                Some(mut victim) if !self.running.is_empty() => {
                    self.release(&mut victim);
                    victim.num_computed = 0;
                    self.metrics.preemptions.inc();
                    self.waiting.push_front(victim);
                }
                Some(mut only) => {
                    self.release(&mut only);
                    let _ = only.events.send(GenEvent::Error(
                        "the KV pool cannot hold this request".into(),
                    ));
                    return;
                }
                None => return,
            }
        };
        for (s, &n) in self.running.iter_mut().zip(&plan) {
            while s.blocks.len() < (s.num_computed + n).div_ceil(self.block) {
                match self.pool.allocate() {
                    Some(id) => s.blocks.push(id),
                    None => break, // cannot happen: checked above
                }
            }
        }
        let steps: Vec<SeqStep<'_>> = self
            .running
            .iter()
            .zip(&plan)
            .filter(|(_, n)| **n > 0)
            .map(|(s, &n)| SeqStep {
                tokens: &s.tokens[s.num_computed..s.num_computed + n],
                start_pos: s.num_computed,
                blocks: &s.blocks,
                want_logits: s.num_computed + n == s.tokens.len(),
            })
            .collect();
        if steps.is_empty() {
            return;
        }
        let started = Instant::now();
        let computed: usize = plan.iter().sum();
        let result = self.model.forward(&steps, &mut self.pool);
        drop(steps);
        self.metrics
            .step_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.step_tokens.observe(computed as f64);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "forward step failed; failing its requests");
                for (mut s, &n) in std::mem::take(&mut self.running).into_iter().zip(&plan) {
                    if n > 0 {
                        let _ = s
                            .events
                            .send(GenEvent::Error(format!("inference failed: {e}")));
                        self.release(&mut s);
                    } else {
                        self.running.push(s);
                    }
                }
                return;
            }
        };
        let mut logits = logits.into_iter();
        let mut outcomes = Vec::with_capacity(self.running.len());
        for (idx, &n) in plan.iter().enumerate() {
            if n == 0 {
                outcomes.push(Outcome::Continue);
                continue;
            }
            self.running[idx].num_computed += n;
            self.publish_full_blocks(idx);
            let s = &self.running[idx];
            if s.num_computed < s.tokens.len() {
                outcomes.push(Outcome::Continue);
                continue;
            }
            let Some(row) = logits.next() else {
                outcomes.push(Outcome::Finished(FinishReason::Length));
                continue;
            };
            outcomes.push(self.accept_token(idx, &row));
        }
        let mut kept = Vec::with_capacity(self.running.len());
        for (mut s, outcome) in std::mem::take(&mut self.running).into_iter().zip(outcomes) {
            match outcome {
                Outcome::Continue => kept.push(s),
                Outcome::Cancelled => {
                    self.metrics.cancelled.inc();
                    self.release(&mut s);
                }
                Outcome::Finished(reason) => self.finish(s, reason),
            }
        }
        self.running = kept;
    }

    fn accept_token(&mut self, idx: usize, logits: &[f32]) -> Outcome {
        let now = Instant::now();
        let s = &mut self.running[idx];
        let token = s.sampler.sample(logits);
        match s.last_token_at {
            None => self
                .metrics
                .ttft_seconds
                .observe(now.duration_since(s.arrived).as_secs_f64()),
            Some(t) => self
                .metrics
                .itl_seconds
                .observe(now.duration_since(t).as_secs_f64()),
        }
        s.last_token_at = Some(now);
        s.tokens.push(token);
        self.metrics.generated_tokens.inc();
        if s.events.send(GenEvent::Token(token)).is_err() {
            return Outcome::Cancelled;
        }
        match self.finished(&self.running[idx], token) {
            Some(reason) => Outcome::Finished(reason),
            None => Outcome::Continue,
        }
    }

    /// Registers every block that filled up in the pool's prefix cache and queues it
    /// for the store.
    fn publish_full_blocks(&mut self, idx: usize) {
        let b = self.block;
        let full = self.running[idx].num_computed / b;
        while self.running[idx].hashes.len() < full {
            let s = &mut self.running[idx];
            let k = s.hashes.len();
            let hash = hash_next(
                &s.ns,
                s.hashes.last().copied(),
                &s.tokens[k * b..(k + 1) * b],
            );
            self.pool.register(s.blocks[k], hash);
            s.hashes.push(hash);
            self.publish(&self.running[idx], k);
        }
    }

    /// Queues block `k` of `s` for the store. Normally a full queue skips it (decoding
    /// never waits for a write); with `await_publish` the worker waits for room and the
    /// publisher reports the block stored on the request's channel.
    fn publish(&self, s: &Sequence, k: usize) {
        if !(self.config.publish_to_store || s.await_publish) {
            return;
        }
        let publication = || Publication {
            ns: s.ns.clone(),
            hash: s.hashes[k],
            data: self.pool.export(s.blocks[k]),
            ack: s.await_publish.then(|| s.events.clone()),
        };
        if s.await_publish {
            // The worker is a plain thread, never a runtime thread: blocking is allowed.
            if self.publish.blocking_send(publication()).is_err() {
                self.metrics.publish_failures.inc();
            }
            return;
        }
        // Room first, so a full queue costs no export.
        match self.publish.try_reserve() {
            Ok(permit) => permit.send(publication()),
            Err(TrySendError::Full(())) => self.metrics.publish_skipped.inc(),
            Err(TrySendError::Closed(())) => self.metrics.publish_failures.inc(),
        }
    }

    fn update_gauges(&self) {
        let u = self.pool.usage();
        let m = &self.metrics;
        m.pool_blocks
            .with_label_values(&["used"])
            .set(u.used as i64);
        m.pool_blocks
            .with_label_values(&["cached"])
            .set(u.cached as i64);
        m.pool_blocks
            .with_label_values(&["free"])
            .set(u.free as i64);
        m.running.set(self.running.len() as i64);
        m.waiting.set(self.waiting.len() as i64);
    }
}

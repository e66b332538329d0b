//! Conditional disaggregation: whether a prompt is worth computing on a prefill
//! worker. One rule for every decode worker: a tierkv engine applies it itself, the
//! frontend applies it for decode workers that cannot (vLLM).

use super::PrefillCandidate;

/// The thresholds of the rule (`[disagg]` of an engine, `[frontend.prefill]` of a
/// frontend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefillPolicy {
    /// Prefill remotely only when at least this many prompt tokens are uncached on
    /// the decode worker.
    pub remote_prefill_min_tokens: usize,
    /// Skip a prefill worker whose queue is longer than this.
    pub max_prefill_queue: usize,
}

/// Where a prompt is computed.
#[derive(Debug, PartialEq)]
pub enum PrefillDecision<'a> {
    /// On this prefill worker.
    Remote(&'a PrefillCandidate),
    /// On the decode worker itself, for this reason.
    Local(LocalReason),
}

/// Why a prompt is computed on its decode worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalReason {
    /// The cluster has no prefill worker.
    NoPrefillWorker,
    /// Too few uncached tokens to be worth shipping.
    Short,
    /// Every prefill worker's queue is over the limit.
    Busy,
}

impl LocalReason {
    /// The `decision` label of the prefill-decision metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            LocalReason::NoPrefillWorker => "local_no_prefill_worker",
            LocalReason::Short => "local_short",
            LocalReason::Busy => "local_busy",
        }
    }
}

/// The rule for a prompt of `prompt_len` tokens whose first `cached_tokens` the
/// decode worker holds, given the prefill workers best first (most overlap, then
/// shortest queue): the first one under the queue limit, if the uncached part is long
/// enough.
pub fn decide<'a>(
    policy: &PrefillPolicy,
    prompt_len: usize,
    cached_tokens: usize,
    candidates: &'a [PrefillCandidate],
) -> PrefillDecision<'a> {
    if candidates.is_empty() {
        return PrefillDecision::Local(LocalReason::NoPrefillWorker);
    }
    if prompt_len.saturating_sub(cached_tokens) < policy.remote_prefill_min_tokens {
        return PrefillDecision::Local(LocalReason::Short);
    }
    match candidates
        .iter()
        .find(|c| c.queue <= policy.max_prefill_queue)
    {
        Some(c) => PrefillDecision::Remote(c),
        None => PrefillDecision::Local(LocalReason::Busy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, queue: usize) -> PrefillCandidate {
        PrefillCandidate {
            name: name.into(),
            http: format!("http://{name}"),
            blocks: format!("{name}:9000"),
            overlap_blocks: 0,
            queue,
        }
    }

    #[test]
    fn long_uncached_prompts_go_to_the_first_prefill_worker_under_the_limit() {
        let p = PrefillPolicy {
            remote_prefill_min_tokens: 256,
            max_prefill_queue: 2,
        };
        let ws = [worker("a", 3), worker("b", 2), worker("c", 0)];
        assert_eq!(decide(&p, 1000, 0, &ws), PrefillDecision::Remote(&ws[1]));
        assert_eq!(
            decide(&p, 1000, 800, &ws),
            PrefillDecision::Local(LocalReason::Short),
            "mostly cached on the decode worker"
        );
        assert_eq!(
            decide(&p, 100, 0, &ws),
            PrefillDecision::Local(LocalReason::Short)
        );
        assert_eq!(
            decide(&p, 1000, 0, &ws[..1]),
            PrefillDecision::Local(LocalReason::Busy)
        );
        assert_eq!(
            decide(&p, 1000, 0, &[]),
            PrefillDecision::Local(LocalReason::NoPrefillWorker)
        );
    }
}

//! The one seam between the scheduler and a cluster: before computing a prompt, the
//! engine asks the request's [`PrefillElsewhere`] (when it carries one) whether another
//! worker should prefill it, and takes the first token and the KV blocks it brings.
//! `pd` implements it for decode workers; the scheduler knows no cluster.

use bytes::Bytes;
use futures::future::BoxFuture;
use tierkv_kvstore::{BlockHash, Namespace};

use super::{GenerateRequest, KvSource};

/// What a prefill elsewhere produced.
#[derive(Debug)]
pub struct Prefilled {
    /// The first generated token (sampled with the request's parameters).
    pub first_token: u32,
    /// KV blocks continuing the prefix this engine already holds, in chain order.
    pub blocks: Vec<(Bytes, KvSource)>,
}

/// Another worker that may compute a request's prompt.
pub trait PrefillElsewhere: Send + Sync + std::fmt::Debug {
    /// Prefills `req`, whose first `have` blocks (of `hashes`, in `ns`) this engine
    /// holds already. `None`: the engine computes the prompt itself (short prompt, no
    /// worker free, or that path failed — the tokens are the same either way). It may
    /// fix what the engine would otherwise choose (a sampling seed), so that both
    /// workers sample alike.
    fn prefill<'a>(
        &'a self,
        req: &'a mut GenerateRequest,
        ns: &'a Namespace,
        hashes: &'a [BlockHash],
        have: usize,
    ) -> BoxFuture<'a, Option<Prefilled>>;
}

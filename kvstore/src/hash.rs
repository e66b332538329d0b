use xxhash_rust::xxh3::Xxh3;

use crate::Namespace;

/// The 128-bit hash of a block: a chain over token ids, as in prefix caching.
/// `h_0 = H(seed, tokens[0..B])`, `h_i = H(h_{i-1}, tokens[iB..(i+1)B])` with `H` =
/// XXH3-128 over the previous hash (16 bytes, little-endian) followed by the block's
/// token ids (u32, little-endian). Equal hash means equal prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u128);

impl BlockHash {
    /// Big-endian bytes: the form on the wire and in vLLM's block hashes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// From the 16-byte big-endian form used on the wire; `None` for another length.
    pub fn from_slice(bytes: &[u8]) -> Option<BlockHash> {
        Some(BlockHash(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

impl std::fmt::Display for BlockHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The hashes of the full blocks of `tokens` (a trailing partial block is not hashed).
pub fn hash_blocks(ns: &Namespace, tokens: &[u32]) -> Vec<BlockHash> {
    let block = ns.layout().block_size as usize;
    let mut prev = None;
    let mut out = Vec::with_capacity(tokens.len() / block);
    for chunk in tokens.chunks_exact(block) {
        let h = hash_next(ns, prev, chunk);
        out.push(h);
        prev = Some(h);
    }
    out
}

/// One link of the chain: the hash of the block holding `tokens`, given the hash of
/// the block before it (`None` for the first block). Lets an engine extend a
/// sequence's chain one block at a time as tokens are generated.
pub fn hash_next(ns: &Namespace, prev: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let prev = prev.map_or(ns.seed(), |h| h.0);
    let mut h = Xxh3::new();
    h.update(&prev.to_le_bytes());
    for t in tokens {
        h.update(&t.to_le_bytes());
    }
    BlockHash(h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, KvLayout};

    fn ns(block: u32) -> Namespace {
        Namespace::new("m", KvLayout::new(2, 2, 8, DType::F16, block).unwrap()).unwrap()
    }

    #[test]
    fn equal_prefixes_share_hashes_and_diverge_after() {
        let n = ns(4);
        let a: Vec<u32> = (0..10).collect();
        let mut b = a.clone();
        b[5] = 99;
        let (ha, hb) = (hash_blocks(&n, &a), hash_blocks(&n, &b));
        assert_eq!(ha.len(), 2, "partial block not hashed");
        assert_eq!(ha[0], hb[0]);
        assert_ne!(ha[1], hb[1]);
        // The chain: same block content at another position hashes differently.
        let c: Vec<u32> = (0..4).chain(0..4).collect();
        let hc = hash_blocks(&n, &c);
        assert_ne!(hc[0], hc[1]);
        // The namespace seeds the chain.
        assert_ne!(
            hash_blocks(&ns(4), &a)[0],
            hash_blocks(&n.salted("x").unwrap(), &a)[0]
        );
    }

    #[test]
    fn wire_form_round_trips() {
        let h = BlockHash(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
        assert_eq!(BlockHash::from_slice(&h.to_bytes()), Some(h));
        assert_eq!(BlockHash::from_slice(&[0u8; 15]), None);
    }
}

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// The name of a block inside a tier: a 64-bit namespace digest (model, KV layout
/// signature, tensor-parallel rank and tenant salt; see `tierkv-kvstore`) and the
/// 128-bit block hash of the prefix chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BlockKey {
    /// The namespace's 64-bit digest.
    pub namespace: u64,
    /// The block's hash in the prefix chain.
    pub hash: u128,
}

impl BlockKey {
    /// Length of [`BlockKey::to_bytes`].
    pub const ENCODED_LEN: usize = 24;

    /// The key of block `hash` in namespace `namespace`.
    pub const fn new(namespace: u64, hash: u128) -> Self {
        BlockKey { namespace, hash }
    }

    /// Big-endian encoding: keys of one namespace sort together.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..8].copy_from_slice(&self.namespace.to_be_bytes());
        out[8..].copy_from_slice(&self.hash.to_be_bytes());
        out
    }

    /// Inverse of [`BlockKey::to_bytes`]; `None` for a slice of the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let ns: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let hash: [u8; 16] = bytes.get(8..)?.try_into().ok()?;
        Some(BlockKey::new(
            u64::from_be_bytes(ns),
            u128::from_be_bytes(hash),
        ))
    }
}

impl std::fmt::Display for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{:032x}", self.namespace, self.hash)
    }
}

/// A hasher for maps keyed by [`BlockKey`]. The key is already a uniform hash, so
/// folding it with one multiply is enough and much faster than SipHash; this is what
/// lets `lookup_prefix` walk tens of millions of hashes per second.
#[derive(Default, Clone, Copy, Debug)]
pub struct BlockKeyHasher(u64);

impl Hasher for BlockKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64 ^ (n >> 64) as u64);
    }
}

/// [`BuildHasher`] for `BlockKeyHasher`.
#[derive(Default, Clone, Copy, Debug)]
pub struct BuildBlockKeyHasher;

impl BuildHasher for BuildBlockKeyHasher {
    type Hasher = BlockKeyHasher;
    fn build_hasher(&self) -> BlockKeyHasher {
        BlockKeyHasher::default()
    }
}

/// A `HashMap` keyed by [`BlockKey`] with the fast hasher.
pub type BlockKeyMap<V> = HashMap<BlockKey, V, BuildBlockKeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_round_trip() {
        let key = BlockKey::new(0x0102_0304_0506_0708, u128::MAX - 7);
        assert_eq!(BlockKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(BlockKey::from_bytes(&[0u8; 23]), None);
        assert_eq!(BlockKey::from_bytes(&[0u8; 25]), None);
    }

    #[test]
    fn keys_that_differ_only_in_namespace_hash_differently() {
        let a = BuildBlockKeyHasher.hash_one(BlockKey::new(1, 42));
        let b = BuildBlockKeyHasher.hash_one(BlockKey::new(2, 42));
        assert_ne!(a, b);
    }
}

//! What tests and benchmarks of tiers share: deterministic payloads (distinct per seed,
//! incompressible, reproducible without a random-number dependency) and, with the
//! `testing` feature, the `conformance` suite every [`crate::Tier`] runs.

#[cfg(feature = "testing")]
pub mod conformance;

use bytes::Bytes;

/// `len` pseudo-random bytes (xorshift64) determined by `seed`.
pub fn payload(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_are_reproducible_and_distinct() {
        assert_eq!(super::payload(1, 100), super::payload(1, 100));
        assert_ne!(super::payload(1, 100), super::payload(2, 100));
        assert_eq!(super::payload(3, 13).len(), 13);
    }
}

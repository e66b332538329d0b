//! The geometry of a KV block and the one documented byte order used by every tier,
//! the engine and the wire.

use serde::{Deserialize, Serialize};

use crate::{KvStoreError, Result};

/// Element type of the cached K and V tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// FP8 E4M3, as used by FP8 KV caches.
    F8e4m3,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::F8e4m3 => 1,
        }
    }

    /// Its name in configurations and namespaces (`f32`, `f16`, `bf16`, `f8e4m3`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F8e4m3 => "f8e4m3",
        }
    }
}

/// The geometry of one KV block: `block_size` consecutive tokens, every layer, K and V,
/// for the KV heads held by one tensor-parallel rank.
///
/// **Byte order of a block** (row-major, the only order tierkv uses):
///
/// ```text
/// [layer: num_layers][kv: 2 (K then V)][token: block_size][head: num_kv_heads][dim: head_dim]
/// ```
///
/// so one layer's K for the whole block is contiguous, followed by its V. Elements are
/// little-endian in `dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvLayout {
    /// Attention layers.
    pub num_layers: u32,
    /// KV heads on this rank (the model's KV heads divided by the TP size).
    pub num_kv_heads: u32,
    /// Elements per head.
    pub head_dim: u32,
    /// Element type.
    pub dtype: DType,
    /// Tokens per block.
    pub block_size: u32,
}

impl KvLayout {
    /// Validates the dimensions: all non-zero and a block size that fits memory.
    pub fn new(
        num_layers: u32,
        num_kv_heads: u32,
        head_dim: u32,
        dtype: DType,
        block_size: u32,
    ) -> Result<KvLayout> {
        let layout = KvLayout {
            num_layers,
            num_kv_heads,
            head_dim,
            dtype,
            block_size,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// An error unless every dimension is non-zero and a block's size fits in memory.
    pub fn validate(&self) -> Result<()> {
        if self.num_layers == 0
            || self.num_kv_heads == 0
            || self.head_dim == 0
            || self.block_size == 0
        {
            return Err(KvStoreError::Layout(format!("zero dimension in {self}")));
        }
        self.checked_block_bytes()
            .filter(|&b| b <= 1 << 32)
            .map(|_| ())
            .ok_or_else(|| KvStoreError::Layout(format!("block of {self} is larger than 4 GiB")))
    }

    fn checked_block_bytes(&self) -> Option<usize> {
        2usize
            .checked_mul(self.num_layers as usize)?
            .checked_mul(self.block_size as usize)?
            .checked_mul(self.num_kv_heads as usize)?
            .checked_mul(self.head_dim as usize)?
            .checked_mul(self.dtype.size())
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        self.checked_block_bytes().unwrap_or(usize::MAX)
    }

    /// Bytes of one token's K (or V) in one layer.
    pub fn token_bytes(&self) -> usize {
        self.num_kv_heads as usize * self.head_dim as usize * self.dtype.size()
    }

    /// Byte offset of `(layer, kv, token)` inside a block; `kv` 0 is K, 1 is V.
    pub fn offset(&self, layer: u32, kv: u32, token: u32) -> usize {
        let per_kv = self.block_size as usize * self.token_bytes();
        (layer as usize * 2 + kv as usize) * per_kv + token as usize * self.token_bytes()
    }

    /// A stable 64-bit signature of the geometry (part of the namespace digest).
    pub fn signature(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.to_string().as_bytes())
    }
}

impl std::str::FromStr for KvLayout {
    type Err = KvStoreError;
    /// The printed form, `L30xH3xD64xf16xB16`.
    fn from_str(s: &str) -> Result<KvLayout> {
        let bad =
            || KvStoreError::Layout(format!("{s:?} is not a KV layout like L30xH3xD64xf16xB16"));
        let parts: Vec<&str> = s.split('x').collect();
        let [l, h, d, dtype, b] = parts.as_slice() else {
            return Err(bad());
        };
        let num = |p: &str, tag: char| -> Result<u32> {
            p.strip_prefix(tag)
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)
        };
        let dtype = [DType::F32, DType::F16, DType::Bf16, DType::F8e4m3]
            .into_iter()
            .find(|t| t.as_str() == *dtype)
            .ok_or_else(bad)?;
        KvLayout::new(
            num(l, 'L')?,
            num(h, 'H')?,
            num(d, 'D')?,
            dtype,
            num(b, 'B')?,
        )
    }
}

impl std::fmt::Display for KvLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "L{}xH{}xD{}x{}xB{}",
            self.num_layers,
            self.num_kv_heads,
            self.head_dim,
            self.dtype.as_str(),
            self.block_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_32b_block_at_tp2_is_16_mib() {
        // 64 layers, 8 KV heads split over TP 2, head dim 128, bf16, 128-token blocks.
        let l = KvLayout::new(64, 4, 128, DType::Bf16, 128).unwrap();
        assert_eq!(l.block_bytes(), 16 << 20);
        assert_eq!(l.to_string(), "L64xH4xD128xbf16xB128");
    }

    #[test]
    fn offsets_follow_the_documented_order() {
        let l = KvLayout::new(2, 3, 4, DType::F16, 5).unwrap();
        let tok = 3 * 4 * 2;
        assert_eq!(l.token_bytes(), tok);
        assert_eq!(l.offset(0, 0, 0), 0);
        assert_eq!(l.offset(0, 0, 1), tok);
        assert_eq!(l.offset(0, 1, 0), 5 * tok);
        assert_eq!(l.offset(1, 0, 0), 10 * tok);
        assert_eq!(l.offset(1, 1, 4) + tok, l.block_bytes());
    }

    #[test]
    fn bad_layouts_are_rejected() {
        assert!(KvLayout::new(0, 1, 1, DType::F16, 16).is_err());
        assert!(KvLayout::new(u32::MAX, u32::MAX, u32::MAX, DType::F32, u32::MAX).is_err());
        let a = KvLayout::new(30, 3, 64, DType::F16, 16).unwrap();
        let b = KvLayout::new(30, 3, 64, DType::Bf16, 16).unwrap();
        assert_ne!(a.signature(), b.signature());
    }
}

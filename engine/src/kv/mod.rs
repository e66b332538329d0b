//! The engine's paged KV cache: a fixed pool of KV blocks of `block_size` tokens, each
//! laid out exactly as [`tierkv_kvstore::KvLayout`] says, so a block moves between the
//! pool and any tier as one byte copy.

mod pool;

pub use pool::{KvPool, PoolUsage, ResidentSet};

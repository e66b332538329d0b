//! Storage media for tierkv.
//!
//! Every medium is a bounded, content-addressed pool of blocks behind the one [`Tier`]
//! trait. Nothing here knows about models, tokens or the network: a block is an opaque
//! byte payload named by a [`BlockKey`].
//!
//! - [`HostTier`]: one page-aligned allocation cut into fixed-size slots.
//! - [`DiskTier`]: a preallocated file of slots written and read with io_uring and
//!   O_DIRECT on dedicated threads, indexed by RocksDB so it survives restarts.
//! - [`ObjectTier`]: `object_store` (local directory, S3, OSS/MinIO through an S3 endpoint).
//! - `gpu` (feature `cuda`): the HBM block pool and the HBM <-> host <-> disk transfer
//!   path.
//!
//! # A tier: put, get, remove
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierkv_tiers::Result<()> {
//! use bytes::Bytes;
//! use tierkv_tiers::{BlockKey, DiskTier, DiskTierConfig, PutOutcome, Tier};
//!
//! let dir = std::env::temp_dir().join(format!("tierkv-doc-{}", std::process::id()));
//! let disk = DiskTier::open(DiskTierConfig {
//!     path: dir.clone(),
//!     capacity_bytes: 8 << 20,
//!     slot_bytes: 64 << 10,
//!     ..Default::default()
//! })?;
//! let key = BlockKey::new(1, 0x5eed);
//! let block = Bytes::from(vec![1u8; 50_000]);
//! assert_eq!(disk.put(key, block.clone()).await?, PutOutcome::Stored);
//! // Written through io_uring, read back and verified against its checksum.
//! assert_eq!(disk.get(key).await?, Some(block));
//! assert!(disk.remove(key).await?);
//! assert_eq!(disk.get(key).await?, None);
//! # drop(disk);
//! # let _ = std::fs::remove_dir_all(dir);
//! # Ok(())
//! # }
//! ```

pub mod checksum;
pub mod defaults;
mod error;
pub mod failpoint;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod header;
pub(crate) mod io;
mod key;
mod stats;
pub mod sync;
pub mod testing;
pub mod tier;

pub use error::{BoxError, Result, TierError};
pub use io::aligned::AlignedBuf;
pub use key::{BlockKey, BlockKeyMap, BuildBlockKeyHasher};
pub use stats::{TierCounters, TierStats};
pub use tier::disk::{DiskTier, DiskTierConfig};
pub use tier::disk_buffers::SlotBuffer;
#[cfg(feature = "cuda")]
pub use tier::gpu::{GpuTier, GpuTierConfig};
pub use tier::host::{HostTier, HostTierConfig, StagedSlot, check_payload};
pub use tier::object::{ObjectBackend, ObjectTier, ObjectTierConfig};
pub use tier::{PutOutcome, Tier, TierKind};

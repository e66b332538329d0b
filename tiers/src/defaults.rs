//! Every default of the tiers, in one place. The tier configs' `Default`s, the
//! `TieredStore` builder and the TOML sections of `tierkv-kvstore` all read these, so a
//! store built in code and one built from an empty config file are the same store.

use std::time::Duration;

/// Largest block payload a slot holds: 2 MiB (a 128-token block of a 8-KV-head,
/// 128-dim, 64-layer model at f16 is 4 MiB; set it per deployment).
pub const SLOT_BYTES: usize = 2 << 20;

/// Host tier: 512 MiB of memory.
pub const HOST_CAPACITY: u64 = 512 << 20;
/// Host tier: fault in every page at start-up.
pub const HOST_PREFAULT: bool = true;
/// Host tier: pin the slab for the GPU when there is one.
pub const HOST_PIN: bool = true;

/// Disk tier: a 4 GiB slot file.
pub const DISK_CAPACITY: u64 = 4 << 30;
/// Disk tier: I/Os in flight per io_uring thread.
pub const DISK_QUEUE_DEPTH: u32 = 32;
/// Disk tier: io_uring threads.
pub const DISK_IO_THREADS: usize = 1;
/// Disk tier: O_DIRECT (bypass the page cache).
pub const DISK_DIRECT_IO: bool = true;
/// Disk tier: durable against process crashes, not power loss.
pub const DISK_SYNC_WRITES: bool = false;

/// Object tier: 16 GiB of blocks.
pub const OBJECT_CAPACITY: u64 = 16 << 30;
/// Object tier: the key prefix inside the bucket or directory.
pub const OBJECT_PREFIX: &str = "tierkv";
/// Object tier: requests in flight.
pub const OBJECT_MAX_CONCURRENCY: usize = 32;
/// Object tier: retries of a failed request (HTTP backends).
pub const OBJECT_MAX_RETRIES: usize = 3;
/// Object tier: timeout of one request (HTTP backends).
pub const OBJECT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// GPU tier (feature `cuda`): 1 GiB of HBM.
pub const GPU_CAPACITY: u64 = 1 << 30;

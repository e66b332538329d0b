//! Direct I/O plumbing for the disk tier: page-aligned buffers and io_uring worker
//! threads. Nothing here runs on tokio's worker threads.

pub mod aligned;
pub mod uring;

pub use aligned::{AlignedBuf, BufPool, PooledBuf};
pub use uring::{IoKind, UringPool};

/// The alignment O_DIRECT needs for buffers, offsets and lengths.
pub const DIRECT_IO_ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`DIRECT_IO_ALIGN`].
pub const fn align_up(n: usize) -> usize {
    n.div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN
}

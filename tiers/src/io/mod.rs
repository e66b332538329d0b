//! Direct I/O plumbing for the disk tier: page-aligned buffers and io_uring worker
//! threads. Nothing here runs on tokio's worker threads.

pub(crate) mod aligned;
pub(crate) mod uring;

pub(crate) use aligned::{AlignedBuf, BufPool, PooledBuf};
pub(crate) use uring::{IoKind, UringPool};

/// The alignment O_DIRECT needs for buffers, offsets and lengths.
pub(crate) const DIRECT_IO_ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of [`DIRECT_IO_ALIGN`].
pub(crate) const fn align_up(n: usize) -> usize {
    n.div_ceil(DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN
}

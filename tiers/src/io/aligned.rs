//! Page-aligned buffers for O_DIRECT, recycled through a pool so that the steady state
//! allocates nothing and never page-faults.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use super::DIRECT_IO_ALIGN;
use crate::sync::lock;

/// A heap buffer aligned to 4 KiB (`DIRECT_IO_ALIGN`), zero-initialised at allocation; or a
/// window of the caller's memory ([`AlignedBuf::borrowed`]), which it does not free.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    owned: bool,
}

// SAFETY: the buffer uses its memory exclusively, like a `Vec<u8>` (a borrowed window
// by `borrowed`'s contract).
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only read.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `cap` bytes (rounded up to the alignment; at least one page), zeroed
    /// by writing, so every page is faulted in now rather than on the I/O path.
    pub fn new(cap: usize) -> AlignedBuf {
        let cap = super::align_up(cap.max(1));
        let layout = Self::layout(cap);
        // SAFETY: `layout` has non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is a fresh allocation of `cap` bytes; writing initialises them.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, cap) };
        AlignedBuf {
            ptr,
            cap,
            owned: true,
        }
    }

    /// A buffer over `cap` bytes at `ptr`, which must be aligned to
    /// 4 KiB (`DIRECT_IO_ALIGN`); dropping it frees nothing.
    ///
    /// # Safety
    /// The memory must stay valid, and be used by nothing but this value, for as long
    /// as this value (or the I/O it travels with) lives — including I/O in flight in a
    /// ring that was abandoned, whose buffers are never handed back.
    pub unsafe fn borrowed(ptr: NonNull<u8>, cap: usize) -> AlignedBuf {
        AlignedBuf {
            ptr,
            cap,
            owned: false,
        }
    }

    fn layout(cap: usize) -> Layout {
        match Layout::from_size_align(cap, DIRECT_IO_ALIGN) {
            Ok(layout) => layout,
            // `cap` is a multiple of the (power-of-two) alignment and came from an
            // allocation request that fits in memory; this cannot fail.
            Err(_) => panic!("invalid layout for an aligned buffer of {cap} bytes"),
        }
    }

    /// Its length in bytes (a multiple of 4 KiB (`DIRECT_IO_ALIGN`)).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The start of its memory, for I/O submitted by address.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `cap` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// Its bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.cap)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: allocated in `new` with exactly this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
        }
    }
}

/// A pool of equally sized aligned buffers.
pub(crate) struct BufPool {
    buf_len: usize,
    max_idle: usize,
    idle: Mutex<Vec<AlignedBuf>>,
}

impl BufPool {
    /// A pool of buffers of `buf_len` bytes keeping at most `max_idle` idle ones.
    pub(crate) fn new(buf_len: usize, max_idle: usize) -> Arc<BufPool> {
        Arc::new(BufPool {
            buf_len: super::align_up(buf_len.max(1)),
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Allocates idle buffers up front (up to `n`, within `max_idle`), so that the
    /// first I/Os neither allocate nor page-fault.
    pub(crate) fn prefill(&self, n: usize) {
        let n = n.min(self.max_idle);
        let have = lock(&self.idle).len();
        let fresh: Vec<_> = (have..n).map(|_| AlignedBuf::new(self.buf_len)).collect();
        lock(&self.idle).extend(fresh);
    }

    /// An idle buffer, or a new one.
    pub(crate) fn take(self: &Arc<Self>) -> PooledBuf {
        let buf = lock(&self.idle)
            .pop()
            .unwrap_or_else(|| AlignedBuf::new(self.buf_len));
        PooledBuf {
            buf: Some(buf),
            pool: Arc::clone(self),
            range: 0..0,
        }
    }

    fn give_back(&self, buf: AlignedBuf) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(buf);
        }
    }
}

/// A buffer on loan from a [`BufPool`]; goes back on drop. `AsRef` yields the
/// sub-range set with [`PooledBuf::set_range`], so it can back a zero-copy `Bytes`.
pub(crate) struct PooledBuf {
    buf: Option<AlignedBuf>,
    pool: Arc<BufPool>,
    range: std::ops::Range<usize>,
}

impl PooledBuf {
    /// Moves the buffer out (to hand it to an I/O thread); the loan is then over.
    pub(crate) fn into_inner(mut self) -> AlignedBuf {
        match self.buf.take() {
            Some(buf) => buf,
            // `buf` is only `None` after `into_inner`, which consumes `self`.
            None => unreachable!("PooledBuf used after into_inner"),
        }
    }

    /// Wraps a buffer (back from an I/O thread) as a loan from `pool`.
    pub(crate) fn from_parts(buf: AlignedBuf, pool: &Arc<BufPool>) -> PooledBuf {
        PooledBuf {
            buf: Some(buf),
            pool: Arc::clone(pool),
            range: 0..0,
        }
    }

    pub(crate) fn full(&self) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| b.as_slice())
    }

    pub(crate) fn full_mut(&mut self) -> &mut [u8] {
        self.buf.as_mut().map_or(&mut [], |b| b.as_mut_slice())
    }

    /// Selects what `as_ref` returns; clamped to the buffer.
    pub(crate) fn set_range(&mut self, range: std::ops::Range<usize>) {
        let cap = self.full().len();
        self.range = range.start.min(cap)..range.end.min(cap);
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.full()[self.range.clone()]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            self.pool.give_back(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let pool = BufPool::new(10_000, 2);
        let mut a = pool.take();
        assert_eq!(a.full().len(), 12_288);
        assert_eq!(a.full().as_ptr() as usize % DIRECT_IO_ALIGN, 0);
        a.full_mut()[5] = 42;
        a.set_range(5..6);
        assert_eq!(a.as_ref(), &[42]);
        let addr = a.full().as_ptr() as usize;
        drop(a);
        let b = pool.take();
        assert_eq!(b.full().as_ptr() as usize, addr, "idle buffer reused");
        drop(b);
        pool.prefill(5);
        assert_eq!(lock(&pool.idle).len(), 2, "prefill stays within max_idle");
    }
}

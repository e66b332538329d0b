//! Page-locked (pinned) host memory: what lets copies between HBM and host memory run at
//! full PCIe speed and asynchronously.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, sys};

use crate::{Result, TierError};

/// How to get pinned memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMethod {
    /// `cuMemHostAlloc`: the driver allocates and pins (it touches every page itself,
    /// on one thread).
    HostAlloc,
    /// Anonymous mmap, every page touched by `threads` threads in parallel, then
    /// `cuMemHostRegister`.
    MmapTouchRegister {
        /// Threads touching the pages.
        threads: usize,
    },
}

impl PinMethod {
    /// How it pins, in words (for benchmark reports).
    pub fn label(&self) -> String {
        match self {
            PinMethod::HostAlloc => "cuMemHostAlloc".into(),
            PinMethod::MmapTouchRegister { threads } => {
                format!("mmap + {threads}-thread touch + cuMemHostRegister")
            }
        }
    }
}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(TierError::Gpu(format!("{what}: {r:?}")))
    }
}

/// Pins `len` bytes at `ptr` (`cuMemHostRegister`, portable to every context and mapped
/// into the GPUs' address space, so small transfers can reach it from a kernel).
///
/// # Safety
/// `ptr..ptr+len` must be a live mapping owned by the caller that stays mapped until
/// [`unregister_host`] is called on it.
pub unsafe fn register_host(ctx: &Arc<CudaContext>, ptr: *mut u8, len: usize) -> Result<()> {
    ctx.bind_to_thread()
        .map_err(|e| TierError::Gpu(format!("binding the context: {e}")))?;
    // SAFETY: the caller guarantees the range is a live mapping; the flags are valid
    // constants.
    check(
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr.cast(),
                len,
                sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP,
            )
        },
        "cuMemHostRegister",
    )
}

/// Unpins memory pinned by [`register_host`].
///
/// # Safety
/// `ptr` must have been registered with [`register_host`] and not unregistered since.
pub unsafe fn unregister_host(ctx: &Arc<CudaContext>, ptr: *mut u8) -> Result<()> {
    ctx.bind_to_thread()
        .map_err(|e| TierError::Gpu(format!("binding the context: {e}")))?;
    // SAFETY: guaranteed registered by the caller.
    check(
        unsafe { sys::cuMemHostUnregister(ptr.cast()) },
        "cuMemHostUnregister",
    )
}

/// Pinned host memory, freed (and unpinned) on drop.
pub struct PinnedBuffer {
    ctx: Arc<CudaContext>,
    ptr: NonNull<u8>,
    len: usize,
    method: PinMethod,
    /// How long allocating and pinning took.
    pub took: Duration,
    /// Of which touching the pages (mmap method only).
    pub touch: Duration,
}

// SAFETY: plain host memory owned by this value; `&mut self` guards writes.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared references only read.
unsafe impl Sync for PinnedBuffer {}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedBuffer")
            .field("len", &self.len)
            .field("method", &self.method)
            .field("took", &self.took)
            .finish_non_exhaustive()
    }
}

impl PinnedBuffer {
    /// `len` bytes of pinned host memory in `ctx`, pinned by `method`.
    pub fn new(ctx: &Arc<CudaContext>, len: usize, method: PinMethod) -> Result<PinnedBuffer> {
        if len == 0 {
            return Err(TierError::Gpu("a pinned buffer of 0 bytes".into()));
        }
        ctx.bind_to_thread()
            .map_err(|e| TierError::Gpu(format!("binding the context: {e}")))?;
        let started = Instant::now();
        let mut touch = Duration::ZERO;
        let ptr = match method {
            PinMethod::HostAlloc => {
                let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
                check(
                    // SAFETY: an out-pointer to a local; the flags are valid constants.
                    unsafe {
                        sys::cuMemHostAlloc(
                            &mut p,
                            len,
                            sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP,
                        )
                    },
                    "cuMemHostAlloc",
                )?;
                p.cast::<u8>()
            }
            PinMethod::MmapTouchRegister { threads } => {
                // SAFETY: an anonymous private mapping with no hint; checked below.
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                if p == libc::MAP_FAILED {
                    return Err(TierError::Gpu(format!(
                        "mmap of {len} bytes: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                // Transparent huge pages where the kernel allows: 512x fewer faults.
                // SAFETY: advice on the mapping just created; failure is harmless.
                unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
                let t = Instant::now();
                touch_pages(p.cast(), len, threads.max(1));
                touch = t.elapsed();
                // SAFETY: the mapping was just created and lives until Drop unregisters
                // it and unmaps it.
                if let Err(e) = unsafe { register_host(ctx, p.cast(), len) } {
                    // SAFETY: the mapping created above, unused elsewhere.
                    unsafe { libc::munmap(p, len) };
                    return Err(e);
                }
                p.cast::<u8>()
            }
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| TierError::Gpu("pinned allocation returned null".into()))?;
        Ok(PinnedBuffer {
            ctx: Arc::clone(ctx),
            ptr,
            len,
            method,
            took: started.elapsed(),
            touch,
        })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never true (an empty buffer is refused); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The start of the memory.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }
    /// The start of the memory, to write through.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes owned by this buffer, initialised (touched or zeroed by
        // the driver... or written by copies) for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    /// The bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// Writes one byte per page from `threads` threads, so the kernel maps (and zeroes)
/// the pages in parallel before the driver pins them.
pub fn touch_pages(ptr: *mut u8, len: usize, threads: usize) {
    const PAGE: usize = 4096;
    let pages = len.div_ceil(PAGE);
    let per = pages.div_ceil(threads);
    let base = ptr as usize;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (first, last) = (t * per, ((t + 1) * per).min(pages));
            s.spawn(move || {
                for page in first..last {
                    // SAFETY: `page < pages`, so the byte lies inside the mapping, and
                    // each page is written by exactly one thread.
                    unsafe { std::ptr::write_volatile((base + page * PAGE) as *mut u8, 0) };
                }
            });
        }
    });
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        match self.method {
            PinMethod::HostAlloc => {
                // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
                unsafe { sys::cuMemFreeHost(self.ptr.as_ptr().cast()) };
            }
            PinMethod::MmapTouchRegister { .. } => {
                // SAFETY: registered and mapped in `new`, released once, in this order.
                unsafe {
                    let _ = unregister_host(&self.ctx, self.ptr.as_ptr());
                    libc::munmap(self.ptr.as_ptr().cast(), self.len);
                }
            }
        }
    }
}

//! Small transfers without staging: one kernel (`zero_copy_pieces`) moves every piece
//! between HBM and mapped pinned host memory itself, reading its pair table from mapped
//! pinned memory too. A staged transfer pays, in order, for a table upload, a gather
//! (scatter) kernel and one copy-engine copy per block; for a few MiB those latencies
//! are a large share of the time, and here there is one launch. Large transfers keep
//! the staged path: it holds SMs only for the HBM-to-HBM gather, not for the whole
//! PCIe transfer, so it leaves the engine's kernels alone.
//!
//! Only host memory the driver has mapped (the store's pinned host tier, pinned
//! buffers) can take this path: [`mapped`] asks the driver for each buffer's device
//! address and the caller falls back to staging when any is missing.

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{LaunchConfig, PushKernelArg, sys};

use super::kernels::{Kernels, THREADS, ZERO_COPY_CHUNK_BYTES};
use super::transfer::{Direction, Lane};
use super::{DeviceBlocks, gpu_err};
use crate::Result;

/// The device addresses of `host` buffers of `len` bytes each, when every one lies
/// whole in mapped pinned memory (its first and last byte mapped, contiguously); `None`
/// when any does not (pageable memory: the caller stages instead).
pub(super) fn mapped(host: &[usize], len: usize) -> Option<Vec<CUdeviceptr>> {
    if len == 0 {
        return None;
    }
    host.iter()
        .map(|&h| {
            let first = device_address(h)?;
            let last = device_address(h.checked_add(len - 1)?)?;
            (last == first + (len - 1) as u64).then_some(first)
        })
        .collect()
}

/// The device address of host address `host`, if the driver has it mapped.
fn device_address(host: usize) -> Option<CUdeviceptr> {
    let mut dev: CUdeviceptr = 0;
    // SAFETY: the out-parameter is a device pointer on the stack, the type this
    // attribute writes; the driver only looks the address up (an unknown address is an
    // error, not an access). Needs the context bound, as every caller has it.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            (&mut dev as *mut CUdeviceptr).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_POINTER,
            host as CUdeviceptr,
        )
    };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(dev)
}

/// Queues the zero-copy kernel on `lane`'s stream: blocks `blocks` of `pool` from
/// (offload) or into (onboard) the host blocks at device addresses `host`, in the
/// store's layout.
///
/// # Safety
/// The lane must be idle (no queued work reads its table); every `host` address must
/// be one block of mapped pinned memory (from [`mapped`]) that the caller keeps
/// borrowed, and untouched, until the lane's stream has completed the kernel; with
/// more than one piece per block every piece address and size is a multiple of 16
/// (validated by `HbmPool` and `EngineKv`).
pub(super) unsafe fn queue(
    kernels: &Kernels,
    lane: &mut Lane,
    dir: &Direction,
    pool: &dyn DeviceBlocks,
    blocks: &[u32],
    host: &[CUdeviceptr],
) -> Result<()> {
    let (pieces_per_block, piece_bytes) = (pool.pieces_per_block(), pool.piece_bytes());
    let n = blocks.len() * pieces_per_block;
    let table = lane.host_table.ensure(2 * n)?;
    let mut i = 0;
    for (&b, &h) in blocks.iter().zip(host) {
        for piece in 0..pieces_per_block {
            let dev = pool.piece_addr(b, piece)?;
            let host = h + (piece * piece_bytes) as u64;
            let (src, dst) = match dir {
                Direction::Offload => (dev, host),
                Direction::Onboard => (host, dev),
            };
            table[2 * i] = src;
            table[2 * i + 1] = dst;
            i += 1;
        }
    }
    let table = lane.host_table.device_ptr();
    let cfg = LaunchConfig {
        grid_dim: (
            n as u32,
            (piece_bytes as u64).div_ceil(ZERO_COPY_CHUNK_BYTES) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let (piece_bytes, chunk_bytes) = (piece_bytes as u64, ZERO_COPY_CHUNK_BYTES);
    let mut launch = lane.stream.launch_builder(&kernels.zero_copy);
    launch.arg(&table).arg(&piece_bytes).arg(&chunk_bytes);
    // SAFETY: the kernel reads `n` pairs from the mapped table (written above, not
    // written again until the lane is idle) and copies `piece_bytes` between each pair:
    // every device address is a piece inside the pool (piece_addr checks), every host
    // address a piece of a mapped block the caller keeps borrowed (this function's
    // contract).
    unsafe { launch.launch(cfg) }.map_err(gpu_err("launching the zero-copy kernel"))?;
    Ok(())
}

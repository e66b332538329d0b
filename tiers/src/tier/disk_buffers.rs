//! Slot I/O from and into the caller's buffers: a [`SlotBuffer`] is one slot's worth
//! of O_DIRECT-aligned memory (header, then payload) that travels to the io_uring
//! thread and back, so a block is written from, or read into, memory the caller filled
//! or drains itself — the GPU path pins a set of them and copies blocks between HBM and
//! their payloads, with no copy on the CPU ([`crate::gpu::disk_path`]).

use std::sync::Arc;

use super::PutOutcome;
use super::disk::DiskTier;
use crate::header::HEADER_LEN;
use crate::io::AlignedBuf;
use crate::{BlockKey, Result, TierCounters, TierError};

/// One slot of a [`DiskTier`]'s memory: the payload follows the header's place.
pub struct SlotBuffer {
    buf: AlignedBuf,
}

impl std::fmt::Debug for SlotBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotBuffer({} bytes)", self.buf.capacity())
    }
}

impl SlotBuffer {
    /// The payload area (at least the tier's `slot_bytes`).
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_slice()[HEADER_LEN..]
    }

    /// The payload area, to fill before [`DiskTier::put_from_buffer`].
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut_slice()[HEADER_LEN..]
    }
}

/// A buffer from another tier (of other slots) is refused, not overrun.
fn check_buffer(tier: &str, slot_stride: usize, buf: &SlotBuffer) -> Result<()> {
    if buf.buf.capacity() < slot_stride {
        return Err(TierError::config(
            tier,
            format!(
                "a slot buffer of {} bytes for slots of {slot_stride}",
                buf.buf.capacity()
            ),
        ));
    }
    Ok(())
}

fn task_died(what: &str, e: tokio::task::JoinError) -> TierError {
    TierError::io(
        format!("disk {what} task"),
        std::io::Error::other(e.to_string()),
    )
}

impl DiskTier {
    /// A new buffer of one slot for [`put_from_buffer`](Self::put_from_buffer) and
    /// [`get_into_buffer`](Self::get_into_buffer).
    pub fn slot_buffer(&self) -> SlotBuffer {
        SlotBuffer {
            buf: AlignedBuf::new(self.inner.slot_stride),
        }
    }

    /// A slot buffer over the caller's memory (`len >= slot_stride` bytes at `ptr`,
    /// 4 KiB-aligned), e.g. one slot of a pinned region; dropping it frees nothing.
    ///
    /// # Safety
    /// The memory must stay valid and otherwise unused while the buffer (or I/O it
    /// travels with) lives. A buffer an error lost may still be written by an I/O
    /// thread that gave up its ring: such memory must never be freed.
    pub unsafe fn slot_buffer_in(&self, ptr: *mut u8, len: usize) -> Result<SlotBuffer> {
        let stride = self.inner.slot_stride;
        let Some(p) = std::ptr::NonNull::new(ptr) else {
            return Err(TierError::config(
                &self.inner.core.name,
                "a slot buffer at address 0",
            ));
        };
        if !(ptr as usize).is_multiple_of(crate::io::DIRECT_IO_ALIGN) || len < stride {
            return Err(TierError::config(
                &self.inner.core.name,
                format!("a slot buffer of {len} bytes at {ptr:p}: needs {stride}, 4 KiB-aligned"),
            ));
        }
        Ok(SlotBuffer {
            // SAFETY: aligned and long enough (checked above); that the memory stays
            // valid and unaliased while the buffer lives is the caller's contract.
            buf: unsafe { AlignedBuf::borrowed(p, stride) },
        })
    }

    /// Bytes of one slot (header and payload, rounded up to 4 KiB).
    pub fn slot_stride(&self) -> usize {
        self.inner.slot_stride
    }

    /// Stores the first `len` payload bytes of `buf` as `key`, as `put` does. The
    /// buffer comes back with the outcome, errors included, unless it was lost: the
    /// tier's I/O threads are gone, or its task died.
    pub async fn put_from_buffer(
        &self,
        key: BlockKey,
        buf: SlotBuffer,
        len: usize,
    ) -> (Option<SlotBuffer>, Result<PutOutcome>) {
        let inner = &self.inner;
        let checked = match check_buffer(&inner.core.name, inner.slot_stride, &buf) {
            Err(e) => Err(e),
            Ok(()) if len == 0 => Err(TierError::Empty(inner.core.name.clone())),
            Ok(()) if len > inner.core.slot_bytes => Err(TierError::TooLarge {
                tier: inner.core.name.clone(),
                len,
                slot_bytes: inner.core.slot_bytes,
            }),
            Ok(()) => self.reserve(key).await,
        };
        let slot = match checked {
            Ok(Some(slot)) => slot,
            Ok(None) => return (Some(buf), Ok(PutOutcome::AlreadyPresent)),
            Err(e) => return (Some(buf), Err(e)),
        };
        // Its own task, as in `put`: a caller that gives up cannot strand the slot.
        let inner = Arc::clone(inner);
        let task = tokio::spawn(async move {
            let (back, written) = inner.write_slot_from(key, slot, buf.buf, len).await;
            let outcome = inner.settle_write(key, slot, len as u64, written).await;
            (back, outcome)
        });
        match task.await {
            Ok((back, outcome)) => (back.map(|buf| SlotBuffer { buf }), outcome),
            Err(e) => (None, Err(task_died("put", e))),
        }
    }

    /// Reads `key` into `buf`'s payload: the block's length, or `None` when it is not
    /// held or failed verification (then dropped), as `get`. The buffer comes back
    /// with the result, errors included, unless it was lost (as `put_from_buffer`).
    pub async fn get_into_buffer(
        &self,
        key: BlockKey,
        buf: SlotBuffer,
    ) -> (Option<SlotBuffer>, Result<Option<usize>>) {
        let inner = Arc::clone(&self.inner);
        if let Err(e) = check_buffer(&inner.core.name, inner.slot_stride, &buf) {
            return (Some(buf), Err(e));
        }
        TierCounters::add(&inner.core.counters.gets, 1);
        let Some((slot, len)) = inner.core.table().acquire(key) else {
            TierCounters::add(&inner.core.counters.misses, 1);
            return (Some(buf), Ok(None));
        };
        let task = tokio::spawn(async move {
            let (back, found) = inner.read_slot_into(key, slot, len, buf.buf).await;
            inner.core.table().release_reader(slot);
            let found = inner.settle_read(key, len, found).await;
            (back, found)
        });
        match task.await {
            Ok((back, found)) => (
                back.map(|buf| SlotBuffer { buf }),
                found.map(|f| f.then_some(len as usize)),
            ),
            Err(e) => (None, Err(task_died("get", e))),
        }
    }
}

//! HBM <-> disk through pinned slot buffers: blocks are copied by the GPU straight into
//! (out of) the payload of pinned, O_DIRECT-aligned slot buffers that the disk tier
//! writes from (reads into) with io_uring — no copy on the CPU, and the disk is kept
//! busy: every buffer whose write (read) completed takes the next blocks while the
//! others are still on their way, so reads and writes of many batches are in flight at
//! once and the GPU copies overlap them.

use std::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};

use super::{DeviceBlocks, PinMethod, PinnedBuffer, TransferEngine, TransferStats};
use crate::{BlockKey, DiskTier, Result, SlotBuffer, TierError};

/// Pinned memory carved into slot buffers of one disk tier, reused by every transfer.
pub struct DiskStaging {
    memory: Option<PinnedBuffer>,
    free: Vec<SlotBuffer>,
    count: usize,
    stride: usize,
}

impl std::fmt::Debug for DiskStaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DiskStaging({} slots of {} bytes)",
            self.count, self.stride
        )
    }
}

impl DiskStaging {
    /// `count` pinned slot buffers for `disk` (twice the tier's I/O in flight is
    /// plenty: half are on disk while the GPU fills or drains the other half).
    pub fn new(
        ctx: &std::sync::Arc<super::CudaContext>,
        disk: &DiskTier,
        count: usize,
    ) -> Result<DiskStaging> {
        let (count, stride) = (count.max(1), disk.slot_stride());
        let mut memory = PinnedBuffer::new(
            ctx,
            count * stride,
            PinMethod::MmapTouchRegister { threads: 4 },
        )?;
        let base = memory.as_mut_ptr();
        let mut free = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: slot `i` is its own `stride` bytes of the pinned mapping, which
            // this value owns and never frees while a buffer is out (see Drop).
            free.push(unsafe { disk.slot_buffer_in(base.add(i * stride), stride) }?);
        }
        Ok(DiskStaging {
            memory: Some(memory),
            free,
            count,
            stride,
        })
    }
}

impl Drop for DiskStaging {
    fn drop(&mut self) {
        if self.free.len() < self.count {
            // A buffer lost with a failed transfer may still be written by an I/O thread
            // that abandoned its ring: the memory is leaked, never freed under it.
            tracing::warn!(
                lost = self.count - self.free.len(),
                "disk staging buffers lost with a failed transfer; leaking their memory"
            );
            std::mem::forget(self.memory.take());
        }
    }
}

/// How many blocks one GPU copy moves at least (while more are pending): a quarter of
/// the buffers, so copies stay large while most buffers are on disk.
fn batch_floor(staging: &DiskStaging, remaining: usize) -> usize {
    (staging.count / 4).clamp(1, remaining.max(1))
}

fn check(
    kv: &dyn DeviceBlocks,
    blocks: &[u32],
    keys: &[BlockKey],
    disk: &DiskTier,
) -> Result<usize> {
    if keys.len() != blocks.len() {
        return Err(TierError::Gpu("one key per block is needed".into()));
    }
    let bb = kv.block_bytes();
    if bb > disk.slot_stride() - crate::header::HEADER_LEN {
        return Err(TierError::Gpu(format!(
            "blocks of {bb} bytes do not fit the disk tier's slots of {}",
            disk.slot_stride()
        )));
    }
    Ok(bb)
}

/// What a disk operation's task gave back: a buffer that came back returns to
/// `staging` on error; one that was lost stays out (the staging memory is then leaked,
/// never freed, see Drop).
type Done<T> = std::result::Result<(Option<SlotBuffer>, Result<T>), tokio::task::JoinError>;

fn settle<T>(staging: &mut DiskStaging, done: Done<T>) -> Result<(SlotBuffer, T)> {
    match done {
        Ok((Some(buf), Ok(v))) => Ok((buf, v)),
        Ok((back, Err(e))) => {
            staging.free.extend(back);
            Err(e)
        }
        Ok((None, Ok(_))) => Err(TierError::Gpu("a disk transfer lost its buffer".into())),
        Err(e) => Err(TierError::Gpu(format!("a disk transfer task failed: {e}"))),
    }
}

/// The first error, or what `n` blocks of `bb` bytes since `started` came to.
fn finished(
    failed: Option<TierError>,
    n: usize,
    bb: usize,
    started: Instant,
) -> Result<TransferStats> {
    match failed {
        Some(e) => Err(e),
        None => Ok(TransferStats {
            blocks: n,
            bytes: n * bb,
            elapsed: started.elapsed(),
            zero_copy: false,
        }),
    }
}

/// Offloads `blocks` of `kv` and stores them in `disk` under `keys`.
pub async fn hbm_to_disk(
    engine: &TransferEngine,
    kv: &dyn DeviceBlocks,
    blocks: &[u32],
    keys: &[BlockKey],
    disk: &DiskTier,
    staging: &mut DiskStaging,
) -> Result<TransferStats> {
    let bb = check(kv, blocks, keys, disk)?;
    let started = Instant::now();
    let mut writes = FuturesUnordered::new();
    let mut next = 0;
    let mut failed = None;
    while failed.is_none() && (next < blocks.len() || !writes.is_empty()) {
        let remaining = blocks.len() - next;
        if remaining > 0 && staging.free.len() >= batch_floor(staging, remaining) {
            let k = staging.free.len().min(remaining);
            let at = staging.free.len() - k;
            let mut batch: Vec<SlotBuffer> = staging.free.drain(at..).collect();
            let mut dst: Vec<&mut [u8]> = batch
                .iter_mut()
                .map(|b| &mut b.payload_mut()[..bb])
                .collect();
            let copied = engine.offload(kv, &blocks[next..next + k], &mut dst).await;
            if let Err(e) = copied {
                staging.free.extend(batch);
                failed = Some(e);
                break;
            }
            for (buf, &key) in batch.into_iter().zip(&keys[next..next + k]) {
                // A task of its own: the write starts now, not when next polled.
                let disk = disk.clone();
                writes.push(tokio::spawn(async move {
                    disk.put_from_buffer(key, buf, bb).await
                }));
            }
            next += k;
            continue;
        }
        if let Some(done) = writes.next().await {
            match settle(staging, done) {
                Ok((buf, _)) => staging.free.push(buf),
                Err(e) => failed = Some(e),
            }
        }
    }
    // Whatever happened, every write in flight comes back before this returns.
    while let Some(done) = writes.next().await {
        match settle(staging, done) {
            Ok((buf, _)) => staging.free.push(buf),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    finished(failed, blocks.len(), bb, started)
}

/// Reads `keys` from `disk` and onboards them into `blocks` of `kv`. A block the disk
/// does not hold (or that fails verification) is an error; nothing of it is copied.
pub async fn disk_to_hbm(
    engine: &TransferEngine,
    kv: &dyn DeviceBlocks,
    blocks: &[u32],
    keys: &[BlockKey],
    disk: &DiskTier,
    staging: &mut DiskStaging,
) -> Result<TransferStats> {
    let bb = check(kv, blocks, keys, disk)?;
    let started = Instant::now();
    let mut reads = FuturesUnordered::new();
    let mut next = 0;
    let mut ready: Vec<(u32, SlotBuffer)> = Vec::new();
    let mut failed = None;
    let mut onboarded = 0;
    while failed.is_none() && onboarded < blocks.len() {
        while next < blocks.len() {
            let Some(buf) = staging.free.pop() else { break };
            let (block, key, disk) = (blocks[next], keys[next], disk.clone());
            let read = tokio::spawn(async move { disk.get_into_buffer(key, buf).await });
            reads.push(async move { (block, key, read.await) });
            next += 1;
        }
        let pending = blocks.len() - onboarded - ready.len();
        if !ready.is_empty() && (ready.len() >= batch_floor(staging, pending) || reads.is_empty()) {
            let ids: Vec<u32> = ready.iter().map(|(b, _)| *b).collect();
            let src: Vec<&[u8]> = ready.iter().map(|(_, s)| &s.payload()[..bb]).collect();
            let copied = engine.onboard(kv, &ids, &src).await;
            staging.free.extend(ready.drain(..).map(|(_, s)| s));
            match copied {
                Ok(_) => onboarded += ids.len(),
                Err(e) => failed = Some(e),
            }
            continue;
        }
        let Some((block, key, done)) = reads.next().await else {
            continue;
        };
        match settle(staging, done) {
            Ok((buf, Some(len))) if len == bb => ready.push((block, buf)),
            Ok((buf, got)) => {
                staging.free.push(buf);
                failed = Some(match got {
                    None => TierError::Gpu(format!("block {key} is not on disk")),
                    Some(len) => TierError::Gpu(format!("block {key} has {len} bytes, not {bb}")),
                });
            }
            Err(e) => failed = Some(e),
        }
    }
    while let Some((_, _, done)) = reads.next().await {
        match settle(staging, done) {
            Ok((buf, _)) => staging.free.push(buf),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    staging.free.extend(ready.drain(..).map(|(_, s)| s));
    finished(failed, blocks.len(), bb, started)
}

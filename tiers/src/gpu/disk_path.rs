//! HBM <-> disk through pinned bounce buffers: blocks go round by round through two
//! pinned buffers, so that the GPU transfer of one round overlaps the disk I/O
//! (io_uring, O_DIRECT, in the [`DiskTier`]) of the other.

use std::time::Instant;

use bytes::Bytes;
use futures::future::try_join_all;

use super::{HbmPool, PinnedBuffer, TransferEngine, TransferStats};
use crate::{BlockKey, DiskTier, Result, Tier, TierError};

/// The block size and the rounds (blocks with their keys) that fit a bounce buffer.
type Rounds<'a> = Vec<(&'a [u32], &'a [BlockKey])>;

fn plan<'a>(
    pool: &HbmPool,
    blocks: &'a [u32],
    keys: &'a [BlockKey],
    bounce: &[PinnedBuffer; 2],
) -> Result<(usize, Rounds<'a>)> {
    let bb = pool.geometry().block_bytes();
    let per = rounds(bounce, bb)?;
    if keys.len() != blocks.len() {
        return Err(TierError::Gpu("one key per block is needed".into()));
    }
    Ok((bb, blocks.chunks(per).zip(keys.chunks(per)).collect()))
}

fn rounds(bounce: &[PinnedBuffer; 2], block_bytes: usize) -> Result<usize> {
    let per = bounce[0].len().min(bounce[1].len()) / block_bytes;
    if per == 0 {
        return Err(TierError::Gpu(format!(
            "bounce buffers of {} bytes hold no block of {block_bytes}",
            bounce[0].len().min(bounce[1].len())
        )));
    }
    Ok(per)
}

fn block_slices(buf: &mut PinnedBuffer, n: usize, block_bytes: usize) -> Vec<&mut [u8]> {
    buf.as_mut_slice()[..n * block_bytes]
        .chunks_exact_mut(block_bytes)
        .collect()
}

/// Offloads `blocks` of `pool` and stores them in `disk` under `keys`.
pub async fn hbm_to_disk(
    engine: &TransferEngine,
    pool: &HbmPool,
    blocks: &[u32],
    keys: &[BlockKey],
    disk: &DiskTier,
    bounce: &mut [PinnedBuffer; 2],
) -> Result<TransferStats> {
    let (bb, chunks) = plan(pool, blocks, keys, bounce)?;
    let started = Instant::now();
    let [a, b] = bounce;
    let mut bufs = [a, b];
    let mut pending: Option<(usize, usize)> = None; // (buffer, round) written to disk next
    for (r, (bl, _)) in chunks.iter().enumerate() {
        let (cur, other) = {
            let [x, y] = &mut bufs;
            if r % 2 == 0 { (x, y) } else { (y, x) }
        };
        let mut slices = block_slices(cur, bl.len(), bb);
        let offload = engine.offload(pool, bl, &mut slices);
        // Meanwhile the previous round goes to disk from the other buffer.
        let write = async {
            if let Some((_, pr)) = pending {
                let data = other.as_slice();
                let puts = chunks[pr].1.iter().enumerate().map(|(i, &k)| {
                    let block = Bytes::copy_from_slice(&data[i * bb..(i + 1) * bb]);
                    disk.put(k, block)
                });
                try_join_all(puts).await?;
            }
            Ok::<_, TierError>(())
        };
        let (o, w) = futures::join!(offload, write);
        o?;
        w?;
        pending = Some((r % 2, r));
    }
    if let Some((buf, pr)) = pending {
        let data = bufs[buf].as_slice();
        let puts = chunks[pr]
            .1
            .iter()
            .enumerate()
            .map(|(i, &k)| disk.put(k, Bytes::copy_from_slice(&data[i * bb..(i + 1) * bb])));
        try_join_all(puts).await?;
    }
    Ok(TransferStats {
        blocks: blocks.len(),
        bytes: blocks.len() * bb,
        elapsed: started.elapsed(),
    })
}

/// Reads `keys` from `disk` and onboards them into `blocks` of `pool`.
pub async fn disk_to_hbm(
    engine: &TransferEngine,
    pool: &HbmPool,
    blocks: &[u32],
    keys: &[BlockKey],
    disk: &DiskTier,
    bounce: &mut [PinnedBuffer; 2],
) -> Result<TransferStats> {
    let (bb, chunks) = plan(pool, blocks, keys, bounce)?;
    let started = Instant::now();
    let [a, b] = bounce;
    let mut bufs = [a, b];
    if let Some((_, ks)) = chunks.first() {
        read_round(disk, bufs[0].as_mut_slice(), ks, bb).await?;
    }
    for r in 0..chunks.len() {
        let (cur, other) = {
            let [x, y] = &mut bufs;
            if r % 2 == 0 { (x, y) } else { (y, x) }
        };
        let (bl, _) = chunks[r];
        let src: Vec<&[u8]> = cur.as_slice()[..bl.len() * bb].chunks_exact(bb).collect();
        let onboard = engine.onboard(pool, bl, &src);
        // Meanwhile the next round comes from disk into the other buffer.
        let next = async {
            match chunks.get(r + 1) {
                Some((_, ks)) => read_round(disk, other.as_mut_slice(), ks, bb).await,
                None => Ok(()),
            }
        };
        let (o, n) = futures::join!(onboard, next);
        o?;
        n?;
    }
    Ok(TransferStats {
        blocks: blocks.len(),
        bytes: blocks.len() * bb,
        elapsed: started.elapsed(),
    })
}

/// Reads `keys` from `disk` into consecutive blocks of `dst`.
async fn read_round(disk: &DiskTier, dst: &mut [u8], keys: &[BlockKey], bb: usize) -> Result<()> {
    let got = try_join_all(keys.iter().map(|&k| disk.get(k))).await?;
    for (i, (g, k)) in got.into_iter().zip(keys).enumerate() {
        let g = g.ok_or_else(|| TierError::Gpu(format!("block {k} is not on disk")))?;
        if g.len() != bb {
            return Err(TierError::Gpu(format!(
                "block {k} has {} bytes, not {bb}",
                g.len()
            )));
        }
        dst[i * bb..(i + 1) * bb].copy_from_slice(&g);
    }
    Ok(())
}

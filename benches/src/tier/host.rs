//! Host tier rows: put (copy into a slot) and get (view of a slot, copied into the
//! caller's buffer, which is what a consumer does), against memcpy over the same bytes
//! between the same kinds of buffers. Rounds alternate tier and baseline; medians.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tierkv_tiers::{HostTier, HostTierConfig, Tier};

use super::{RowPlan, key};
use crate::drive::{drive, drive_sync, median};
use crate::report::{Baseline, Measurement, Row, byte_row};

pub(super) async fn bench(
    name: &str,
    config: HostTierConfig,
    plan: RowPlan,
    data: &Bytes,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let tier = Arc::new(HostTier::new(config)?);
    let mut arena = vec![1u8; ops * block];
    let out = Arc::new(Mutex::new(vec![1u8; block]));
    let (mut put, mut get, mut base_in, mut base_out) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        // memcpy: one source into `ops` distinct destinations, and back out into one.
        base_in.push(drive_sync(ops, |i| {
            arena[i * block..(i + 1) * block].copy_from_slice(data);
            block as u64
        }));
        {
            let mut dst = out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            base_out.push(drive_sync(ops, |i| {
                dst.copy_from_slice(&arena[i * block..(i + 1) * block]);
                std::hint::black_box(&dst);
                block as u64
            }));
        }
        let (p, g) = round(&tier, ops, block, data, &out).await?;
        put.push(p);
        get.push(g);
    }
    Ok(vec![
        byte_row(
            name,
            "put",
            block as u64,
            1,
            &median(put),
            &Baseline::measured("memcpy", &median(base_in)),
        ),
        byte_row(
            name,
            "get",
            block as u64,
            1,
            &median(get),
            &Baseline::measured("memcpy", &median(base_out)),
        ),
    ])
}

async fn round(
    tier: &Arc<HostTier>,
    ops: usize,
    block: usize,
    data: &Bytes,
    out: &Arc<Mutex<Vec<u8>>>,
) -> anyhow::Result<(Measurement, Measurement)> {
    let (t, d) = (Arc::clone(tier), data.clone());
    let put = drive(ops, 1, move |i| {
        let (t, d) = (Arc::clone(&t), d.clone());
        async move {
            t.put(key(i), d).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let (t, out) = (Arc::clone(tier), Arc::clone(out));
    let get = drive(ops, 1, move |i| {
        let (t, out) = (Arc::clone(&t), Arc::clone(&out));
        async move {
            let got = t
                .get(key(i))
                .await?
                .ok_or_else(|| anyhow::anyhow!("host block {i} missing"))?;
            let mut buf = out.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            buf.copy_from_slice(&got);
            Ok(block as u64)
        }
    })
    .await?;
    for i in 0..ops {
        tier.remove(key(i)).await?;
    }
    Ok((put, get))
}

//! Host tier rows: put (copy into a slot) and get (view of a slot, copied into the
//! caller's buffer, which is what a consumer does), against memcpy over the same bytes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tierkv_tiers::{HostTier, HostTierConfig, Tier};

use super::{RowPlan, key};
use crate::drive::{drive, drive_sync};
use crate::report::{Baseline, Row, byte_row};

pub async fn bench(
    name: &str,
    config: HostTierConfig,
    plan: RowPlan,
    data: &Bytes,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let tier = Arc::new(HostTier::new(config)?);

    // Baselines: memcpy of the same sizes between the same kinds of buffers: one source
    // into `ops` distinct destinations, and back out into one destination.
    let mut arena = vec![1u8; ops * block];
    let mut dst = vec![1u8; block];
    let memcpy_in = drive_sync(ops, |i| {
        arena[i * block..(i + 1) * block].copy_from_slice(data);
        block as u64
    });
    let memcpy_out = drive_sync(ops, |i| {
        dst.copy_from_slice(&arena[i * block..(i + 1) * block]);
        std::hint::black_box(&dst);
        block as u64
    });
    drop(arena);

    let (t, d) = (Arc::clone(&tier), data.clone());
    let put = drive(ops, 1, move |i| {
        let (t, d) = (Arc::clone(&t), d.clone());
        async move {
            t.put(key(i), d).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let out = Arc::new(Mutex::new(dst));
    let t = Arc::clone(&tier);
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
    Ok(vec![
        byte_row(
            name,
            "put",
            block as u64,
            1,
            &put,
            &Baseline::measured("memcpy", &memcpy_in),
        ),
        byte_row(
            name,
            "get",
            block as u64,
            1,
            &get,
            &Baseline::measured("memcpy", &memcpy_out),
        ),
    ])
}

//! Object tier rows: puts and gets through the tier (header, checksum, index, bounded
//! concurrency) against raw `object_store` puts and gets of the same payloads.

use std::sync::Arc;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tierkv_tiers::{ObjectTier, ObjectTierConfig, Tier};

use super::{RowPlan, key};
use crate::drive::drive;
use crate::report::{Baseline, Row, byte_row};

pub async fn bench(
    name: &str,
    config: ObjectTierConfig,
    plan: RowPlan,
    data: &Bytes,
    concurrency: usize,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let prefix = config.prefix.clone();
    let tier = Arc::new(ObjectTier::open(config).await?);
    let store = tier.store();

    // Raw object_store first, then the tier, on the same backend.
    let raw_path = move |i: usize| ObjectPath::from(format!("{prefix}-raw/{i}"));
    let (s, d, p) = (Arc::clone(&store), data.clone(), raw_path.clone());
    let raw_put = drive(ops, concurrency, move |i| {
        let (s, d, path) = (Arc::clone(&s), d.clone(), p(i));
        async move {
            s.put(&path, d.into()).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let (s, p) = (Arc::clone(&store), raw_path.clone());
    let raw_get = drive(ops, concurrency, move |i| {
        let (s, path) = (Arc::clone(&s), p(i));
        async move { Ok(s.get(&path).await?.bytes().await?.len() as u64) }
    })
    .await?;

    let (t, d) = (Arc::clone(&tier), data.clone());
    let put = drive(ops, concurrency, move |i| {
        let (t, d) = (Arc::clone(&t), d.clone());
        async move {
            t.put(key(i), d).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let t = Arc::clone(&tier);
    let get = drive(ops, concurrency, move |i| {
        let t = Arc::clone(&t);
        async move {
            let got = t
                .get(key(i))
                .await?
                .ok_or_else(|| anyhow::anyhow!("object block {i} missing"))?;
            Ok(got.len() as u64)
        }
    })
    .await?;

    // Clean up both sets of objects.
    for i in 0..ops {
        tier.remove(key(i)).await?;
        let _ = store.delete(&raw_path(i)).await;
    }
    let label = "raw object_store";
    Ok(vec![
        byte_row(
            name,
            "put",
            block as u64,
            concurrency,
            &put,
            &Baseline::measured(label, &raw_put),
        ),
        byte_row(
            name,
            "get",
            block as u64,
            concurrency,
            &get,
            &Baseline::measured(label, &raw_get),
        ),
    ])
}

//! Object tier rows: puts and gets through the tier (header, checksum, index, bounded
//! concurrency) against raw `object_store` puts and gets of the same payloads on the
//! same backend. Rounds alternate tier and baseline; medians.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tierkv_tiers::{ObjectTier, ObjectTierConfig};

use super::{RowPlan, put_get_round};
use crate::drive::{drive, median};
use crate::report::{Baseline, Measurement, Row, byte_row};

pub(super) async fn bench(
    name: &str,
    config: ObjectTierConfig,
    plan: RowPlan,
    data: &Bytes,
    concurrency: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let prefix = config.prefix.clone();
    let tier = Arc::new(ObjectTier::open(config).await?);
    let store = tier.store();
    let (mut put, mut get, mut raw_put, mut raw_get) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let (p, g) = raw_round(&store, &prefix, ops, block, concurrency, data).await?;
        raw_put.push(p);
        raw_get.push(g);
        let (p, g) = put_get_round(tier.clone(), ops, block, concurrency, data).await?;
        put.push(p);
        get.push(g);
    }
    let label = "raw object_store";
    let (put, get) = (median(put), median(get));
    Ok(vec![
        byte_row(
            name,
            "put",
            block as u64,
            concurrency,
            &put,
            &Baseline::measured(label, &median(raw_put)),
        ),
        byte_row(
            name,
            "get",
            block as u64,
            concurrency,
            &get,
            &Baseline::measured(label, &median(raw_get)),
        ),
    ])
}

async fn raw_round(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    ops: usize,
    block: usize,
    concurrency: usize,
    data: &Bytes,
) -> anyhow::Result<(Measurement, Measurement)> {
    let base = format!("{prefix}-raw");
    let path = move |i: usize| ObjectPath::from(format!("{base}/{i}"));
    let (s, d, p) = (Arc::clone(store), data.clone(), path.clone());
    let put = drive(ops, concurrency, move |i| {
        let (s, d, path) = (Arc::clone(&s), d.clone(), p(i));
        async move {
            s.put(&path, d.into()).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let (s, p) = (Arc::clone(store), path.clone());
    let get = drive(ops, concurrency, move |i| {
        let (s, path) = (Arc::clone(&s), p(i));
        async move { Ok(s.get(&path).await?.bytes().await?.len() as u64) }
    })
    .await?;
    for i in 0..ops {
        store.delete(&path(i)).await?;
    }
    Ok((put, get))
}

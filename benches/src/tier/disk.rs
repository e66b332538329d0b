//! Disk tier rows: concurrent puts and gets at the configured queue depth, against fio
//! (io_uring, O_DIRECT, same block size and queue depth, same filesystem).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tierkv_tiers::{DiskTier, DiskTierConfig, Tier};

use super::{RowPlan, key};
use crate::drive::drive;
use crate::fio;
use crate::report::{Baseline, Row, byte_row};

pub async fn bench(
    name: &str,
    config: DiskTierConfig,
    plan: RowPlan,
    data: &Bytes,
    fio_ok: bool,
    fio_file: &Path,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let qd = config.queue_depth;
    let dir = config.path.clone();
    let tier = Arc::new(DiskTier::open(config)?);

    let (t, d) = (Arc::clone(&tier), data.clone());
    let put = drive(ops, qd as usize, move |i| {
        let (t, d) = (Arc::clone(&t), d.clone());
        async move {
            t.put(key(i), d).await?;
            Ok(block as u64)
        }
    })
    .await?;
    let t = Arc::clone(&tier);
    let get = drive(ops, qd as usize, move |i| {
        let t = Arc::clone(&t);
        async move {
            let got = t
                .get(key(i))
                .await?
                .ok_or_else(|| anyhow::anyhow!("disk block {i} missing"))?;
            Ok(got.len() as u64)
        }
    })
    .await?;
    drop(tier);
    let _ = std::fs::remove_dir_all(&dir);

    let size = (ops * block) as u64;
    let label = format!("fio io_uring qd{qd}");
    let missing = Baseline {
        name: label.clone(),
        gbps: None,
        p99_us: None,
        note: Some("fio is not installed (apt-get install fio): no baseline".into()),
    };
    let (write_base, read_base) = if fio_ok {
        let run = |rw: &'static str| {
            let file = fio_file.to_path_buf();
            tokio::task::spawn_blocking(move || fio::run(&file, rw, block as u64, qd, size))
        };
        let w = run("write").await??;
        let r = run("read").await??;
        let _ = std::fs::remove_file(fio_file);
        let as_baseline = |f: fio::FioResult| Baseline {
            name: label.clone(),
            gbps: Some(f.gbps),
            p99_us: Some(f.p99_us),
            note: None,
        };
        (as_baseline(w), as_baseline(r))
    } else {
        (missing.clone(), missing)
    };
    Ok(vec![
        byte_row(name, "put", block as u64, qd as usize, &put, &write_base),
        byte_row(name, "get", block as u64, qd as usize, &get, &read_base),
    ])
}

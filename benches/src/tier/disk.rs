//! Disk tier rows: concurrent puts and gets at the configured queue depth, against fio
//! (io_uring, O_DIRECT, same block size and queue depth, same filesystem). Rounds
//! alternate tier and fio; medians.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tierkv_tiers::{DiskTier, DiskTierConfig};

use super::{RowPlan, put_get_round};
use crate::drive::median;
use crate::fio;
use crate::report::{Baseline, Row, byte_row};

pub(super) async fn bench(
    name: &str,
    config: DiskTierConfig,
    plan: RowPlan,
    data: &Bytes,
    fio_file: Option<&Path>,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let RowPlan { block, ops } = plan;
    let qd = config.queue_depth;
    let dir = config.path.clone();
    let tier = Arc::new(DiskTier::open(config)?);
    let label = format!("fio io_uring qd{qd}");
    let size = (ops * block) as u64;
    let (mut put, mut get, mut fio_w, mut fio_r) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        if let Some(file) = fio_file {
            let run = |rw: &'static str| {
                let file = file.to_path_buf();
                tokio::task::spawn_blocking(move || fio::run(&file, rw, block as u64, qd, size))
            };
            fio_w.push(run("write").await??);
            fio_r.push(run("read").await??);
        }
        let (p, g) = put_get_round(tier.clone(), ops, block, qd as usize, data).await?;
        put.push(p);
        get.push(g);
    }
    drop(tier);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(file) = fio_file {
        let _ = std::fs::remove_file(file);
    }
    let pick = |mut runs: Vec<fio::FioResult>| -> Baseline {
        runs.sort_by(|a, b| a.gbps.total_cmp(&b.gbps));
        match runs.get(runs.len() / 2) {
            Some(f) => Baseline {
                name: label.clone(),
                gbps: Some(f.gbps),
                p99_us: Some(f.p99_us),
                note: None,
            },
            None => Baseline {
                name: label.clone(),
                gbps: None,
                p99_us: None,
                note: Some("fio is not installed (apt-get install fio): no baseline".into()),
            },
        }
    };
    Ok(vec![
        byte_row(
            name,
            "put",
            block as u64,
            qd as usize,
            &median(put),
            &pick(fio_w),
        ),
        byte_row(
            name,
            "get",
            block as u64,
            qd as usize,
            &median(get),
            &pick(fio_r),
        ),
    ])
}

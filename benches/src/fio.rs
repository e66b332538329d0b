//! The disk baseline: `fio` with io_uring and O_DIRECT at the same block size and queue
//! depth, on the same filesystem as the disk tier.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// fio's figures for one job.
#[derive(Clone, Debug)]
pub(crate) struct FioResult {
    pub gbps: f64,
    pub p99_us: f64,
}

/// Whether fio can be run; the reason when not.
pub(crate) fn available() -> Result<(), String> {
    match Command::new("fio").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`fio --version` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(_) => {
            Err("fio is not installed (apt-get install fio); disk rows have no baseline".into())
        }
    }
}

/// Runs one sequential `rw` ("write" or "read") job over `file`.
pub(crate) fn run(
    file: &Path,
    rw: &str,
    block: u64,
    queue_depth: u32,
    size: u64,
) -> anyhow::Result<FioResult> {
    let out = Command::new("fio")
        .arg("--name=tierkv-baseline")
        .arg(format!("--filename={}", file.display()))
        .args([
            "--ioengine=io_uring",
            "--direct=1",
            "--numjobs=1",
            "--output-format=json",
        ])
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={block}"))
        .arg(format!("--iodepth={queue_depth}"))
        .arg(format!("--size={size}"))
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&out.stdout, rw)
}

fn parse(json: &[u8], rw: &str) -> anyhow::Result<FioResult> {
    // fio may print warnings before the JSON document.
    let start = json
        .iter()
        .position(|&b| b == b'{')
        .context("no JSON in fio output")?;
    let v: Value = serde_json::from_slice(&json[start..]).context("parsing fio JSON")?;
    let job = &v["jobs"][0][rw];
    let bw = job["bw_bytes"]
        .as_f64()
        .context("fio JSON lacks bw_bytes")?;
    let pct = |p: &str| job["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    Ok(FioResult {
        gbps: bw / 1e9,
        p99_us: pct("99.000000"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_json_after_warnings() {
        let out = br#"fio: some warning
{"jobs":[{"read":{"bw_bytes":2000000000,"clat_ns":{"percentile":{"50.000000":1500,"99.000000":9000,"99.900000":12000}}}}]}"#;
        let r = parse(out, "read").unwrap();
        assert_eq!(r.gbps, 2.0);
        assert_eq!(r.p99_us, 9.0);
        assert!(parse(b"no json", "read").is_err());
        assert!(parse(br#"{"jobs":[{}]}"#, "write").is_err());
    }
}

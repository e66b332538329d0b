//! The Mooncake Store baseline: `benches/py/mooncake_bench.py` under a Python that has
//! `mooncake-transfer-engine-non-cuda` (`pip install mooncake-transfer-engine-non-cuda`),
//! run in the same `tierkv-bench service` invocation.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::report::Measurement;

#[derive(Deserialize)]
struct Output {
    rows: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    block: u64,
    clients: usize,
    op: String,
    bytes: u64,
    wall_s: f64,
    latencies_s: Vec<f64>,
    server_cpu_s: Option<f64>,
}

/// Per (block, clients): puts and gets of every round, with server CPU seconds.
#[derive(Default)]
pub(super) struct MooncakeRuns {
    pub put: Vec<Measurement>,
    pub get: Vec<Measurement>,
    pub put_cpu_per_gb: Vec<f64>,
    pub get_cpu_per_gb: Vec<f64>,
}

/// Runs the Mooncake benchmark; `Err` (with the reason) when Mooncake is not there.
pub(super) fn run(
    python: &Path,
    sizes: &[usize],
    clients: &[usize],
    ops: usize,
    rounds: usize,
) -> anyhow::Result<HashMap<(u64, usize), MooncakeRuns>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/mooncake_bench.py");
    let join = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(["--sizes", &join(sizes), "--clients", &join(clients)])
        .args(["--ops", &ops.to_string(), "--rounds", &rounds.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the Mooncake benchmark failed ({}); is mooncake-transfer-engine-non-cuda installed for {}?",
        out.status,
        python.display()
    );
    let parsed: Output =
        serde_json::from_slice(&out.stdout).context("reading the Mooncake benchmark's output")?;
    let mut runs: HashMap<(u64, usize), MooncakeRuns> = HashMap::new();
    for s in parsed.rows {
        let m = Measurement {
            latencies: s
                .latencies_s
                .iter()
                .map(|x| Duration::from_secs_f64(x.max(0.0)))
                .collect(),
            wall: Duration::from_secs_f64(s.wall_s.max(1e-9)),
            bytes: s.bytes,
        };
        let per_gb = s.server_cpu_s.map(|c| c / (s.bytes as f64 / 1e9));
        let e = runs.entry((s.block, s.clients)).or_default();
        match s.op.as_str() {
            "put" => {
                e.put.push(m);
                e.put_cpu_per_gb.extend(per_gb);
            }
            _ => {
                e.get.push(m);
                e.get_cpu_per_gb.extend(per_gb);
            }
        }
    }
    Ok(runs)
}

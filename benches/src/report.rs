//! Benchmark rows, percentiles, the human table and the JSON file.

use std::time::Duration;

use serde::Serialize;

/// One measured operation beside its baseline, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub tier: String,
    pub op: String,
    pub block_bytes: u64,
    /// Operations measured.
    pub ops: u64,
    /// Concurrency (tasks or I/O queue depth) used for both the row and its baseline.
    pub concurrency: usize,
    /// Throughput in GB/s (10^9 bytes), `null` for rows measured in another unit.
    pub gbps: Option<f64>,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// What the row is compared with.
    pub baseline: String,
    pub baseline_gbps: Option<f64>,
    /// The baseline's p99 latency, where it reports one.
    pub baseline_p99_us: Option<f64>,
    /// The figure in `unit` (for byte rows, equal to `gbps`).
    pub value: f64,
    pub baseline_value: f64,
    pub unit: String,
    /// value / baseline_value; `null` when the baseline could not run.
    pub ratio: Option<f64>,
    /// Why the baseline is missing, or what to keep in mind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Latencies of a batch of operations and the wall time they took together.
#[derive(Clone, Debug, Default)]
pub(crate) struct Measurement {
    pub latencies: Vec<Duration>,
    pub wall: Duration,
    pub bytes: u64,
}

impl Measurement {
    pub(crate) fn gbps(&self) -> f64 {
        if self.wall.is_zero() {
            return 0.0;
        }
        self.bytes as f64 / self.wall.as_secs_f64() / 1e9
    }

    /// The `q` quantile (0..=1) of the latencies, in microseconds.
    pub(crate) fn percentile_us(&self, q: f64) -> f64 {
        percentile_us(&self.latencies, q)
    }
}

pub(crate) fn percentile_us(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let mut v: Vec<Duration> = latencies.to_vec();
    v.sort_unstable();
    // Nearest rank; the epsilon keeps 1000 * 0.999 from rounding up to 1000.
    let idx = ((v.len() as f64 * q - 1e-9).ceil() as usize).clamp(1, v.len()) - 1;
    v[idx].as_secs_f64() * 1e6
}

/// A baseline's figures; `gbps: None` when it could not run.
#[derive(Clone, Debug)]
pub(crate) struct Baseline {
    pub name: String,
    pub gbps: Option<f64>,
    pub p99_us: Option<f64>,
    pub note: Option<String>,
}

impl Baseline {
    pub(crate) fn measured(name: &str, m: &Measurement) -> Baseline {
        Baseline {
            name: name.into(),
            gbps: Some(m.gbps()),
            p99_us: Some(m.percentile_us(0.99)),
            note: None,
        }
    }
}

/// A byte-throughput row from a measurement and its baseline.
pub(crate) fn byte_row(
    tier: &str,
    op: &str,
    block_bytes: u64,
    concurrency: usize,
    m: &Measurement,
    baseline: &Baseline,
) -> Row {
    let gbps = m.gbps();
    let base = baseline.gbps;
    Row {
        tier: tier.into(),
        op: op.into(),
        block_bytes,
        ops: m.latencies.len() as u64,
        concurrency,
        gbps: Some(gbps),
        p50_us: m.percentile_us(0.50),
        p99_us: m.percentile_us(0.99),
        p999_us: m.percentile_us(0.999),
        baseline: baseline.name.clone(),
        baseline_gbps: base,
        baseline_p99_us: baseline.p99_us,
        value: gbps,
        baseline_value: base.unwrap_or(0.0),
        unit: "GB/s".into(),
        ratio: base.filter(|b| *b > 0.0).map(|b| gbps / b),
        note: baseline.note.clone(),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// Prints the rows as an aligned table.
pub(crate) fn print_table(rows: &[Row]) {
    let header = [
        "tier",
        "op",
        "block",
        "value",
        "unit",
        "p50 us",
        "p99 us",
        "p999 us",
        "baseline",
        "baseline value",
        "base p99 us",
        "ratio",
    ];
    let cells: Vec<[String; 12]> = rows
        .iter()
        .map(|r| {
            [
                r.tier.clone(),
                r.op.clone(),
                human_bytes(r.block_bytes),
                format!("{:.2}", r.value),
                r.unit.clone(),
                format!("{:.1}", r.p50_us),
                format!("{:.1}", r.p99_us),
                format!("{:.1}", r.p999_us),
                r.baseline.clone(),
                if r.ratio.is_some() {
                    format!("{:.2}", r.baseline_value)
                } else {
                    "n/a".into()
                },
                r.baseline_p99_us.map_or("-".into(), |x| format!("{x:.1}")),
                r.ratio.map_or("n/a".into(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<String>| {
        let padded: Vec<String> = cols
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(header.iter().map(|s| s.to_string()).collect());
    println!(
        "|{}|",
        width
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in cells {
        line(row.to_vec());
    }
    for r in rows.iter().filter(|r| r.note.is_some()) {
        if let Some(note) = &r.note {
            println!(
                "note ({} {} {}): {note}",
                r.tier,
                r.op,
                human_bytes(r.block_bytes)
            );
        }
    }
}

/// Writes the rows as JSON to `path`, when given.
pub(crate) fn write_json(rows: &[Row], path: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(rows)?;
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_sample() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(percentile_us(&v, 0.5), 500.0));
        assert!(close(percentile_us(&v, 0.99), 990.0));
        assert!(close(percentile_us(&v, 0.999), 999.0));
        assert!(close(percentile_us(&v[..1], 0.999), 1.0));
        assert_eq!(percentile_us(&[], 0.5), 0.0);
    }

    #[test]
    fn rows_compute_throughput_and_ratio() {
        let m = Measurement {
            latencies: vec![Duration::from_millis(1); 10],
            wall: Duration::from_secs(1),
            bytes: 2_000_000_000,
        };
        let base = Baseline {
            name: "memcpy".into(),
            gbps: Some(4.0),
            p99_us: Some(3.0),
            note: None,
        };
        let r = byte_row("host", "get", 1 << 20, 1, &m, &base);
        assert_eq!(r.gbps, Some(2.0));
        assert_eq!(r.ratio, Some(0.5));
        assert_eq!(r.baseline_p99_us, Some(3.0));
        let missing = Baseline {
            gbps: None,
            note: Some("fio missing".into()),
            ..base
        };
        let r = byte_row("disk", "get", 1 << 20, 1, &m, &missing);
        assert_eq!(r.ratio, None);
        assert_eq!(r.note.as_deref(), Some("fio missing"));
    }
}

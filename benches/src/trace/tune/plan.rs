//! What `tune` tells a planner: the table of points, the Pareto frontier of cost
//! against TTFT saved, the bandwidth each tier must deliver at the trace's request
//! rate, and the charts.

use super::sweep::Point;

/// Hit rate and TTFT saved against host capacity (no disk) and against disk capacity
/// (the smallest host), at the recommendation's block size, write-back, promotion on.
pub(super) fn plot_sweep(points: &[Point], rec: &Point, dir: &std::path::Path) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let pick = |host_only: bool| -> Vec<&Point> {
        let min_host = points
            .iter()
            .filter(|p| p.block_tokens == rec.block_tokens)
            .map(|p| p.host_bytes)
            .min()
            .unwrap_or(0);
        let mut v: Vec<&Point> = points
            .iter()
            .filter(|p| p.block_tokens == rec.block_tokens && !p.write_through && p.promote)
            .filter(|p| {
                if host_only {
                    p.disk_bytes == 0
                } else {
                    p.host_bytes == min_host
                }
            })
            .collect();
        v.sort_by_key(|p| {
            if host_only {
                p.host_bytes
            } else {
                p.disk_bytes
            }
        });
        v
    };
    let (host, disk) = (pick(true), pick(false));
    let series = |f: &dyn Fn(&Point) -> f64| {
        vec![
            crate::plot::Series {
                name: "host capacity (no disk)".into(),
                points: host.iter().map(|p| (gib(p.host_bytes), f(p))).collect(),
            },
            crate::plot::Series {
                name: "disk capacity (smallest host)".into(),
                points: disk.iter().map(|p| (gib(p.disk_bytes), f(p))).collect(),
            },
        ]
    };
    let charts = [
        (
            "tune-hit-rate",
            "Hit rate vs capacity",
            "hit rate (%)",
            series(&|p| p.hit_rate * 100.0),
        ),
        (
            "tune-ttft-saved",
            "TTFT saved vs capacity",
            "TTFT saved (s)",
            series(&|p| p.ttft_saved_s),
        ),
    ];
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("note: no charts: {e}");
        return;
    }
    for (stem, title, y, s) in charts {
        crate::plot::line_chart_or_note(&dir.join(stem), title, "capacity (GiB)", y, &s);
    }
}

/// Layers, KV heads, head size and bytes per element of a model's KV.
type KvShape = (u64, u64, u64, u64);

/// KV bytes of one token on one tensor-parallel rank: K and V of every layer, its share
/// of the KV heads, at the model's dtype. `model` is a Hugging Face `config.json` or a
/// known name.
pub(super) fn model_bytes_per_token(model: &str, tp: u64) -> anyhow::Result<u64> {
    anyhow::ensure!(tp > 0, "--tp must be > 0");
    let known: &[(&str, KvShape)] = &[
        ("qwen3-32b", (64, 8, 128, 2)),
        ("qwen3-8b", (36, 8, 128, 2)),
        ("llama-3.1-8b", (32, 8, 128, 2)),
        ("llama-3.1-70b", (80, 8, 128, 2)),
        ("smollm2-135m", (30, 3, 64, 2)),
    ];
    let (layers, kv_heads, head_dim, elem) = match known.iter().find(|(n, _)| *n == model) {
        Some((_, dims)) => *dims,
        None => {
            let text = std::fs::read_to_string(model).map_err(|e| {
                let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                anyhow::anyhow!(
                    "--model {model}: not a known model ({}) nor a readable config.json: {e}",
                    names.join(", ")
                )
            })?;
            let c: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--model {model}: not JSON: {e}"))?;
            let field = |k: &str| c.get(k).and_then(serde_json::Value::as_u64);
            let layers = field("num_hidden_layers")
                .ok_or_else(|| anyhow::anyhow!("{model}: no num_hidden_layers"))?;
            let heads = field("num_attention_heads")
                .ok_or_else(|| anyhow::anyhow!("{model}: no num_attention_heads"))?;
            let kv_heads = field("num_key_value_heads").unwrap_or(heads);
            let head_dim = match field("head_dim") {
                Some(d) => d,
                None => {
                    field("hidden_size")
                        .ok_or_else(|| anyhow::anyhow!("{model}: no head_dim nor hidden_size"))?
                        / heads.max(1)
                }
            };
            let elem = match c.get("torch_dtype").and_then(serde_json::Value::as_str) {
                Some("float32") => 4,
                Some("float8_e4m3fn") | Some("float8_e5m2") => 1,
                _ => 2,
            };
            (layers, kv_heads, head_dim, elem)
        }
    };
    // A rank holds at least one KV head (heads are replicated past kv_heads ranks).
    let per_rank_heads = kv_heads.div_ceil(tp).max(1);
    Ok(2 * layers * per_rank_heads * head_dim * elem)
}

/// Whether a point's per-node share fits the per-node caps.
pub(super) fn fits(p: &Point, nodes: u64, max_host: Option<u64>, max_disk: Option<u64>) -> bool {
    let nodes = nodes.max(1);
    max_host.is_none_or(|m| p.host_bytes.div_ceil(nodes) <= m)
        && max_disk.is_none_or(|m| p.disk_bytes.div_ceil(nodes) <= m)
}

/// The Pareto frontier of cost against TTFT saved: each point saves more than every
/// cheaper one. Cheapest first.
pub(super) fn frontier(points: &[&Point]) -> Vec<Point> {
    let mut by_cost: Vec<&Point> = points.to_vec();
    by_cost.sort_by(|a, b| {
        a.cost
            .total_cmp(&b.cost)
            .then(b.ttft_saved_s.total_cmp(&a.ttft_saved_s))
    });
    let mut out: Vec<Point> = Vec::new();
    for p in by_cost {
        if out.last().is_none_or(|l| p.ttft_saved_s > l.ttft_saved_s) {
            out.push(p.clone());
        }
    }
    out
}

/// Per node, what a point's tiers must deliver at the trace's request rate.
#[derive(Clone, Debug, serde::Serialize)]
pub(super) struct Bandwidth {
    pub host_read_gbps: f64,
    pub disk_read_gbps: f64,
    /// Computed blocks stored (every miss is written to the top tier).
    pub write_gbps: f64,
}

pub(super) fn bandwidth(
    p: &Point,
    block_bytes: u64,
    accesses: u64,
    secs: f64,
    nodes: u64,
) -> Bandwidth {
    let per = |blocks: u64| {
        blocks as f64 * block_bytes as f64 / secs.max(1e-3) / nodes.max(1) as f64 / 1e9
    };
    let misses = accesses.saturating_sub(p.host_hits + p.disk_hits);
    Bandwidth {
        host_read_gbps: per(p.host_hits),
        disk_read_gbps: per(p.disk_hits),
        write_gbps: per(misses),
    }
}

/// One row of the points table.
pub(super) fn show(p: &Point) {
    println!(
        "| {} | {} | {} | {} | {} | {:.1}% | {:.2} | {:.3e} | {:?} |",
        p.block_tokens,
        tierkv_kvstore::ByteSize(p.host_bytes),
        tierkv_kvstore::ByteSize(p.disk_bytes),
        if p.write_through { "through" } else { "back" },
        if p.promote { "on" } else { "off" },
        p.hit_rate * 100.0,
        p.ttft_saved_s,
        p.cost,
        p.source
    )
}

pub(super) const TABLE_HEAD: &str = "| block tokens | host | disk | write | promote | hit rate | TTFT saved s | cost | from |\n|---|---|---|---|---|---|---|---|---|";

/// TTFT saved against cost along the frontier.
pub(super) fn plot_frontier(frontier: &[Point], dir: &std::path::Path) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("note: no charts: {e}");
        return;
    }
    let series = vec![crate::plot::Series {
        name: "Pareto frontier (exact points)".into(),
        points: frontier
            .iter()
            .map(|p| (p.cost / (1u64 << 30) as f64, p.ttft_saved_s))
            .collect(),
    }];
    crate::plot::line_chart_or_note(
        &dir.join("tune-frontier"),
        "TTFT saved vs cost",
        "cost (GiB of disk-equivalent)",
        "TTFT saved (s)",
        &series,
    );
}

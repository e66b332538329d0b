//! `tune` against the exhaustive simulation, and its flags.
use super::sweep::*;
use super::*;
use crate::trace::generate::{GenArgs, generate};
use crate::trace::policy_sim::Interned;
use crate::trace::{TraceRecord, id_trace};
use tierkv_kvstore::StoreConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recommendation_is_a_valid_config_that_replays_as_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("t.jsonl");
    let trace = generate(&GenArgs {
        out: trace_path.clone(),
        requests: 80,
        users: 4,
        turns: 3,
        system_prompts: 2,
        system_tokens: 1024,
        user_tokens: 256,
        output_tokens: 128,
        documents: 2,
        document_tokens: 2048,
        document_share: 0.3,
        zipf: 1.0,
        rate: 50.0,
        seed: 11,
    })
    .unwrap();
    let text: String = trace
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(&trace_path, text).unwrap();
    let out = dir.path().join("recommended.toml");
    let (rec, real) = tune(TuneArgs {
        out: out.clone(),
        max_real_bytes: ByteSize(1 << 30),
        dir: dir.path().join("real"),
        plots: Some(dir.path().join("plots")),
        ..args_for(trace_path, dir.path())
    })
    .await
    .unwrap();
    let config = StoreConfig::from_file(&out).unwrap();
    assert_eq!(config.slot_bytes.0, rec.block_tokens * 64);
    assert!(rec.ttft_saved_s > 0.0);
    let real = real.expect("small enough to replay for real");
    assert!(
        (real.hit_rate - rec.hit_rate).abs() < 1e-9,
        "real {} vs simulated {}",
        real.hit_rate,
        rec.hit_rate
    );
}

fn chat_trace(seed: u64, requests: usize) -> Vec<TraceRecord> {
    generate(&GenArgs {
        out: PathBuf::from("unused"),
        requests,
        users: 6,
        turns: 4,
        system_prompts: 3,
        system_tokens: 1024,
        user_tokens: 256,
        output_tokens: 128,
        documents: 3,
        document_tokens: 2048,
        document_share: 0.3,
        zipf: 1.0,
        rate: 50.0,
        seed,
    })
    .unwrap()
}

/// A generated chat trace written as JSON lines in `dir`.
fn write_trace(dir: &std::path::Path, seed: u64, requests: usize) -> PathBuf {
    let path = dir.join("t.jsonl");
    let text: String = chat_trace(seed, requests)
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

fn args_for(trace_path: PathBuf, dir: &std::path::Path) -> TuneArgs {
    TuneArgs {
        trace: trace_path,
        out: dir.join("rec.toml"),
        json: None,
        block_tokens: vec![64, 128],
        bytes_per_token: 64,
        prefill_tokens_per_s: 1000.0,
        host_gbps: 10.0,
        disk_gbps: 1.0,
        host_cost: 10.0,
        target: 0.8,
        max_real_bytes: ByteSize(0),
        dir: dir.join("sim"),
        plots: None,
        exact: false,
        through_store: false,
        shortlist: 3,
        sample_rate: 1.0,
        model: None,
        tp: 1,
        nodes: 1,
        max_host_per_node: None,
        max_disk_per_node: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pass_curves_equal_the_simulation_for_one_tier_and_bound_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut worst_model = 0f64;
    for seed in [1, 2, 3] {
        let trace = chat_trace(seed, 120);
        let args = args_for(PathBuf::from("unused"), dir.path());
        for &bt in &args.block_tokens {
            let grid = grid(&args, &trace, bt);
            let curve = curve_for(&args, &trace, bt, &grid);
            for p in grid.iter().filter(|p| !p.write_through && p.promote) {
                let (h, d) = capacities(&args, p);
                let mut sim = p.clone();
                simulate(&mut sim, &args, &trace).await.unwrap();
                if p.disk_bytes == 0 {
                    assert_eq!(
                        (curve.hits(h), 0),
                        (sim.host_hits, sim.disk_hits),
                        "seed {seed}, {bt}-token blocks, host {h} blocks"
                    );
                } else {
                    let (host, disk) = curve.split(h, d).unwrap();
                    let model = (host + disk) as f64 / curve.accesses as f64;
                    worst_model = worst_model.max((model - sim.hit_rate).abs());
                }
            }
        }
    }
    println!("exclusive model vs simulation: worst hit-rate error {worst_model:.4}");
    assert!(worst_model < MODEL_BOUND, "model error {worst_model}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_sweep_recommends_what_the_exact_sweep_does() {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path(), 7, 150);
    let fast = tune(args_for(trace_path.clone(), dir.path()))
        .await
        .unwrap()
        .0;
    let exact = tune(TuneArgs {
        exact: true,
        ..args_for(trace_path.clone(), dir.path())
    })
    .await
    .unwrap()
    .0;
    let through_store = tune(TuneArgs {
        exact: true,
        through_store: true,
        ..args_for(trace_path, dir.path())
    })
    .await
    .unwrap()
    .0;
    // The direct policy replay and the store pick the same point with the same hits.
    assert_eq!(
        (exact.block_tokens, exact.host_bytes, exact.disk_bytes),
        (
            through_store.block_tokens,
            through_store.host_bytes,
            through_store.disk_bytes
        )
    );
    assert_eq!(
        (
            exact.host_hits,
            exact.disk_hits,
            exact.write_through,
            exact.promote
        ),
        (
            through_store.host_hits,
            through_store.disk_hits,
            through_store.write_through,
            through_store.promote
        )
    );
    assert!(fast.exact());
    // With sampled curves (SHARDS) every curve point is an estimate, so the pick is
    // still a simulated, exact point.
    let sampled = tune(TuneArgs {
        sample_rate: 0.5,
        ..args_for(write_trace(dir.path(), 7, 150), dir.path())
    })
    .await
    .unwrap()
    .0;
    assert!(sampled.exact(), "{sampled:?}");
    assert!(
        sampled.cost <= exact.cost || sampled.ttft_saved_s >= 0.8 * exact.ttft_saved_s,
        "sampled {sampled:?} vs exact {exact:?}"
    );
    // The fast sweep's pick is exact and reaches the target; it costs at most what
    // the exhaustive sweep's pick does, or saves within the target of it.
    assert!(
        fast.cost <= exact.cost || fast.ttft_saved_s >= 0.8 * exact.ttft_saved_s,
        "fast {fast:?} vs exact {exact:?}"
    );
}

#[tokio::test]
async fn bad_flags_are_refused() {
    let args = TuneArgs {
        trace: PathBuf::from("/nonexistent/trace.jsonl"),
        out: PathBuf::from("unused"),
        json: None,
        block_tokens: vec![16],
        bytes_per_token: 1,
        prefill_tokens_per_s: 1.0,
        host_gbps: 1.0,
        disk_gbps: 1.0,
        host_cost: 1.0,
        target: 1.5,
        max_real_bytes: ByteSize(0),
        dir: PathBuf::from("unused"),
        plots: None,
        exact: false,
        through_store: false,
        shortlist: 3,
        sample_rate: 1.0,
        model: None,
        tp: 1,
        nodes: 1,
        max_host_per_node: None,
        max_disk_per_node: None,
    };
    let err = tune(args.clone()).await.unwrap_err();
    assert!(err.to_string().contains("--target"), "{err}");
    for rate in [0.0, 1.5] {
        let err = tune(TuneArgs {
            target: 0.9,
            sample_rate: rate,
            ..args.clone()
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--sample-rate"), "{rate}: {err}");
    }
    let err = tune(TuneArgs {
        target: 0.9,
        ..args
    })
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/trace.jsonl"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommendation_under_a_per_node_cap_never_exceeds_it() {
    let dir = tempfile::tempdir().unwrap();
    let trace_path = write_trace(dir.path(), 9, 120);
    let base = || TuneArgs {
        bytes_per_token: 16384,
        ..args_for(trace_path.clone(), dir.path())
    };
    let free = tune(base()).await.unwrap().0;
    // Cap each of 2 nodes just under half the free recommendation's disk.
    assert!(free.disk_bytes > 0, "{free:?}");
    let cap = (free.disk_bytes - 1) / 2;
    let capped = tune(TuneArgs {
        nodes: 2,
        max_disk_per_node: Some(ByteSize(cap)),
        ..base()
    })
    .await
    .unwrap()
    .0;
    assert!(
        capped.disk_bytes.div_ceil(2) <= cap,
        "{capped:?} over {cap} per node"
    );
    assert!(capped.disk_bytes < free.disk_bytes);
    // The vLLM form of the recommendation is written beside the TOML.
    let vllm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("rec.vllm.json")).unwrap())
            .unwrap();
    assert_eq!(vllm["kv_connector"], "TierkvConnector");
    assert!(vllm["kv_connector_extra_config"]["config"]["tier"].is_array());
    // A cap nothing fits is a clear error.
    let err = tune(TuneArgs {
        max_host_per_node: Some(ByteSize(1)),
        ..base()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--max-host-per-node"), "{err}");
}

#[test]
fn kv_bytes_per_token_come_from_a_model_name_or_its_config() {
    // Qwen3-32B at TP 2: 64 layers x 2 x 4 KV heads x 128 x bf16 (the old default).
    assert_eq!(plan_bytes("qwen3-32b", 2), 131_072);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576, "torch_dtype": "bfloat16"}"#,
    )
    .unwrap();
    // SmolLM2-135M: 30 x 2 x 3 x 64 x 2 bytes.
    assert_eq!(plan_bytes(config.to_str().unwrap(), 1), 23_040);
    assert!(
        super::plan::model_bytes_per_token("no-such-model", 1)
            .unwrap_err()
            .to_string()
            .contains("not a known model")
    );
}

fn plan_bytes(model: &str, tp: u64) -> u64 {
    super::plan::model_bytes_per_token(model, tp).unwrap()
}

/// The direct policy replay against the replay through the store, at every point of
/// the grid (every capacity pair, write-back and write-through, promotion on and off):
/// the same host and disk hits, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_replay_counts_exactly_what_the_store_replay_does() {
    let dir = tempfile::tempdir().unwrap();
    let args = args_for(PathBuf::from("unused"), dir.path());
    let mut traces: Vec<(String, Vec<TraceRecord>)> = [4, 5, 6]
        .into_iter()
        .map(|seed| (format!("chat seed {seed}"), chat_trace(seed, 100)))
        .collect();
    traces.push(("one block".into(), id_trace(&[&[1], &[1], &[1]])));
    traces.push((
        "all distinct".into(),
        id_trace(
            &(0..40u64)
                .map(|i| vec![3 * i, 3 * i + 1, 3 * i + 2])
                .collect::<Vec<_>>()
                .iter()
                .map(Vec::as_slice)
                .collect::<Vec<_>>(),
        ),
    ));
    traces.push(("all equal".into(), id_trace(&[&[7u64, 8, 9, 10][..]; 30])));
    // Long prefixes shared in a cycle larger than the host: demotions, promotions,
    // write-through copies and disk evictions all happen.
    traces.push((
        "cycling prefixes".into(),
        id_trace(
            &(0..120u64)
                .map(|i| (0..(4 + i % 9)).map(|j| (i % 11) * 100 + j).collect())
                .collect::<Vec<Vec<u64>>>()
                .iter()
                .map(Vec::as_slice)
                .collect::<Vec<_>>(),
        ),
    ));
    let mut compared = 0;
    for (name, trace) in &traces {
        for &bt in &args.block_tokens {
            let blocks = Interned::new(trace, bt);
            let mut grid = grid(&args, trace, bt);
            // Capacity edge cases: one host block, and a disk of one block.
            let mut tiny = grid[0].clone();
            tiny.host_bytes = stride(&args, bt).0;
            tiny.disk_bytes = 0;
            grid.push(tiny.clone());
            tiny.disk_bytes = stride(&args, bt).1;
            tiny.write_through = true;
            grid.push(tiny);
            for p in grid {
                let (mut fast, mut store) = (p.clone(), p.clone());
                simulate_policy(&mut fast, &args, &blocks);
                simulate(&mut store, &args, trace).await.unwrap();
                assert_eq!(
                    (fast.host_hits, fast.disk_hits),
                    (store.host_hits, store.disk_hits),
                    "{name}, {bt}-token blocks, {:?}",
                    policy_for(&p, &args)
                );
                compared += 1;
            }
        }
    }
    assert!(compared > 500, "{compared} points compared");
}

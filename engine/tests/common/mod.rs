//! Shared helpers of the engine tests: the default model, engines over a chosen store,
//! greedy generation.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tierkv_engine::metrics::EngineMetrics;
use tierkv_engine::model::LoadedModel;
use tierkv_engine::{Engine, EngineConfig, GenEvent, GenerateRequest, Usage};
use tierkv_kvstore::{ByteSize, StoreConfig, TieredStore, hash_blocks};

/// The repository's root (these helpers are shared by the engine's and the CLI's tests).
pub(crate) fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .unwrap_or(here)
        .to_path_buf()
}

/// The default model (SmolLM2-135M-Instruct Q4_1), fetched once by `scripts/fetch-model`.
pub(crate) fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/fetch-model"))
            .output()
            .expect("run scripts/fetch-model");
        assert!(
            out.status.success(),
            "scripts/fetch-model failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

pub(crate) fn load_model() -> LoadedModel {
    tierkv_engine::model::load(&model_path()).expect("load the default model")
}

/// A store over `dir` with the given `[[tier]]` tables, slots sized for `block_size`.
pub(crate) fn store_config(dir: &Path, tiers: &str, block_bytes: usize) -> StoreConfig {
    let text = format!("data_dir = {:?}\n{tiers}", dir.display().to_string());
    let mut c = StoreConfig::from_toml(&text).expect("store config");
    c.slot_bytes = ByteSize((block_bytes as u64).div_ceil(4096) * 4096);
    c
}

pub(crate) const HOST: &str = "[[tier]]\nkind = \"host\"\ncapacity = \"64MiB\"\nprefault = false\n";
pub(crate) const DISK: &str = "[[tier]]\nkind = \"disk\"\ncapacity = \"128MiB\"\n";
pub(crate) const OBJECT: &str =
    "[[tier]]\nkind = \"object\"\ncapacity = \"1GiB\"\nlocal_dir = \"object\"\n";

pub(crate) fn engine_config(block_size: u32) -> EngineConfig {
    EngineConfig {
        block_size,
        kv_pool: ByteSize(256 << 20),
        ..EngineConfig::default()
    }
}

/// Loads the model and starts an engine over a store made of `tiers` under `dir`.
pub(crate) async fn engine(dir: &Path, tiers: &str, config: EngineConfig) -> Engine {
    let loaded = load_model();
    engine_from(loaded, dir, tiers, config).await
}

pub(crate) async fn engine_from(
    loaded: LoadedModel,
    dir: &Path,
    tiers: &str,
    config: EngineConfig,
) -> Engine {
    let block_bytes = config
        .kv_layout(loaded.model.config())
        .expect("layout")
        .block_bytes();
    let store = TieredStore::open(&store_config(dir, tiers, block_bytes))
        .await
        .expect("open store");
    Engine::start(loaded, store, config, Arc::new(EngineMetrics::new())).expect("start engine")
}

pub(crate) fn greedy_request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest::greedy(prompt, max_tokens)
}

/// Runs a request to the end: its tokens and usage.
pub(crate) async fn run(engine: &Engine, req: GenerateRequest) -> (Vec<u32>, Usage) {
    let mut rx = engine.generate(req).await.expect("request accepted");
    let mut tokens = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Admitted(_) => {}
            GenEvent::Token(t) => tokens.push(t),
            GenEvent::Finished { usage, .. } => return (tokens, usage),
            GenEvent::Error(e) => panic!("generation failed: {e}"),
            GenEvent::Published(_) => {}
        }
    }
    panic!("the engine dropped the request")
}

pub(crate) async fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Usage) {
    run(engine, greedy_request(prompt.to_vec(), n)).await
}

/// Waits until the store holds the first `blocks` blocks of `prompt`.
pub(crate) async fn wait_stored(engine: &Engine, prompt: &[u32], blocks: usize) {
    let hashes = hash_blocks(engine.namespace(), prompt);
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine
        .store()
        .lookup_prefix_deep(engine.namespace(), &hashes[..blocks])
        .await
        < blocks
    {
        assert!(
            Instant::now() < deadline,
            "blocks were not published in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Some prompts in token ids, of varied lengths.
pub(crate) fn prompts(engine: &Engine) -> Vec<Vec<u32>> {
    let texts = [
        "The history of the printing press begins in the fifteenth century, when",
        "Write a short poem about tiered storage for key-value caches in large language model serving. Mention memory, disks and object stores, and explain why reuse matters.",
        "Q: What is the capital of France?\nA: The capital of France is Paris.\nQ: What is the capital of Italy?\nA:",
    ];
    texts
        .iter()
        .map(|t| engine.codec().encode(t).expect("encode"))
        .collect()
}

/// A prompt of exactly `n` tokens (repeats a text from an offset that depends on `n`,
/// so prompts of different lengths share no block).
pub(crate) fn prompt_of(engine: &Engine, n: usize) -> Vec<u32> {
    let base = engine
        .codec()
        .encode("Storage tiers keep the attention cache of earlier requests so that a later request with the same prefix loads it instead of computing it again. ")
        .expect("encode");
    base.iter()
        .cycle()
        .skip(n % 7 + 1)
        .take(n)
        .copied()
        .collect()
}

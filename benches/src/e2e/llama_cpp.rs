//! The llama.cpp baseline: `benches/py/llama_cpp_bench.py` run through python3.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context;
use serde::Deserialize;

use super::E2eArgs;

pub(super) struct LlamaCpp {
    /// Prompt tokens per second, per prompt.
    pub prefill_tps: Vec<f64>,
    pub decode_tps: f64,
}

#[derive(Deserialize)]
struct Timing {
    tokens: usize,
    seconds: f64,
}

#[derive(Deserialize)]
struct Output {
    prompt_eval: Vec<Timing>,
    decode: Timing,
}

pub(super) fn measure(args: &E2eArgs, prompts: &[Vec<u32>]) -> anyhow::Result<LlamaCpp> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/llama_cpp_bench.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&args.model)
        .arg(args.decode_tokens.to_string())
        .arg(args.llama_threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3")?;
    child
        .stdin
        .take()
        .context("python stdin")?
        .write_all(&serde_json::to_vec(prompts)?)?;
    let out = child.wait_with_output()?;
    if out.status.code() == Some(3) {
        anyhow::bail!("llama-cpp-python is not installed (pip install llama-cpp-python)");
    }
    anyhow::ensure!(
        out.status.success(),
        "llama.cpp run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let o: Output = serde_json::from_slice(&out.stdout).context("llama.cpp output")?;
    Ok(LlamaCpp {
        prefill_tps: o
            .prompt_eval
            .iter()
            .map(|t| t.tokens as f64 / t.seconds)
            .collect(),
        decode_tps: o.decode.tokens as f64 / o.decode.seconds,
    })
}

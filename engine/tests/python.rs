//! The `tierkv` Python package and `TierkvConnector` in real vLLM: pytest suites in
//! `engine/python/tests/`, run with the venv `scripts/vllm-env` makes (vLLM CPU + the
//! package built from this tree). `scripts/test` creates it; here it is reused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf()
}

/// The venv's python (`scripts/vllm-env` installs what is missing and rebuilds the
/// package when its sources changed).
fn venv_python() -> PathBuf {
    let out = Command::new(repo().join("scripts/vllm-env"))
        .output()
        .expect("run scripts/vllm-env");
    assert!(
        out.status.success(),
        "scripts/vllm-env failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("vllm-env prints the python path")
            .trim(),
    )
}

fn pytest(files: &[&str]) {
    let tests = repo().join("engine/python/tests");
    let status = Command::new(venv_python())
        .args(["-m", "pytest", "-v", "-s", "-p", "no:cacheprovider"])
        .args(files)
        .current_dir(&tests)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .status()
        .expect("run pytest");
    assert!(
        status.success(),
        "pytest {files:?} failed (its output is above)"
    );
}

#[test]
fn python_package() {
    pytest(&["test_package.py", "test_layout.py"]);
}

#[test]
fn vllm_connector() {
    // One after the other: each vLLM process takes ~5 GB.
    pytest(&["test_vllm.py", "test_vllm_pd.py", "test_vllm_up.py"]);
}

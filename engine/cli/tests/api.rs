//! `tierkv engine` as a process, driven by the official `openai` Python client
//! (installed by `scripts/test`): chat and completions, streaming, usage with cached
//! tokens, stop strings, seeds, error bodies, health and metrics.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

#[test]
fn openai_client_works_against_the_engine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        "[engine]\nkv_pool = \"128MiB\"\n[store]\n[[store.tier]]\nkind = \"host\"\ncapacity = \"64MiB\"\nprefault = false\n",
    )
    .expect("config");
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tierkv"))
            .args(["engine", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--model")
            .arg(model_path())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tierkv engine"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while !line.contains("http://") {
        line.clear();
        let n = reader.read_line(&mut line).expect("banner");
        assert!(n > 0, "the engine exited before it printed its address");
    }
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let model = model_path()
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let out = Command::new("python3")
        .arg(repo_root().join("engine/tests/py/openai_client.py"))
        .arg(&url)
        .arg(&model)
        .output()
        .expect("run python3");
    drop(child);
    assert!(
        out.status.success(),
        "openai client checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! `tierkv serve` as a child process of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tierkv_kvstore::service::{BlockClient, BlockClientConfig};

/// A `tierkv serve` child process, killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: String,
}

impl Serve {
    pub fn start(data_dir: &std::path::Path, config: Option<&std::path::Path>) -> Serve {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tierkv"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tierkv serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("tierkv serve exited before listening")
                .expect("read stdout");
            if let Some(addr) = line.strip_prefix("tierkv serve: listening on ") {
                break addr.to_string();
            }
        };
        Serve { child, addr }
    }

    pub fn client(&self) -> BlockClient {
        let mut c = BlockClientConfig::new(self.addr.clone());
        c.retries = 2;
        c.connect_timeout = Duration::from_secs(2);
        BlockClient::new(c).expect("client")
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! What a tierkv process on a vLLM worker's host learns about it: whether its API
//! answers, and from TierkvConnector's rendezvous file (written by TP rank 0 once its
//! KV cache is registered) where its block service listens and which KV namespace it
//! hashes blocks in.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The parts of the connector's rendezvous file a frontend needs.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectorRendezvous {
    /// The block service address (embedded store) or the sidecar's.
    pub addr: String,
    pub namespace_name: String,
}

/// Rank 0's rendezvous file of the vLLM engine `engine_id` under `dir`.
pub(crate) fn rendezvous_file(dir: &Path, engine_id: &str) -> PathBuf {
    dir.join(format!("{engine_id}.tp0.json"))
}

/// The file's contents, or `None` while it does not exist.
pub(crate) fn read_rendezvous(file: &Path) -> anyhow::Result<Option<ConnectorRendezvous>> {
    match std::fs::read(file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing {}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Whether vLLM's `/health` answers 200 at `http` (a base URL).
pub(crate) async fn healthy(client: &reqwest::Client, http: &str) -> bool {
    client
        .get(format!("{http}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// `addr` with an unspecified host (`0.0.0.0:9000`) replaced by the host of `http`.
pub(crate) fn routable(addr: &str, http: &str) -> String {
    let host = http
        .split("://")
        .nth(1)
        .unwrap_or(http)
        .split(['/', ':'])
        .next()
        .unwrap_or("127.0.0.1");
    match addr.rsplit_once(':') {
        Some((h, port)) if h == "0.0.0.0" || h == "[::]" || h.is_empty() => {
            format!("{host}:{port}")
        }
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_hosts_take_the_api_host() {
        assert_eq!(
            routable("0.0.0.0:9000", "http://10.0.0.5:8000"),
            "10.0.0.5:9000"
        );
        assert_eq!(
            routable("127.0.0.1:9000", "http://10.0.0.5:8000"),
            "127.0.0.1:9000"
        );
    }

    #[test]
    fn a_rendezvous_file_is_read_once_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = rendezvous_file(dir.path(), "e");
        assert!(read_rendezvous(&file).unwrap().is_none());
        std::fs::write(
            &file,
            br#"{"addr":"127.0.0.1:1","namespace_name":"m@L1xH1xD8xf16xB16@tp0of1","token":null}"#,
        )
        .unwrap();
        let r = read_rendezvous(&file).unwrap().unwrap();
        assert_eq!(r.addr, "127.0.0.1:1");
        std::fs::write(&file, b"{").unwrap();
        assert!(read_rendezvous(&file).is_err());
    }
}

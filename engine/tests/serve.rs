//! `tierkv serve` as real processes on 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig};

use tierkv_tiers::testing::payload as block;

/// A `tierkv serve` child process, killed on drop.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(data_dir: &std::path::Path, config: Option<&std::path::Path>) -> Serve {
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

    fn client(&self) -> BlockClient {
        let mut c = BlockClientConfig::new(self.addr.clone());
        c.retries = 2;
        c.connect_timeout = Duration::from_secs(2);
        BlockClient::new(c).expect("client")
    }

    fn signal(&self, sig: &str) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_side_service_fetches_through_its_remote_tier() {
    let dir = tempfile::tempdir().unwrap();
    let prefill = Serve::start(&dir.path().join("prefill"), None);
    let config = dir.path().join("decode.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [[tier]]
            kind = "host"
            capacity = "64MiB"
            [[tier]]
            kind = "remote"
            name = "prefill-0"
            addr = "{}"
            namespaces = ["qwen3"]
            "#,
            prefill.addr
        ),
    )
    .unwrap();
    let decode = Serve::start(&dir.path().join("decode"), Some(&config));

    let blocks: Vec<(u128, Bytes)> = (0..4)
        .map(|i| (i as u128 + 100, block(i, 300_000)))
        .collect();
    let s = prefill.client().publish("qwen3", &blocks).await.unwrap();
    assert_eq!(s.stored, 4);

    // The decode side has none of them locally, fetches them from the prefill side.
    let hashes: Vec<u128> = blocks.iter().map(|b| b.0).collect();
    let d = decode.client();
    let got = d.fetch("qwen3", &hashes).await.unwrap();
    for ((h, want), got) in blocks.iter().zip(&got) {
        assert!(
            got.as_ref() == Some(want),
            "block {h} through the remote tier"
        );
    }
    // ...and now holds them in its own host tier.
    let (hits, tiers) = d.lookup("qwen3", &hashes).await.unwrap();
    assert_eq!(hits, 4);
    assert!(tiers.iter().all(|t| t == "host"), "{tiers:?}");
    // A namespace the remote tier does not serve stays a miss.
    assert_eq!(d.fetch("other", &hashes[..1]).await.unwrap(), vec![None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_fetch_is_an_error_for_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(dir.path(), None);
    let c = server.client();
    let blocks: Vec<(u128, Bytes)> = (0..48).map(|i| (i as u128, block(i, 2 << 20))).collect();
    c.publish("big", &blocks).await.unwrap();

    // Read the first chunk of a 96 MiB fetch, then kill the server.
    let mut raw = tierkv_proto::v1::block_service_client::BlockServiceClient::connect(format!(
        "http://{}",
        server.addr
    ))
    .await
    .unwrap()
    .max_decoding_message_size(8 << 20);
    let req = tierkv_proto::v1::FetchRequest {
        namespace: "big".into(),
        hashes: blocks
            .iter()
            .map(|b| Bytes::copy_from_slice(&b.0.to_be_bytes()))
            .collect(),
    };
    let mut stream = raw.fetch(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.id.is_some());
    server.signal("-KILL");
    let mut ended_cleanly = false;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) if chunk.id.is_none() => {
                ended_cleanly = true;
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    assert!(
        !ended_cleanly,
        "a killed server cannot have finished the fetch"
    );
    // The client API reports an error (after its retries), never partial blocks.
    let err = c.fetch("big", &[0, 1]).await.unwrap_err();
    assert!(err.to_string().contains("fetch"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_service_cleanly_and_disk_blocks_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Serve::start(dir.path(), None);
    let blocks: Vec<(u128, Bytes)> = (0..300).map(|i| (i as u128, block(i, 2 << 20))).collect();
    // 600 MiB: more than the 512 MiB host tier, so the oldest blocks go to disk.
    for chunk in blocks.chunks(50) {
        server.client().publish("ns", chunk).await.unwrap();
    }
    server.signal("-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "exit status {status}");

    // Restarted on the same directory, the disk tier still has the demoted blocks.
    let again = Serve::start(dir.path(), None);
    let got = again.client().fetch("ns", &[0, 1, 2]).await.unwrap();
    for (i, g) in got.iter().enumerate() {
        assert!(g.as_ref() == Some(&blocks[i].1), "block {i} after restart");
    }
}

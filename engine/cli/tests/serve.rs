//! `tierkv serve` as real processes on 127.0.0.1.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;

use tierkv_tiers::testing::payload as block;

mod common;
use common::serve_process::Serve;

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
    // ...and keeps them in its own host tier (promoted in the background, right after).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (hits, tiers) = d.lookup("qwen3", &hashes).await.unwrap();
        if hits == 4 && tiers.iter().all(|t| t == "host") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not promoted: {tiers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_against_a_serve_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(dir.path(), None);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let c = server.client();
        tasks.push(tokio::spawn(async move {
            let ns = format!("tenant-{}", t % 8);
            let blocks: Vec<(u128, Bytes)> = (0..4)
                .map(|i| ((t * 10 + i) as u128, block(t * 10 + i, 100_000)))
                .collect();
            c.publish(&ns, &blocks).await.unwrap();
            let hashes: Vec<u128> = blocks.iter().map(|b| b.0).collect();
            let got = c.fetch(&ns, &hashes).await.unwrap();
            for ((h, want), got) in blocks.iter().zip(got) {
                assert!(got.as_ref() == Some(want), "client {t} block {h}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.client().stats().await.unwrap().blocks, 256);
}

#[test]
fn the_operator_cli_puts_gets_looks_up_and_reports_stats() {
    let dir = tempfile::tempdir().unwrap();
    let server = Serve::start(&dir.path().join("data"), None);
    let tierkv = env!("CARGO_BIN_EXE_tierkv");
    let run = |args: &[&str]| {
        let out = Command::new(tierkv)
            .args(["blocks", "--addr", &server.addr])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, block(7, 123_456)).unwrap();
    let hash = "00112233445566778899aabbccddeeff";
    let (ok, stdout, _) = run(&[
        "put",
        "--namespace",
        "cli",
        "--hash",
        hash,
        "--file",
        input.to_str().unwrap(),
    ]);
    assert!(ok && stdout.contains("stored=1"), "{stdout}");
    let (ok, _, _) = run(&[
        "get",
        "--namespace",
        "cli",
        "--hash",
        hash,
        "--out",
        output.to_str().unwrap(),
    ]);
    assert!(ok);
    assert_eq!(
        std::fs::read(&output).unwrap(),
        std::fs::read(&input).unwrap()
    );
    let (ok, stdout, _) = run(&[
        "lookup",
        "--namespace",
        "cli",
        hash,
        "ffffffffffffffffffffffffffffffff",
    ]);
    assert!(
        ok && stdout.contains("prefix_hits=1") && stdout.contains("host"),
        "{stdout}"
    );
    let (ok, stdout, _) = run(&["stats"]);
    assert!(ok && stdout.contains("blocks=1"), "{stdout}");
    // Bad input: a clear error and a failing exit status.
    let (ok, _, stderr) = run(&["get", "--namespace", "cli", "--hash", "xyz"]);
    assert!(!ok && stderr.contains("32 hex digits"), "{stderr}");
    let (ok, _, stderr) = run(&[
        "get",
        "--namespace",
        "cli",
        "--hash",
        "ffffffffffffffffffffffffffffffff",
    ]);
    assert!(!ok && stderr.contains("not in namespace"), "{stderr}");
}

#[test]
fn serve_refuses_a_bad_config_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[[tier]]\nkind = \"host\"\ncapacity = \"1GiB\"\nwibble = 1\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tierkv"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wibble") && stderr.contains("bad.toml"),
        "{stderr}"
    );
}

//! The block service against clients that vanish, stall or lie: every stream notices a
//! gone client within a bounded time and gives back its slot and budget, and a payload
//! published under a key already stored never changes what verifying readers get.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::time::{Duration, Instant};

use bytes::Bytes;
use tierkv_kvstore::service::{BlockClientConfig, ServiceConfig, Transport};
use tierkv_kvstore::{StoreConfig, TieredStore};
use tierkv_proto::v1::{FetchRequest, PublishChunk, WatchRequest};
use tierkv_tiers::testing::payload as block;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

mod common;
use common::{
    Server, chunk, client, client_over, data_conn, host_over_read_only_peer, raw, serve_store,
    start,
};

/// Waits (up to `limit`) until `done` holds; false if it never did.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// A TCP listener that accepts connections and never says a word (a peer that hangs).
async fn silent_peer() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// A server whose store is a small host tier over a peer that never answers: a read
/// that misses the host tier waits on the peer for `peer_timeout`.
async fn server_over_a_hanging_peer(peer: &str, peer_timeout: Duration) -> Server {
    let mut cc = BlockClientConfig::new(peer);
    cc.retries = 0;
    cc.timeout = peer_timeout;
    cc.connect_timeout = peer_timeout;
    let store = host_over_read_only_peer("hanging-peer", cc, "n").await;
    serve_store(store, ServiceConfig::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_watch_gives_its_stream_slot_back() {
    let server = start(ServiceConfig {
        max_concurrent_streams: 2,
        ..Default::default()
    })
    .await;
    // Two watchers of a namespace nobody writes to, whose clients then vanish.
    for _ in 0..2 {
        let mut r = raw(&server.addr).await;
        let stream = r
            .watch_events(WatchRequest {
                namespaces: vec!["quiet".into()],
            })
            .await
            .unwrap();
        drop((stream, r));
    }
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 0)
        .await,
        "the watch streams of departed clients still hold {} slots",
        server.metrics.open_streams.get()
    );
    let mut r = raw(&server.addr).await;
    r.watch_events(WatchRequest { namespaces: vec![] })
        .await
        .expect("a slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_fetch_stops_waiting_on_the_store() {
    let (_peer, peer_addr) = silent_peer().await;
    let server = server_over_a_hanging_peer(&peer_addr, Duration::from_secs(120)).await;
    // gRPC: the fetch's read waits on the hanging peer; the client gives up.
    let mut r = raw(&server.addr).await;
    let stream = r
        .fetch(FetchRequest {
            namespace: "n".into(),
            hashes: vec![Bytes::copy_from_slice(&[5u8; 16])],
        })
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 1)
        .await
    );
    drop((stream, r));
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 0)
        .await,
        "an abandoned fetch still runs"
    );

    // The data channel: the same, through a client that closes its connection.
    let data = client(&server.addr, None)
        .data_addr()
        .await
        .expect("a data channel");
    let (mut s, tag) = data_conn(&data, "").await;
    assert_eq!(tag, 0);
    let mut req = vec![1u8];
    req.extend_from_slice(&1u16.to_le_bytes());
    req.extend_from_slice(b"n");
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&[5u8; 16]);
    s.write_all(&req).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 1)
        .await
    );
    drop(s);
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 0)
        .await,
        "an abandoned data-channel fetch still runs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_publish_is_cut_off_and_gives_its_slot_and_budget_back() {
    let server = start(ServiceConfig {
        max_concurrent_streams: 1,
        idle_timeout_ms: 300,
        ..Default::default()
    })
    .await;
    // gRPC: half of a block, then silence with the stream left open.
    let data = block(1, 200_000);
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishChunk>(4);
    tx.send(chunk("n", &[1u8; 16], 0, data.slice(0..100_000), 200_000))
        .await
        .unwrap();
    let mut r = raw(&server.addr).await;
    let started = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        r.publish(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the server ends a stalled publish")
    .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(tx);
    assert!(
        wait_until(Duration::from_secs(5), || server.metrics.open_streams.get()
            == 0)
        .await
    );
    assert_eq!(server.metrics.inflight_bytes.get(), 0);
    let c = client_over(&server.addr, None, Transport::Grpc);
    assert_eq!(
        c.publish("n", &[(2, block(2, 1000))]).await.unwrap().stored,
        1,
        "the slot is free again"
    );

    // The data channel: a block header and part of its payload, then silence.
    let data_addr = client(&server.addr, None)
        .data_addr()
        .await
        .expect("a data channel");
    let (mut s, tag) = data_conn(&data_addr, "").await;
    assert_eq!(tag, 0);
    let mut req = vec![2u8];
    req.extend_from_slice(&1u16.to_le_bytes());
    req.extend_from_slice(b"n");
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&[3u8; 16]);
    req.extend_from_slice(&200_000u64.to_le_bytes());
    req.extend_from_slice(&tierkv_tiers::checksum::crc32c(&data).to_le_bytes());
    req.extend_from_slice(&data[..1000]);
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server ends a stalled data-channel publish")
        .unwrap();
    assert_eq!(got.first(), Some(&3), "an error frame: {got:?}");
    assert_eq!(got.get(1), Some(&(Code::DeadlineExceeded as u8)));
    assert!(
        wait_until(Duration::from_secs(5), || server
            .metrics
            .inflight_bytes
            .get()
            == 0)
        .await
    );
    assert_eq!(server.store.stats().blocks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_payload_under_a_stored_key_does_not_change_what_readers_verify() {
    let server = start(ServiceConfig::default()).await;
    for (transport, ns) in [(Transport::Grpc, "g"), (Transport::Auto, "d")] {
        let c = client_over(&server.addr, None, transport);
        let (first, other) = (block(10, 5000), block(11, 5000));
        assert_eq!(
            c.publish(ns, &[(7, first.clone())]).await.unwrap().stored,
            1
        );
        let again = c.publish(ns, &[(7, other)]).await.unwrap();
        assert_eq!((again.stored, again.already_present), (0, 1));
        // The client verifies every block's crc32c: the stored payload must still pass.
        assert_eq!(
            c.fetch(ns, &[7]).await.unwrap(),
            vec![Some(first)],
            "{transport:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_flush_another_and_used_bytes_count_whole_slots() {
    // A host-only store of 64 one-MiB slots: tenant `a` caches 6 full blocks (under its
    // 0.125 share, 8 blocks), then tenant `b` publishes 4,096 one-byte blocks.
    let store = tierkv_kvstore::TieredStore::builder()
        .slot_bytes(1 << 20)
        .host(tierkv_tiers::HostTierConfig {
            capacity_bytes: 64 << 20,
            slot_bytes: 1 << 20,
            prefault: false,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    let server = serve_store(store, ServiceConfig::default()).await;
    let c = client(&server.addr, None);
    let victim: Vec<(u128, Bytes)> = (0..6).map(|i| (i, block(i as u64, 1 << 20))).collect();
    assert_eq!(c.publish("a", &victim).await.unwrap().stored, 6);
    for batch in 0..64u128 {
        let tiny: Vec<(u128, Bytes)> = (0..64)
            .map(|i| (batch * 64 + i, Bytes::from_static(b"x")))
            .collect();
        assert_eq!(c.publish("b", &tiny).await.unwrap().stored, 64);
    }
    let hashes: Vec<u128> = victim.iter().map(|(h, _)| *h).collect();
    let back = c.fetch("a", &hashes).await.unwrap();
    let intact = back
        .iter()
        .zip(&victim)
        .filter(|(got, (_, want))| got.as_ref() == Some(want))
        .count();
    assert_eq!(intact, 6, "tenant a's blocks survive tenant b's burst");
    let tier = &c.stats().await.unwrap().tiers[0];
    assert_eq!(tier.blocks, 64, "the tier is full");
    assert_eq!(
        tier.used_bytes, tier.capacity_bytes,
        "a full tier reads as full, whatever its payloads"
    );
    assert_eq!(tier.payload_bytes, 6 * (1 << 20) + 58);
}

/// Sends `bytes` as the body of one gRPC message to `method`: what a broken or hostile
/// client puts on the wire.
async fn send_raw_message(addr: &str, method: &'static str, bytes: Bytes) -> tonic::Status {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    struct Raw;
    struct RawEncoder;
    struct ReplyDecoder;
    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(dst, &item);
            Ok(())
        }
    }
    impl Decoder for ReplyDecoder {
        type Item = ();
        type Error = tonic::Status;
        fn decode(&mut self, _: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
            Ok(Some(()))
        }
    }
    impl Codec for Raw {
        type Encode = Bytes;
        type Decode = ();
        type Encoder = RawEncoder;
        type Decoder = ReplyDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> ReplyDecoder {
            ReplyDecoder
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
    grpc.unary(tonic::Request::new(bytes), path, Raw)
        .await
        .expect_err("garbage must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_no_message_are_invalid_argument_not_internal() {
    let server = start(ServiceConfig::default()).await;
    // A field tag with an invalid wire type, then a length running past the end.
    for garbage in [&b"\xff\xff\xff\xff"[..], &b"\x0a\xff\x01abc"[..]] {
        for method in [
            "/tierkv.v1.BlockService/Lookup",
            "/tierkv.v1.BlockService/Stats",
        ] {
            let status = send_raw_message(&server.addr, method, Bytes::from(garbage)).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(
                status.message().contains("malformed"),
                "{}",
                status.message()
            );
        }
    }
    // The server is unharmed.
    let c = client(&server.addr, None);
    assert_eq!(
        c.publish("n", &[(1, block(1, 100))]).await.unwrap().stored,
        1
    );
}

/// A store failure reaches the client as its kind, the tier's name and an id in the
/// server's log: never the file paths, endpoints or object keys the underlying error
/// names (here: object_store's local-filesystem error for a write-through copy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_reach_clients_without_paths_endpoints_or_object_keys() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects-dir-secret");
    let mut config = StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{}"
        slot_bytes = "1MiB"
        [[tier]]
        kind = "host"
        capacity = "4MiB"
        [[tier]]
        kind = "object"
        name = "cold"
        capacity = "64MiB"
        local_dir = "{}"
        write_through = true
        "#,
        dir.path().display(),
        objects.display()
    ))
    .unwrap();
    config.service = ServiceConfig::default();
    let store = TieredStore::open(&config).await.unwrap();
    let server = common::serve_store(store, config.service).await;
    // The object tier's directory becomes a file: every copy into it fails.
    std::fs::remove_dir_all(&objects).unwrap();
    std::fs::write(&objects, b"not a directory").unwrap();
    let hash: u128 = 0xfeed_beef_0000_0000_0000_0000_1234_5678;
    let err = common::client(&server.addr, None)
        .publish("paths", &[(hash, Bytes::from(vec![1u8; 4096]))])
        .await
        .expect_err("the write-through copy cannot be made");
    let msg = err.to_string();
    for secret in [
        dir.path().display().to_string(),
        "objects-dir-secret".to_string(),
        format!("{hash:032x}"),
        format!("{hash:x}"),
    ] {
        assert!(
            !msg.contains(&secret),
            "`{secret}` reached the client: {msg}"
        );
    }
    assert!(msg.contains("object tier `cold` failed"), "{msg}");
    assert!(msg.contains("in the block service's log"), "{msg}");
}

//! The same-host channel: a `tierkv serve`-style server sharing its host slab over a
//! Unix socket; clients publish into staged slots and read leased blocks in place.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::service::{
    BlockClient, BlockClientConfig, ServiceConfig, TokenConfig, Transport, serve,
};
use tierkv_kvstore::{BlockKey, StoreConfig, TieredStore};
use tierkv_tiers::testing::payload as block;

struct Server {
    addr: String,
    store: TieredStore,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A shared host tier of `host_slots` slots of 1 MiB over a disk tier.
async fn start(host_slots: usize, tokens: Vec<TokenConfig>) -> Server {
    start_with(host_slots, tokens, ServiceConfig::default()).await
}

async fn start_with(host_slots: usize, tokens: Vec<TokenConfig>, base: ServiceConfig) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{}"
        slot_bytes = "1MiB"
        [[tier]]
        kind = "host"
        capacity = "{host_slots}MiB"
        shared = true
        [[tier]]
        kind = "disk"
        capacity = "16MiB"
        queue_depth = 8
        "#,
        dir.path().display()
    ))
    .unwrap();
    config.service = ServiceConfig {
        local_socket: Some(dir.path().join("tierkv.sock")),
        tokens,
        ..base
    };
    let store = TieredStore::open(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (s, svc) = (store.clone(), config.service.clone());
    tokio::spawn(async move {
        serve(s, &svc, listener, Arc::new(Metrics::new()), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        store,
        stop: Some(stop),
        _dir: dir,
    }
}

fn client(addr: &str, token: Option<&str>, transport: Transport) -> BlockClient {
    let mut c = BlockClientConfig::new(addr);
    c.token = token.map(str::to_string);
    c.transport = transport;
    c.retries = 1;
    BlockClient::new(c).unwrap()
}

/// Waits (up to 10 s) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_clients_share_blocks_through_the_slab() {
    let server = start(8, vec![]).await;
    let c = client(&server.addr, None, Transport::Auto);
    assert!(
        c.is_same_host().await,
        "a client on this machine uses shared memory"
    );
    let net = client(&server.addr, None, Transport::Network);
    assert!(!net.is_same_host().await);

    let blocks: Vec<(u128, Bytes)> = (1..=4u64)
        .map(|i| (i as u128, block(i, 100_000 * i as usize)))
        .collect();
    let s = c.publish("ns", &blocks).await.unwrap();
    assert_eq!((s.stored, s.already_present), (4, 0));
    let again = c.publish("ns", &blocks[..1]).await.unwrap();
    assert_eq!((again.stored, again.already_present), (0, 1));
    // Every path reads the same bytes: shared memory, the data channel, gRPC.
    let grpc = client(&server.addr, None, Transport::Grpc);
    for reader in [&c, &net, &grpc] {
        let got = reader.fetch("ns", &[1, 99, 2, 3, 4]).await.unwrap();
        assert!(got[1].is_none());
        for (i, want) in [0usize, 2, 3, 4].iter().zip(&blocks) {
            assert_eq!(got[*i].as_ref(), Some(&want.1));
        }
    }
    // Published over the network, read in place, and the other way round.
    net.publish("ns", &[(10, block(10, 5000))]).await.unwrap();
    assert_eq!(
        c.fetch("ns", &[10]).await.unwrap()[0].as_ref(),
        Some(&block(10, 5000))
    );
    // A block only on disk is copied once into a slot and leased from there.
    let id = tierkv_kvstore::namespace_id("ns");
    server
        .store
        .put_key(BlockKey::new(id, 20), block(20, 7000))
        .await
        .unwrap();
    for h in [21u128, 22, 23, 24, 25, 26, 27, 28] {
        server
            .store
            .put_key(BlockKey::new(id, h), block(h as u64, 7000))
            .await
            .unwrap();
    }
    assert_eq!(
        server.store.locate_prefix_keys(id, &[20]),
        [1],
        "on disk now"
    );
    assert_eq!(
        c.fetch("ns", &[20]).await.unwrap()[0].as_ref(),
        Some(&block(20, 7000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_slot_is_never_recycled_and_tokens_are_checked() {
    let server = start(
        1,
        vec![TokenConfig {
            token: "token-for-ns".into(),
            namespaces: vec!["ns".into()],
        }],
    )
    .await;
    let wrong = client(&server.addr, Some("token-for-xx"), Transport::Auto);
    assert!(
        !wrong.is_same_host().await,
        "an unknown token gets no shared memory"
    );
    let c = client(&server.addr, Some("token-for-ns"), Transport::Auto);
    assert!(c.is_same_host().await);
    let denied = c.fetch("other", &[1]).await.unwrap_err();
    assert!(denied.to_string().contains("may not access"), "{denied}");

    c.publish("ns", &[(1, block(1, 4096))]).await.unwrap();
    let leased = c.fetch("ns", &[1]).await.unwrap()[0].clone().unwrap();
    // The only host slot is leased: removing the block and storing another cannot
    // reuse it while the lease lives.
    let id = tierkv_kvstore::namespace_id("ns");
    assert!(server.store.remove_key(BlockKey::new(id, 1)).await.unwrap());
    server
        .store
        .put_key(BlockKey::new(id, 2), block(2, 4096))
        .await
        .unwrap();
    assert_eq!(
        server.store.locate_prefix_keys(id, &[2]),
        [1],
        "no room in the host tier while its slot is leased: stored below it"
    );
    assert_eq!(leased, block(1, 4096), "the leased bytes are untouched");
    // Released (by the next request at the latest): the slot is free again.
    drop(leased);
    assert!(c.fetch("ns", &[1]).await.unwrap()[0].is_none());
    server
        .store
        .put_key(BlockKey::new(id, 3), block(3, 4096))
        .await
        .unwrap();
    assert_eq!(server.store.locate_prefix_keys(id, &[3]), [0]);
}

/// Run only as a child of `a_client_killed_while_holding_leases_releases_them`: leases
/// every block it is told of and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of another test"]
async fn lease_holder_process() {
    let Ok(addr) = std::env::var("TIERKV_TEST_LEASE_SERVER") else {
        return;
    };
    let c = client(&addr, None, Transport::Auto);
    assert!(c.is_same_host().await);
    let held = c.fetch("ns", &[1, 2]).await.unwrap();
    assert!(held.iter().all(Option::is_some));
    println!("leased");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_holding_leases_releases_them() {
    use tokio::io::AsyncBufReadExt;
    let server = start(2, vec![]).await;
    let c = client(&server.addr, None, Transport::Auto);
    c.publish("ns", &[(1, block(1, 4096)), (2, block(2, 4096))])
        .await
        .unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "lease_holder_process",
            "--nocapture",
        ])
        .env("TIERKV_TEST_LEASE_SERVER", &server.addr)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the helper exited early");
        if line.trim() == "leased" {
            break;
        }
    }
    // Both host slots are leased by the child: removed blocks keep their slots.
    let id = tierkv_kvstore::namespace_id("ns");
    for h in [1u128, 2] {
        assert!(server.store.remove_key(BlockKey::new(id, h)).await.unwrap());
    }
    let host = server.store.shared_host().unwrap().clone();
    assert!(
        host.stage().is_none(),
        "every slot is held by the child's leases"
    );
    child.kill().await.unwrap();
    // The server sees the socket close and drops the child's leases.
    until(|| host.stage().is_some()).await;
}

/// A same-host client that stops in the middle of a request (or of its hello) is cut
/// off after `idle_timeout_ms`: it is told DEADLINE_EXCEEDED and the connection, with
/// its leases and staged slots, is closed. Before, it held its task and pins forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_host_client_stalled_mid_request_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_with(
        2,
        Vec::new(),
        ServiceConfig {
            idle_timeout_ms: 300,
            ..Default::default()
        },
    )
    .await;
    let socket = server._dir.path().join("tierkv.sock");
    let limit = Duration::from_secs(10);
    until(|| socket.exists()).await;

    // Mid-request: a lease whose head stops after the namespace.
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut hello = b"TKVL".to_vec();
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&0u16.to_le_bytes());
    conn.write_all(&hello).await.unwrap();
    let mut greeting = [0u8; 41];
    conn.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting[0], 0, "hello accepted");
    conn.write_all(&[1, 1, 0, b'a']).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut rest))
        .await
        .expect("the server closes a stalled connection")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(rest.first(), Some(&3), "an error frame: {rest:?}");
    assert_eq!(
        rest.get(1).copied(),
        Some(i32::from(tonic::Code::DeadlineExceeded) as u8)
    );

    // Mid-hello: the magic, then nothing.
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    conn.write_all(b"TKVL").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(limit, conn.read_to_end(&mut rest))
        .await
        .expect("the server closes a stalled hello");
    assert!(read.is_ok_and(|n| n == 0) || rest.is_empty(), "{rest:?}");
}

//! What the block service tests share: a server over a real host + disk store on
//! loopback, clients of it, and raw publish chunks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure
#![allow(dead_code)] // each test binary uses its own part of it

use std::sync::Arc;

use bytes::Bytes;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig, ServiceConfig, Transport, serve};
use tierkv_kvstore::{KvStoreError, RemoteTier, RemoteTierConfig, StoreConfig, TieredStore};
use tierkv_proto::v1::block_service_client::BlockServiceClient;
use tierkv_proto::v1::{BlockId, PublishChunk};
use tierkv_tiers::{HostTier, HostTierConfig, Tier};
use tonic::Code;

pub(crate) struct Server {
    pub addr: String,
    pub store: TieredStore,
    pub metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A server over a host (4 MiB) + disk (16 MiB) store with 1 MiB slots.
pub(crate) async fn start(service: ServiceConfig) -> Server {
    start_with(service, "4MiB").await
}

pub(crate) async fn start_with(service: ServiceConfig, host_capacity: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::from_toml(&format!(
        r#"
        data_dir = "{}"
        slot_bytes = "1MiB"
        [[tier]]
        kind = "host"
        capacity = "{host_capacity}"
        [[tier]]
        kind = "disk"
        capacity = "16MiB"
        queue_depth = 8
        "#,
        dir.path().display()
    ))
    .unwrap();
    config.service = service;
    let store = TieredStore::open(&config).await.unwrap();
    let mut server = serve_store(store, config.service).await;
    server._dir = Some(dir);
    server
}

/// Serves `store` on a free loopback port until the returned server is dropped.
pub(crate) async fn serve_store(store: TieredStore, service: ServiceConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = Arc::new(Metrics::new());
    let (s, m) = (store.clone(), Arc::clone(&metrics));
    tokio::spawn(async move {
        serve(s, &service, listener, m, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server {
        addr,
        store,
        metrics,
        stop: Some(stop),
        _dir: None,
    }
}

pub(crate) fn client(addr: &str, token: Option<&str>) -> BlockClient {
    client_over(addr, token, Transport::Auto)
}

pub(crate) fn client_over(addr: &str, token: Option<&str>, transport: Transport) -> BlockClient {
    let mut c = BlockClientConfig::new(addr);
    c.transport = transport;
    c.token = token.map(str::to_string);
    c.retries = 1;
    c.chunk_bytes = 64 << 10;
    BlockClient::new(c).unwrap()
}

pub(crate) async fn raw(addr: &str) -> BlockServiceClient<tonic::transport::Channel> {
    BlockServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub(crate) fn rpc_code(e: &KvStoreError) -> Code {
    match e {
        KvStoreError::Rpc { code, .. } => *code,
        other => panic!("expected an RPC error, got {other}"),
    }
}

pub(crate) fn chunk(ns: &str, hash: &[u8], offset: u64, data: Bytes, total: u64) -> PublishChunk {
    PublishChunk {
        id: Some(BlockId {
            namespace: ns.into(),
            hash: Bytes::copy_from_slice(hash),
        }),
        offset,
        crc32c: tierkv_tiers::checksum::crc32c(&data),
        data,
        total_len: total,
    }
}

/// A data-channel connection to `addr` after the hello with `token`; the hello's reply tag.
pub(crate) async fn data_conn(addr: &str, token: &str) -> (tokio::net::TcpStream, u8) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"TKVD".to_vec();
    hello.extend_from_slice(&1u16.to_le_bytes());
    hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
    hello.extend_from_slice(token.as_bytes());
    s.write_all(&hello).await.unwrap();
    let reply = s.read_u8().await.unwrap();
    (s, reply)
}

/// A store of one host tier (1 MiB, 1 MiB slots) over a read-only peer's block service,
/// named `name`, that serves `namespace`.
pub(crate) async fn host_over_read_only_peer(
    name: &str,
    client: BlockClientConfig,
    namespace: &str,
) -> TieredStore {
    let host: Arc<dyn Tier> = Arc::new(
        HostTier::new(HostTierConfig {
            capacity_bytes: 1 << 20,
            slot_bytes: 1 << 20,
            ..Default::default()
        })
        .unwrap(),
    );
    let remote: Arc<dyn Tier> = Arc::new(
        RemoteTier::new(RemoteTierConfig {
            name: name.into(),
            client,
            read_only: true,
            namespaces: vec![namespace.into()],
            slot_bytes: 1 << 20,
        })
        .unwrap(),
    );
    TieredStore::builder()
        .tier(host)
        .tier(remote)
        .build()
        .await
        .unwrap()
}

//! [`BlockClient`]: publish, fetch, lookup, stats and watch against a block service,
//! with connection reuse (one HTTP/2 channel, cloned per call), per-call timeouts,
//! retries with exponential backoff (every call is idempotent: blocks are
//! content-addressed) and crc32c verification of fetched blocks.
//!
//! Block bytes take the fastest path the server offers: its same-host channel (the
//! shared slab, see [`super::local`]) when client and server are on one machine, else
//! its data channel (plain TCP, see [`super::data`]) when it advertises one and the
//! connection is not TLS, else gRPC. [`Transport`] narrows the choice.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tierkv_proto::v1::block_service_client::BlockServiceClient;
use tierkv_proto::v1::{
    BlockId, FetchRequest, LookupRequest, PublishChunk, StatsReply, StatsRequest, WatchRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use super::data::client::{DataChannel, DataError, retryable as data_retryable};
use super::local::client::{Leased, LocalChannel};
use super::reports::{ServiceEvent, ServiceEvents, ServiceStats};
use crate::{KvStoreError, Result};

/// Which paths block payloads may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// Shared memory when the server is on this machine, else the server's data
    /// channel when it offers one (and the address is not `https://`), else gRPC.
    #[default]
    Auto,
    /// The data channel when offered, else gRPC: never shared memory.
    Network,
    /// Always gRPC streams.
    Grpc,
}

/// The paths a client found on its server.
#[derive(Default)]
struct Paths {
    local: Option<Arc<LocalChannel>>,
    data: Option<Arc<DataChannel>>,
}

/// How to reach a block service.
#[derive(Clone)]
pub struct BlockClientConfig {
    /// `host:port` or `http(s)://host:port`.
    pub addr: String,
    /// Bearer token. Default none.
    pub token: Option<String>,
    /// Default 3 s.
    pub connect_timeout: Duration,
    /// Per call, including streaming the blocks. Default 60 s.
    pub timeout: Duration,
    /// Retries of a failed call. Default 3.
    pub retries: u32,
    /// First backoff, doubled per retry. Default 50 ms.
    pub backoff: Duration,
    /// Publish chunk size (the server accepts its fetch chunk size + 64 KiB).
    /// Default 4 MiB.
    pub chunk_bytes: usize,
    /// Largest block accepted from a server. Default 1 GiB.
    pub max_block_bytes: usize,
    /// PEM CA certificate to trust for `https://` addresses. Default none (system roots
    /// are not loaded: set this for TLS).
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate (chain) and private key this client presents to a server that
    /// asks for one (mutual TLS, the server's `tls.client_ca`). Both or neither.
    /// Default none.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Path of publish and fetch payloads. Default [`Transport::Auto`].
    pub transport: Transport,
}

impl std::fmt::Debug for BlockClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockClientConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl BlockClientConfig {
    /// The configuration of a client of `addr`, every other field at its default.
    pub fn new(addr: impl Into<String>) -> BlockClientConfig {
        BlockClientConfig {
            addr: addr.into(),
            token: None,
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_millis(50),
            chunk_bytes: 4 << 20,
            max_block_bytes: 1 << 30,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            transport: Transport::Auto,
        }
    }
}

/// The client side of TLS: the CA a client trusts and, for mutual TLS, the
/// certificate and key it presents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA the server's certificate must chain to.
    pub ca: PathBuf,
    /// The certificate this client presents (mutual TLS).
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// How a member of a cluster whose block services serve `server` reaches its
    /// peers: it trusts the cluster CA (`client_ca`) and presents its own certificate.
    /// None when `server` asks no client certificate (no cluster CA to trust).
    pub fn cluster_member(server: &super::TlsConfig) -> Option<ClientTls> {
        server.client_ca.as_ref().map(|ca| ClientTls {
            ca: ca.clone(),
            cert: Some(server.cert.clone()),
            key: Some(server.key.clone()),
        })
    }

    /// Sets `config`'s TLS fields.
    pub fn apply(&self, config: &mut BlockClientConfig) {
        config.tls_ca = Some(self.ca.clone());
        config.tls_cert = self.cert.clone();
        config.tls_key = self.key.clone();
    }
}

/// What a publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishSummary {
    /// Blocks the server stored.
    pub stored: u64,
    /// Blocks it already held.
    pub already_present: u64,
    /// Hashes the server refused (checksum mismatch).
    pub rejected: Vec<u128>,
}

/// A block service client. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct BlockClient {
    client: BlockServiceClient<Channel>,
    config: std::sync::Arc<BlockClientConfig>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// The server's faster paths, once asked for.
    paths: Arc<tokio::sync::OnceCell<Paths>>,
}

impl std::fmt::Debug for BlockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("BlockClient")
            .field("addr", &self.config.addr)
            .field("transport", &self.config.transport)
            .finish()
    }
}

fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

impl BlockClient {
    /// A client that connects on first use (and reconnects after failures).
    pub fn new(config: BlockClientConfig) -> Result<BlockClient> {
        let addr = config.addr.clone();
        let connect_err = |context: String, source: tierkv_tiers::BoxError| KvStoreError::Connect {
            addr: addr.clone(),
            context,
            source,
        };
        let uri = if addr.contains("://") {
            addr.clone()
        } else if config.tls_ca.is_some() {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| connect_err("parsing the address".into(), Box::new(e)))?
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .max_frame_size(super::server::MAX_FRAME);
        if let Some(ca) = &config.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| connect_err(format!("reading CA {}", ca.display()), Box::new(e)))?;
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem));
            match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) => {
                    let read = |p: &PathBuf| {
                        std::fs::read(p).map_err(|e| {
                            connect_err(format!("reading {}", p.display()), Box::new(e))
                        })
                    };
                    tls = tls.identity(tonic::transport::Identity::from_pem(
                        read(cert)?,
                        read(key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(KvStoreError::Config(format!(
                        "block service at {addr}: tls_cert and tls_key go together"
                    )));
                }
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| connect_err("setting up TLS".into(), Box::new(e)))?;
        }
        let auth = match &config.token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                KvStoreError::Config(format!(
                    "block service at {addr}: the token has characters not allowed in a header"
                ))
            })?),
            None => None,
        };
        let max = config.chunk_bytes + (64 << 10);
        let client = BlockServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max.max(4 << 20) * 2)
            .max_encoding_message_size(max);
        Ok(BlockClient {
            client,
            config: std::sync::Arc::new(config),
            auth,
            paths: Default::default(),
        })
    }

    /// The paths to use, asking the server once what it offers. A server that does not
    /// answer now: gRPC this time, ask again next time.
    async fn paths(&self) -> Option<&Paths> {
        let c = &self.config;
        if c.transport == Transport::Grpc {
            return None;
        }
        let found = self
            .paths
            .get_or_try_init(|| async {
                let stats = self.stats_reply().await?;
                let mut paths = Paths::default();
                if c.transport == Transport::Auto && !stats.local_socket.is_empty() {
                    paths.local = self.local_channel(&stats).await.map(Arc::new);
                }
                let tls = c.tls_ca.is_some() || c.addr.starts_with("https://");
                if let Some(host) = host_of(&c.addr).filter(|_| stats.data_port != 0 && !tls) {
                    let addr = format!("{host}:{}", stats.data_port);
                    paths.data = Some(Arc::new(DataChannel::new(
                        addr,
                        c.token.clone(),
                        c.connect_timeout,
                        c.timeout,
                        c.max_block_bytes,
                    )));
                }
                tracing::debug!(server = %c.addr, local = paths.local.is_some(), data = paths.data.is_some(), "block paths");
                Ok::<_, KvStoreError>(paths)
            })
            .await;
        found.ok()
    }

    /// The same-host channel, if the socket the server names is this machine's path
    /// to the same server.
    async fn local_channel(&self, stats: &StatsReply) -> Option<LocalChannel> {
        let instance: [u8; 16] = stats.instance.as_ref().try_into().ok()?;
        let path = std::path::Path::new(&stats.local_socket);
        let connect = LocalChannel::connect(
            path,
            self.config.token.as_deref(),
            u128::from_le_bytes(instance),
        );
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                let status = e.into_status();
                tracing::debug!(socket = %path.display(), %status, "no same-host channel");
                None
            }
            Err(_) => None,
        }
    }

    /// The data channel's address, if this client uses one (asks the server once).
    pub async fn data_addr(&self) -> Option<String> {
        let paths = self.paths().await?;
        paths.data.as_ref().map(|d| d.addr().to_string())
    }

    /// Whether this client moves blocks through the server's shared memory (asks the
    /// server once).
    pub async fn is_same_host(&self) -> bool {
        self.paths().await.is_some_and(|p| p.local.is_some())
    }

    /// After a failed data channel call: sleeps and returns `Ok` when it is worth
    /// another attempt, else the final error.
    async fn data_retry(&self, op: &'static str, e: DataError, attempt: &mut u32) -> Result<()> {
        if data_retryable(&e) && *attempt < self.config.retries {
            tracing::debug!(op, addr = %self.config.addr, attempt = *attempt, "retrying on the data channel");
            tokio::time::sleep(self.config.backoff * 2u32.saturating_pow(*attempt)).await;
            *attempt += 1;
            return Ok(());
        }
        let status = e.into_status();
        Err(KvStoreError::Rpc {
            op,
            code: status.code(),
            message: status.message().to_string(),
        })
    }

    /// Like [`BlockClient::new`], then checks that the service answers.
    pub async fn connect(config: BlockClientConfig) -> Result<BlockClient> {
        let client = Self::new(config)?;
        client.stats_reply().await?;
        Ok(client)
    }

    /// The server's address, as configured.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(auth) = &self.auth {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        req
    }

    async fn with_retries<T, F, Fut>(&self, op: &'static str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(status) if retryable(status.code()) && attempt < self.config.retries => {
                    tracing::debug!(op, addr = %self.config.addr, %status, attempt, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(status) => {
                    return Err(KvStoreError::Rpc {
                        op,
                        code: status.code(),
                        message: status.message().to_string(),
                    });
                }
            }
        }
    }

    /// Publishes blocks `(hash, payload)` of `namespace`.
    pub async fn publish(
        &self,
        namespace: &str,
        blocks: &[(u128, Bytes)],
    ) -> Result<PublishSummary> {
        if let Some(local) = self.paths().await.and_then(|p| p.local.clone()) {
            match local.publish(namespace, blocks).await {
                Ok(summary) => return Ok(summary),
                Err(DataError::Status(s)) if s.code() != Code::ResourceExhausted => {
                    return Err(KvStoreError::Rpc {
                        op: "publish",
                        code: s.code(),
                        message: s.message().to_string(),
                    });
                }
                // No free slot, or the socket broke: the network path.
                Err(e) => {
                    let status = e.into_status();
                    tracing::debug!(%status, "same-host publish fell back to the network");
                }
            }
        }
        self.network_publish(namespace, blocks).await
    }

    async fn network_publish(
        &self,
        namespace: &str,
        blocks: &[(u128, Bytes)],
    ) -> Result<PublishSummary> {
        if let Some(data) = self.paths().await.and_then(|p| p.data.clone()) {
            let mut attempt = 0;
            loop {
                match data.publish(namespace, blocks).await {
                    Ok(summary) => return Ok(summary),
                    Err(e) => self.data_retry("publish", e, &mut attempt).await?,
                }
            }
        }
        let chunk = self.config.chunk_bytes.max(1);
        let reply = self
            .with_retries("publish", || {
                let mut chunks = Vec::new();
                for (hash, data) in blocks {
                    let crc = tierkv_tiers::checksum::crc32c(data);
                    let id = BlockId {
                        namespace: namespace.to_string(),
                        hash: Bytes::copy_from_slice(&hash.to_be_bytes()),
                    };
                    let mut offset = 0;
                    loop {
                        let end = (offset + chunk).min(data.len());
                        chunks.push(PublishChunk {
                            id: Some(id.clone()),
                            offset: offset as u64,
                            data: data.slice(offset..end),
                            total_len: data.len() as u64,
                            crc32c: crc,
                        });
                        offset = end;
                        if offset >= data.len() {
                            break;
                        }
                    }
                }
                let mut client = self.client.clone();
                let req = self.request(tokio_stream::iter(chunks));
                async move { client.publish(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let rejected = reply
            .rejected
            .iter()
            .filter_map(|id| {
                <[u8; 16]>::try_from(id.hash.as_ref())
                    .ok()
                    .map(u128::from_be_bytes)
            })
            .collect();
        Ok(PublishSummary {
            stored: reply.stored,
            already_present: reply.already_present,
            rejected,
        })
    }

    /// Fetches blocks; the result is in request order, `None` for a block the server
    /// lacks or that arrived corrupt (crc32c mismatch, counted and logged).
    pub async fn fetch(&self, namespace: &str, hashes: &[u128]) -> Result<Vec<Option<Bytes>>> {
        let Some(local) = self.paths().await.and_then(|p| p.local.clone()) else {
            return self.network_fetch(namespace, hashes).await;
        };
        let leased = match local.fetch(namespace, hashes).await {
            Ok(leased) => leased,
            Err(DataError::Status(s)) => {
                return Err(KvStoreError::Rpc {
                    op: "fetch",
                    code: s.code(),
                    message: s.message().to_string(),
                });
            }
            Err(e) => {
                let status = e.into_status();
                tracing::debug!(%status, "same-host fetch fell back to the network");
                return self.network_fetch(namespace, hashes).await;
            }
        };
        let elsewhere: Vec<u128> = hashes
            .iter()
            .zip(&leased)
            .filter(|(_, l)| matches!(l, Leased::Elsewhere))
            .map(|(h, _)| *h)
            .collect();
        let mut rest = if elsewhere.is_empty() {
            Vec::new()
        } else {
            self.network_fetch(namespace, &elsewhere).await?
        }
        .into_iter();
        Ok(leased
            .into_iter()
            .map(|l| match l {
                Leased::Block(b) => Some(b),
                Leased::Missing => None,
                Leased::Elsewhere => rest.next().flatten(),
            })
            .collect())
    }

    async fn network_fetch(&self, namespace: &str, hashes: &[u128]) -> Result<Vec<Option<Bytes>>> {
        if let Some(data) = self.paths().await.and_then(|p| p.data.clone()) {
            let mut attempt = 0;
            loop {
                match data.fetch(namespace, hashes).await {
                    Ok(blocks) => return Ok(blocks),
                    Err(e) => self.data_retry("fetch", e, &mut attempt).await?,
                }
            }
        }
        self.with_retries("fetch", || {
            let mut client = self.client.clone();
            let req = self.request(FetchRequest {
                namespace: namespace.to_string(),
                hashes: hashes
                    .iter()
                    .map(|h| Bytes::copy_from_slice(&h.to_be_bytes()))
                    .collect(),
            });
            let max_block = self.config.max_block_bytes;
            async move {
                let stream = client.fetch(req).await?.into_inner();
                collect_fetch(stream, hashes, max_block).await
            }
        })
        .await
    }

    /// `(prefix_hits, tier of each hit)`.
    pub async fn lookup(&self, namespace: &str, hashes: &[u128]) -> Result<(u32, Vec<String>)> {
        self.with_retries("lookup", || {
            let mut client = self.client.clone();
            let req = self.request(LookupRequest {
                namespace: namespace.to_string(),
                hashes: hashes
                    .iter()
                    .map(|h| Bytes::copy_from_slice(&h.to_be_bytes()))
                    .collect(),
            });
            async move {
                let r = client.lookup(req).await?.into_inner();
                Ok((r.prefix_hits, r.tiers))
            }
        })
        .await
    }

    /// The service's figures and the paths it offers.
    pub async fn stats(&self) -> Result<ServiceStats> {
        ServiceStats::try_from(self.stats_reply().await?)
    }

    async fn stats_reply(&self) -> Result<StatsReply> {
        self.with_retries("stats", || {
            let mut client = self.client.clone();
            let req = self.request(StatsRequest {});
            async move { Ok(client.stats(req).await?.into_inner()) }
        })
        .await
    }

    /// Stored/removed events from now on (no retries: a watcher resubscribes).
    pub async fn watch(&self, namespaces: &[String]) -> Result<ServiceEvents> {
        let mut client = self.client.clone();
        let mut req = self.request(WatchRequest {
            namespaces: namespaces.to_vec(),
        });
        // A watch lives longer than a call's timeout.
        req.set_timeout(Duration::from_secs(365 * 24 * 3600));
        client
            .watch_events(req)
            .await
            .map(|r| {
                let events = r.into_inner().map(|got| match got {
                    Ok(event) => ServiceEvent::try_from(event),
                    Err(status) => Err(rpc_error("watch", status)),
                });
                Box::pin(events) as ServiceEvents
            })
            .map_err(|status| rpc_error("watch", status))
    }
}

/// The host part of `host:port` or `scheme://host:port` (brackets kept for IPv6).
fn host_of(addr: &str) -> Option<&str> {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.split('/').next()?;
    let (host, _port) = rest.rsplit_once(':')?;
    (!host.is_empty()).then_some(host)
}

/// Reassembles a fetch stream into blocks in request order.
async fn collect_fetch(
    mut stream: tonic::Streaming<tierkv_proto::v1::FetchChunk>,
    hashes: &[u128],
    max_block: usize,
) -> Result<Vec<Option<Bytes>>, Status> {
    let position: HashMap<u128, usize> = hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut out: Vec<Option<Bytes>> = vec![None; hashes.len()];
    let mut current: Option<(usize, u64, u32, BytesMut)> = None;
    let mut finished = false;
    while let Some(chunk) = stream.message().await? {
        if chunk.id.is_none() {
            finished = true; // The final chunk: `missing` lists what the server lacks.
            break;
        }
        let hash = chunk
            .id
            .as_ref()
            .and_then(|id| <[u8; 16]>::try_from(id.hash.as_ref()).ok())
            .map(u128::from_be_bytes)
            .ok_or_else(|| Status::internal("fetch chunk with a malformed block id"))?;
        let idx = *position
            .get(&hash)
            .ok_or_else(|| Status::internal("fetch returned a block that was not requested"))?;
        if chunk.total_len == 0 || chunk.total_len as usize > max_block {
            return Err(Status::internal(format!(
                "fetch: block of {} bytes",
                chunk.total_len
            )));
        }
        let mut block = match current.take() {
            None if chunk.offset == 0 => (
                idx,
                chunk.total_len,
                chunk.crc32c,
                BytesMut::with_capacity(chunk.total_len as usize),
            ),
            Some(b) if b.0 == idx && b.3.len() as u64 == chunk.offset => b,
            _ => return Err(Status::internal("fetch: chunks out of order")),
        };
        if block.3.is_empty() && chunk.data.len() as u64 == chunk.total_len {
            verify_into(&mut out, idx, chunk.data, block.2);
            continue;
        }
        block.3.extend_from_slice(&chunk.data);
        if block.3.len() as u64 > block.1 {
            return Err(Status::internal("fetch: block longer than total_len"));
        }
        if block.3.len() as u64 == block.1 {
            let (i, _, crc, buf) = block;
            verify_into(&mut out, i, buf.freeze(), crc);
        } else {
            current = Some(block);
        }
    }
    if !finished || current.is_some() {
        // The stream broke: nothing partial is kept.
        return Err(Status::unavailable("fetch stream ended early"));
    }
    Ok(out)
}

fn verify_into(out: &mut [Option<Bytes>], idx: usize, data: Bytes, crc: u32) {
    if tierkv_tiers::checksum::crc32c(&data) == crc {
        out[idx] = Some(data);
    } else {
        tracing::warn!(
            block = idx,
            "fetched block failed its crc32c check; treating it as missing"
        );
    }
}

/// A failed call's status as this crate's error.
fn rpc_error(op: &'static str, status: Status) -> KvStoreError {
    KvStoreError::Rpc {
        op,
        code: status.code(),
        message: status.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7070"), Some("127.0.0.1"));
        assert_eq!(host_of("http://kv-0.kv:7070"), Some("kv-0.kv"));
        assert_eq!(host_of("http://[::1]:7070/"), Some("[::1]"));
        assert_eq!(host_of("nohost"), None);
        assert_eq!(host_of(":7070"), None);
    }
}

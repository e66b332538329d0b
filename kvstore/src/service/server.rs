//! Serving the block service: gRPC (dispatched to `rpc/`), the data channel and the
//! same-host channel, over one [`BlockServer`] state.

use std::future::Future;
use std::sync::Arc;

use tierkv_proto::v1::block_service_server::{BlockService, BlockServiceServer};
use tierkv_proto::v1::{
    FetchRequest, LookupReply, LookupRequest, PublishChunk, PublishReply, StatsReply, StatsRequest,
    WatchRequest,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

use super::config::ServiceConfig;
use super::rpc;
use super::state::BlockServer;
use crate::metrics::Metrics;
use crate::{KvStoreError, Result, TieredStore};

/// HTTP/2 frame size advertised by server and client.
pub(crate) const MAX_FRAME: u32 = (1 << 24) - 1;

#[tonic::async_trait]
impl BlockService for BlockServer {
    async fn publish(
        &self,
        request: Request<Streaming<PublishChunk>>,
    ) -> Result<Response<PublishReply>, Status> {
        rpc::publish(self, request).await.map(Response::new)
    }

    type FetchStream = rpc::FetchStream;

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        rpc::fetch(self, request).map(Response::new)
    }

    async fn lookup(
        &self,
        request: Request<LookupRequest>,
    ) -> Result<Response<LookupReply>, Status> {
        rpc::lookup(self, request).map(Response::new)
    }

    type WatchEventsStream = rpc::WatchStream;

    async fn watch_events(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        rpc::watch_events(self, request).map(Response::new)
    }

    async fn stats(&self, request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        rpc::stats(self, request).map(Response::new)
    }
}

/// Serves the block service (and gRPC health) on `listener` until `shutdown`
/// resolves, then stops accepting and lets open calls finish.
pub async fn serve(
    store: TieredStore,
    config: &ServiceConfig,
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let server = Arc::new(BlockServer::new(store, config, metrics)?);
    let closing = Arc::clone(&server.closing);
    if config.data_channel && config.tls.is_none() {
        let ip = listener
            .local_addr()
            .map_err(|e| KvStoreError::Config(format!("block service address: {e}")))?
            .ip();
        let data = tokio::net::TcpListener::bind((ip, config.data_port))
            .await
            .map_err(|e| KvStoreError::Connect {
                addr: format!("{ip}:{}", config.data_port),
                context: "binding the data channel".into(),
                source: Box::new(e),
            })?;
        let port = data.local_addr().map(|a| a.port()).unwrap_or(0);
        server
            .data_port
            .store(port, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%ip, port, "block service data channel listening");
        tokio::spawn(super::data::server::accept_loop(Arc::clone(&server), data));
    }
    if let Some(path) = &config.local_socket {
        let Some(host) = server.store.shared_host().cloned() else {
            return Err(KvStoreError::Config(format!(
                "service local_socket = {} needs a top host tier with shared = true",
                path.display()
            )));
        };
        let (listener, file) =
            super::local::server::bind(path).map_err(|e| KvStoreError::Connect {
                addr: path.display().to_string(),
                context: "binding the same-host socket".into(),
                source: Box::new(e),
            })?;
        let _ = server.local_socket.set(path.display().to_string());
        tracing::info!(socket = %path.display(), "block service same-host channel listening");
        tokio::spawn(super::local::server::accept_loop(
            Arc::clone(&server),
            host,
            listener,
            file,
        ));
    }
    let shutdown = async move {
        shutdown.await;
        closing.send_replace(true);
    };
    let max_message = server.max_message_bytes();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<BlockServiceServer<BlockServer>>()
        .await;
    let service = BlockServiceServer::from_arc(server)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(32 << 20))
        // Large HTTP/2 frames: a 16 KiB default means a thousand frames per block.
        .max_frame_size(Some(MAX_FRAME))
        .max_concurrent_streams(Some(config.max_concurrent_streams as u32));
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| KvStoreError::Config(format!("reading TLS file {}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        let mut server_tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &tls.client_ca {
            // Required, not optional: a client without a certificate of this CA fails
            // the handshake.
            server_tls = server_tls
                .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
                .client_auth_optional(false);
        }
        builder = builder
            .tls_config(server_tls)
            .map_err(|e| KvStoreError::Config(format!("TLS: {e}")))?;
    }
    let local_addr = listener.local_addr();
    // The builder's `tcp_nodelay` only applies to sockets it accepts itself: without
    // TCP_NODELAY here, Nagle + delayed ACK stall small writes for 40 ms.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::warn!(error = %e, "TCP_NODELAY");
        }
        conn
    });
    let addr = local_addr.map_or_else(|_| "?".to_string(), |a| a.to_string());
    builder
        .add_service(health)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| KvStoreError::Connect {
            addr,
            context: "serving".into(),
            source: Box::new(e),
        })
}

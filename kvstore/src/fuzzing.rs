//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are, and says whether the decoder
//! accepted it. Not an API.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;
use tierkv_proto::codec::BlockCodec;
use tierkv_proto::v1::{
    FetchRequest, LookupRequest, PublishChunk, PublishReply, StatsRequest, WatchRequest,
};
use tonic::codec::Codec;

use crate::service::request::{check_namespace, parse_hash};
use crate::service::{BlockServer, ServiceConfig, TokenConfig};

/// The token the fuzz harness's block service accepts, for namespace `a` only.
pub const HARNESS_TOKEN: &str = "fuzz-token";

/// A store configuration file (TOML), parsed and validated as `tierkv` does.
pub fn store_config_toml(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let parsed = crate::StoreConfig::from_toml(text);
    let accepted = parsed.is_ok();
    if let Ok(config) = parsed {
        let _ = config.validate();
        // What parses prints back to TOML that parses to the same configuration.
        if let Ok(again) = toml::to_string(&config) {
            let back = crate::StoreConfig::from_toml(&again);
            assert!(back.is_ok(), "{again}");
        }
    }
    accepted
}

/// One gRPC message body of the block service, as the server decodes and checks it;
/// the first byte picks the message type.
pub fn block_service_message(data: &[u8]) -> bool {
    let Some((&kind, body)) = data.split_first() else {
        return false;
    };
    let check_ids = |ns: &str, hashes: &[bytes::Bytes]| {
        if check_namespace(ns).is_ok() {
            for h in hashes {
                let _ = parse_hash(h);
            }
        }
    };
    match kind % 5 {
        0 => PublishChunk::decode(body).is_ok_and(|c| {
            if let Some(id) = &c.id {
                check_ids(&id.namespace, std::slice::from_ref(&id.hash));
            }
            c.offset.checked_add(c.data.len() as u64).is_some()
        }),
        1 => FetchRequest::decode(body).is_ok_and(|r| {
            check_ids(&r.namespace, &r.hashes);
            true
        }),
        2 => LookupRequest::decode(body).is_ok_and(|r| {
            check_ids(&r.namespace, &r.hashes);
            true
        }),
        3 => WatchRequest::decode(body)
            .is_ok_and(|r| r.namespaces.iter().all(|ns| check_namespace(ns).is_ok())),
        _ => StatsRequest::decode(body).is_ok(),
    }
}

/// One block service over a small host tier (64 KiB slots, 1 MiB), with one token for
/// namespace `a`, on a current-thread runtime: shared by every input of a process.
struct Harness {
    runtime: tokio::runtime::Runtime,
    server: Arc<BlockServer>,
}

fn harness() -> Option<&'static Harness> {
    static HARNESS: OnceLock<Option<Harness>> = OnceLock::new();
    HARNESS
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let dir = std::env::temp_dir().join(format!("tierkv-fuzz-{}", std::process::id()));
            let mut config = crate::StoreConfig::from_toml(&format!(
                "data_dir = {:?}\nslot_bytes = \"64KiB\"\n[[tier]]\nkind = \"host\"\ncapacity = \"1MiB\"\n",
                dir.display().to_string()
            ))
            .ok()?;
            config.service = ServiceConfig {
                max_inflight_bytes: crate::ByteSize(256 << 10),
                inflight_wait_ms: 10,
                max_blocks_per_request: 64,
                tokens: vec![TokenConfig {
                    token: HARNESS_TOKEN.into(),
                    namespaces: vec!["a".into()],
                }],
                ..ServiceConfig::default()
            };
            let server = runtime.block_on(async {
                let store = crate::TieredStore::open(&config).await.ok()?;
                let metrics = Arc::new(crate::metrics::Metrics::new());
                BlockServer::new(store, &config.service, metrics).ok()
            })?;
            Some(Harness {
                runtime,
                server: Arc::new(server),
            })
        })
        .as_ref()
}

/// The bytes of one data-channel connection (hello, then requests), served by a real
/// block service; accepted when the hello and the first request were.
pub fn data_channel_connection(data: &[u8]) -> bool {
    let Some(h) = harness() else { return false };
    let mut reply: Vec<u8> = Vec::new();
    let served = h
        .runtime
        .block_on(crate::service::data::server::serve_halves(
            &h.server, data, &mut reply,
        ));
    served.is_ok()
        && reply.first() == Some(&0)
        && reply
            .get(1)
            .is_some_and(|&tag| tag != crate::service::data::TAG_ERROR)
}

/// A `Publish` stream's HTTP/2 body (gRPC frames of `PublishChunk`s), cut into data
/// frames where the first byte says, assembled and stored by a real block service;
/// accepted when the stream was.
pub fn publish_stream(data: &[u8]) -> bool {
    let Some(h) = harness() else { return false };
    let Some((&cut, body)) = data.split_first() else {
        return false;
    };
    let frames = FuzzBody {
        data: Bytes::copy_from_slice(body),
        frame: usize::from(cut).max(1) * 7,
    };
    let decoder = BlockCodec::<PublishReply, PublishChunk>::default().decoder();
    let stream =
        tonic::Streaming::new_request(decoder, frames, None, Some(h.server.max_message_bytes()));
    let mut request = tonic::Request::new(stream);
    if let Ok(v) = format!("Bearer {HARNESS_TOKEN}").parse() {
        request.metadata_mut().insert("authorization", v);
    }
    h.runtime
        .block_on(crate::service::rpc::publish(&h.server, request))
        .is_ok()
}

/// A request body handed out in data frames of `frame` bytes.
struct FuzzBody {
    data: Bytes,
    frame: usize,
}

impl http_body::Body for FuzzBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.data.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = self.frame.min(self.data.len());
        let chunk = self.data.split_to(n);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }
}

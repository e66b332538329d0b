//! The `[service]` section: limits, tokens and TLS of the block service.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// A bearer token and the namespaces it may read and write (`"*"`: all).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The secret a client presents as `authorization: Bearer <token>`.
    pub token: String,
    /// The namespaces it may use; `"*"` for every one.
    pub namespaces: Vec<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("token", &"<redacted>")
            .field("namespaces", &self.namespaces)
            .finish()
    }
}

/// PEM files of the server's certificate chain and private key, and the CA its
/// clients' certificates must chain to (mutual TLS).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// With it, a client that presents no certificate signed by this CA is refused
    /// during the handshake, before any token is read; an engine also presents its own
    /// `cert` to its peers' block services and trusts this CA for them (one cluster
    /// CA). Default none: any client that completes TLS, then tokens decide.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// The block service's configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Largest block accepted. Default: the store's `slot_bytes`.
    #[serde(default)]
    pub max_block_bytes: Option<ByteSize>,
    /// Blocks in one Publish stream, Fetch or Lookup. Default 4096.
    #[serde(default = "ServiceConfig::default_max_blocks")]
    pub max_blocks_per_request: usize,
    /// Publish, Fetch and WatchEvents streams open at once. Default 256.
    #[serde(default = "ServiceConfig::default_max_streams")]
    pub max_concurrent_streams: usize,
    /// Block bytes being received or sent at once, over all streams. Default 1 GiB.
    #[serde(default = "ServiceConfig::default_inflight")]
    pub max_inflight_bytes: ByteSize,
    /// How long a block waits for in-flight budget before RESOURCE_EXHAUSTED.
    /// Default 10000 ms.
    #[serde(default = "ServiceConfig::default_inflight_wait_ms")]
    pub inflight_wait_ms: u64,
    /// How long a stream may wait on its client in the middle of a request (the next
    /// chunk or byte of a publish, a fetch's reply being taken) before it is ended with
    /// DEADLINE_EXCEEDED, giving back its slot and in-flight budget. Default 30000 ms.
    #[serde(default = "ServiceConfig::default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Size of the chunks Fetch streams (and the largest chunk Publish accepts is this
    /// plus 64 KiB). Default 4 MiB.
    #[serde(default = "ServiceConfig::default_chunk")]
    pub chunk_bytes: ByteSize,
    /// Promote a block a client fetched from a lower tier into the top tier (in the
    /// background). Default false: peers' fetches leave this server's tiers as they are.
    #[serde(default)]
    pub promote_on_fetch: bool,
    /// Serve publish and fetch bytes on a plain TCP data channel beside gRPC (off
    /// whenever TLS is on: the channel is not encrypted). Default true.
    #[serde(default = "yes")]
    pub data_channel: bool,
    /// TCP port of the data channel, on the gRPC listener's address; 0 picks a free
    /// one (clients learn it from `Stats`). Default 0.
    #[serde(default)]
    pub data_port: u16,
    /// Unix socket of the same-host channel: clients on this machine map the top host
    /// tier's slab (which must be `shared = true`) and read and write blocks in place.
    /// Default none (`tierkv serve` uses `<data_dir>/tierkv.sock`).
    #[serde(default)]
    pub local_socket: Option<PathBuf>,
    /// Bearer tokens; none configured means no authentication. Default none.
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenConfig>,
    /// TLS; default off (plain HTTP/2).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_block_bytes: None,
            max_blocks_per_request: Self::default_max_blocks(),
            max_concurrent_streams: Self::default_max_streams(),
            max_inflight_bytes: Self::default_inflight(),
            inflight_wait_ms: Self::default_inflight_wait_ms(),
            idle_timeout_ms: Self::default_idle_timeout_ms(),
            chunk_bytes: Self::default_chunk(),
            promote_on_fetch: false,
            data_channel: true,
            data_port: 0,
            local_socket: None,
            tokens: Vec::new(),
            tls: None,
        }
    }
}

fn yes() -> bool {
    true
}

impl ServiceConfig {
    fn default_max_blocks() -> usize {
        4096
    }
    fn default_max_streams() -> usize {
        256
    }
    fn default_inflight() -> ByteSize {
        ByteSize(1 << 30)
    }
    fn default_inflight_wait_ms() -> u64 {
        10_000
    }
    fn default_idle_timeout_ms() -> u64 {
        30_000
    }
    fn default_chunk() -> ByteSize {
        ByteSize(4 << 20)
    }

    /// Checks the limits and tokens (a server refuses to start otherwise).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_blocks_per_request == 0
            || self.max_concurrent_streams == 0
            || self.idle_timeout_ms == 0
        {
            return Err("service limits must be > 0".into());
        }
        if self.chunk_bytes.0 < 4096 || self.chunk_bytes.0 > 64 << 20 {
            return Err(format!(
                "service chunk_bytes = {} must be in 4KiB..=64MiB",
                self.chunk_bytes
            ));
        }
        if let Some(max) = self.max_block_bytes
            && max.0 > self.max_inflight_bytes.0
        {
            return Err(format!(
                "service max_block_bytes = {max} exceeds max_inflight_bytes = {}",
                self.max_inflight_bytes
            ));
        }
        for t in &self.tokens {
            if t.token.len() < 8 {
                return Err("service tokens must be at least 8 characters".into());
            }
            if t.namespaces.is_empty() {
                return Err("a service token needs at least one namespace (or \"*\")".into());
            }
        }
        Ok(())
    }
}

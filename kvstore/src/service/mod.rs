//! The block service (`tierkv.v1.BlockService` over gRPC): where prefill workers
//! publish KV blocks and decode workers fetch them. The server wraps a
//! [`crate::TieredStore`]; [`BlockClient`] talks to one; [`crate::RemoteTier`] makes a
//! peer's service a tier of a local store.

mod auth;
mod client;
mod config;
mod crc_cache;
pub(crate) mod data;
mod framing;
mod idle;
mod local;
mod reports;
pub(crate) mod request;
pub(crate) mod rpc;
mod server;
mod state;

pub use client::{BlockClient, BlockClientConfig, ClientTls, PublishSummary, Transport};
pub use config::{ServiceConfig, TlsConfig, TokenConfig};
pub use reports::{ServiceEvent, ServiceEvents, ServiceStats, ServiceTierStats};
pub use server::serve;
pub(crate) use state::BlockServer;

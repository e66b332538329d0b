//! The block service (`tierkv.v1.BlockService` over gRPC): where prefill workers
//! publish KV blocks and decode workers fetch them. The server wraps a
//! [`crate::TieredStore`]; [`BlockClient`] talks to one; [`crate::RemoteTier`] makes a
//! peer's service a tier of a local store.

mod auth;
mod client;
mod config;
mod data;
mod fetch;
mod local;
mod publish;
mod server;

pub use auth::{Access, Auth};
pub use client::{BlockClient, BlockClientConfig, PublishSummary, Transport};
pub use config::{ServiceConfig, TlsConfig, TokenConfig};
pub use server::{BlockServer, serve};

//! The gRPC calls of `tierkv.v1.BlockService`, one file each. Each takes the shared
//! [`BlockServer`](super::state::BlockServer) state and the request; the tonic trait
//! impl in `server.rs` only dispatches.

mod fetch;
mod lookup;
mod publish;
mod stats;
mod watch;

pub(crate) use fetch::{FetchStream, fetch};
pub(crate) use lookup::lookup;
pub(crate) use publish::publish;
pub(crate) use stats::stats;
pub(crate) use watch::{WatchStream, watch_events};

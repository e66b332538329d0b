//! The tierkv block service contract (`proto/tierkv/v1/block_service.proto`), generated
//! at build time.

#![allow(clippy::all)]

pub mod codec;

/// `tierkv.v1`.
pub mod v1 {
    tonic::include_proto!("tierkv.v1");
}

/// etcd's v3 API (`proto/etcd/etcd.proto`: KV, Watch, Lease), client side, used by
/// discovery. A subset of etcd's own `rpc.proto`, whose fields etcd documents
/// (<https://etcd.io/docs/v3.5/dev-guide/api_reference_v3/>).
#[allow(missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

//! The tier conformance suite (`tierkv_tiers::testing::conformance`) on [`RemoteTier`]:
//! a writable peer's block service (a real server over a host + disk store) used as a
//! tier. A peer bounds, lists and evicts on its own, so the suite runs it as a peer.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::sync::Arc;

use tierkv_kvstore::service::{BlockClientConfig, ServiceConfig};
use tierkv_kvstore::{RemoteTier, RemoteTierConfig, Tier, namespace_id};
use tierkv_tiers::testing::conformance::Capabilities;

const NAMESPACE: &str = "conformance@L2xH2xD16xf16xB16@tp0of1";

async fn remote() -> (Arc<dyn Tier>, common::Server) {
    let peer = common::start(ServiceConfig::default()).await;
    let tier = RemoteTier::new(RemoteTierConfig {
        name: "peer".into(),
        client: BlockClientConfig::new(peer.addr.clone()),
        read_only: false,
        namespaces: vec![NAMESPACE.into()],
        slot_bytes: 64 << 10,
    })
    .unwrap();
    (Arc::new(tier), peer)
}

tierkv_tiers::tier_conformance_tests!(
    remote_tier,
    Capabilities::peer().in_namespace(namespace_id(NAMESPACE)),
    remote()
);

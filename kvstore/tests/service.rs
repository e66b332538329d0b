//! The block service in-process over loopback: publish/fetch, auth, limits, integrity,
//! events, concurrency, and a peer's service as a tier.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tierkv_kvstore::service::{BlockClientConfig, ServiceConfig, TokenConfig, Transport};
use tierkv_kvstore::{RemoteTier, RemoteTierConfig, StoreEventKind, TieredStore};
use tierkv_proto::v1::{FetchRequest, LookupRequest, WatchRequest};
use tierkv_tiers::{BlockKey, HostTier, HostTierConfig, Tier};
use tonic::Code;

use tierkv_tiers::testing::payload as block;

mod common;
use common::{
    chunk, client, client_over, data_conn, host_over_read_only_peer, raw, rpc_code, start,
    start_with,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_fetch_in_request_order_with_missing_reported() {
    let server = start(ServiceConfig::default()).await;
    let c = client(&server.addr, None);
    // Multi-chunk blocks (chunks are 64 KiB) and a single-chunk one.
    let blocks: Vec<(u128, Bytes)> = (0..5u64)
        .map(|i| (i as u128 + 1, block(i, 200_000 + i as usize)))
        .collect();
    let mut all = blocks.clone();
    all.push((99, block(99, 1000)));
    let summary = c.publish("ns-a", &all).await.unwrap();
    assert_eq!((summary.stored, summary.already_present), (6, 0));
    let again = c.publish("ns-a", &blocks[..2]).await.unwrap();
    assert_eq!((again.stored, again.already_present), (0, 2));

    let got = c.fetch("ns-a", &[5, 1, 12345, 99, 3]).await.unwrap();
    assert_eq!(got[0].as_ref(), Some(&blocks[4].1));
    assert_eq!(got[1].as_ref(), Some(&blocks[0].1));
    assert!(got[2].is_none(), "unknown hash reported missing");
    assert_eq!(got[3].as_ref(), Some(&all[5].1));
    assert_eq!(got[4].as_ref(), Some(&blocks[2].1));
    // Namespaces are separate.
    assert_eq!(c.fetch("ns-b", &[1]).await.unwrap(), vec![None]);

    let (hits, tiers) = c.lookup("ns-a", &[1, 2, 3, 777, 4]).await.unwrap();
    assert_eq!(hits, 3);
    assert_eq!(tiers.len(), 3);
    assert!(
        tiers.iter().all(|t| t == "host" || t == "disk"),
        "{tiers:?}"
    );
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.blocks, 6);
    assert_eq!(stats.tiers.len(), 2);
    assert!(
        stats.data_port.is_some(),
        "the data channel is on by default"
    );
    assert_eq!(stats.local_socket, None);
    assert_ne!(stats.instance, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scope_every_call_to_their_namespaces() {
    let server = start(ServiceConfig {
        tokens: vec![
            TokenConfig {
                token: "token-for-a".into(),
                namespaces: vec!["a".into()],
            },
            TokenConfig {
                token: "token-for-b".into(),
                namespaces: vec!["b".into()],
            },
        ],
        ..Default::default()
    })
    .await;
    let a = client(&server.addr, Some("token-for-a"));
    let b = client(&server.addr, Some("token-for-b"));
    // Both block paths enforce the tokens.
    assert!(a.data_addr().await.is_some() && b.data_addr().await.is_some());
    a.publish("a", &[(1, block(1, 100))]).await.unwrap();
    assert_eq!(
        a.fetch("a", &[1]).await.unwrap()[0].as_ref(),
        Some(&block(1, 100))
    );

    let denied = [
        b.fetch("a", &[1]).await.unwrap_err(),
        b.lookup("a", &[1]).await.unwrap_err(),
        b.publish("a", &[(2, block(2, 100))]).await.unwrap_err(),
    ];
    for e in &denied {
        assert_eq!(rpc_code(e), Code::PermissionDenied, "{e}");
    }
    assert_eq!(
        rpc_code(&b.watch(&["a".into()]).await.err().unwrap()),
        Code::PermissionDenied
    );
    let anonymous = client(&server.addr, None);
    assert_eq!(
        rpc_code(&anonymous.fetch("a", &[1]).await.unwrap_err()),
        Code::Unauthenticated
    );
    let wrong = client(&server.addr, Some("not-a-token"));
    assert_eq!(
        rpc_code(&wrong.stats().await.unwrap_err()),
        Code::Unauthenticated
    );
    // Nothing was written by the refused publish.
    assert_eq!(a.lookup("a", &[2]).await.unwrap().0, 0);
    // Stats show a tenant its own blocks, not the store's traffic.
    b.publish("b", &[(5, block(5, 100)), (6, block(6, 100))])
        .await
        .unwrap();
    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    assert_eq!((sa.blocks, sb.blocks), (1, 2));
    assert_eq!((sa.tiers[0].blocks, sb.tiers[0].blocks), (1, 2));
    for t in sa.tiers.iter().chain(&sb.tiers) {
        assert_eq!(
            (t.hits, t.misses, t.bytes_read, t.bytes_written),
            (0, 0, 0, 0)
        );
        assert!(t.capacity_bytes > 0);
    }
    let root = server.store.stats();
    assert_eq!(root.blocks, 3);
    assert!(root.tiers[0].hits > 0, "the store did count the fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_store_nothing() {
    let server = start(ServiceConfig {
        max_blocks_per_request: 8,
        ..Default::default()
    })
    .await;
    let mut r = raw(&server.addr).await;
    let h = [7u8; 16];

    // A block over the 1 MiB slot limit.
    let big = chunk("n", &h, 0, Bytes::from_static(&[1u8; 16]), 2 << 20);
    let e = r.publish(tokio_stream::iter(vec![big])).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limit"), "{}", e.message());

    // A 15-byte hash.
    let bad = chunk("n", &[1u8; 15], 0, block(1, 10), 10);
    let e = r.publish(tokio_stream::iter(vec![bad])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("16 bytes"));

    // A gap between chunks.
    let data = block(3, 100);
    let parts = vec![
        chunk("n", &h, 0, data.slice(0..50), 100),
        chunk("n", &h, 60, data.slice(60..100), 100),
    ];
    let e = r.publish(tokio_stream::iter(parts)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A stream that ends inside a block: nothing of it is kept.
    let parts = vec![chunk("n", &h, 0, data.slice(0..50), 100)];
    let e = r.publish(tokio_stream::iter(parts)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nothing of it was stored"));

    // An empty namespace, and too many hashes.
    let e = r
        .fetch(FetchRequest {
            namespace: String::new(),
            hashes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = r
        .lookup(LookupRequest {
            namespace: "n".into(),
            hashes: vec![Bytes::copy_from_slice(&h); 9],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(server.store.stats().blocks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crc_mismatch_is_rejected_not_stored() {
    let server = start(ServiceConfig::default()).await;
    let mut r = raw(&server.addr).await;
    let good = chunk("n", &[1u8; 16], 0, block(1, 5000), 5000);
    let mut bad = chunk("n", &[2u8; 16], 0, block(2, 5000), 5000);
    bad.crc32c ^= 0xdead_beef;
    let reply = r
        .publish(tokio_stream::iter(vec![good, bad]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.stored, 1);
    assert_eq!(reply.rejected.len(), 1);
    assert_eq!(reply.rejected[0].hash.as_ref(), &[2u8; 16]);
    let c = client(&server.addr, None);
    let hashes = [
        u128::from_be_bytes([1u8; 16]),
        u128::from_be_bytes([2u8; 16]),
    ];
    let got = c.fetch("n", &hashes).await.unwrap();
    assert!(got[0].is_some() && got[1].is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_stored_and_removed_events_of_their_namespaces() {
    let server = start(ServiceConfig::default()).await;
    let c = client(&server.addr, None);
    let mut all = c.watch(&[]).await.unwrap();
    let mut only_b = c.watch(&["b".into()]).await.unwrap();
    c.publish("a", &[(1, block(1, 100))]).await.unwrap();
    c.publish("b", &[(2, block(2, 100))]).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), all.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.namespace, "a");
    assert_eq!(first.kind, StoreEventKind::Stored);
    assert_eq!(first.tier, "host");
    assert_eq!(first.hashes, [1]);
    let second = tokio::time::timeout(Duration::from_secs(5), all.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.namespace.as_str(), second.seq),
        ("b", first.seq + 1)
    );
    let b_event = tokio::time::timeout(Duration::from_secs(5), only_b.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(b_event.namespace, "b", "the filter skips namespace a");
    // Fill the 4-block host tier so block 1 is demoted: removed from host, stored in disk.
    for i in 10..14 {
        c.publish("a", &[(i, block(i as u64, 600_000))])
            .await
            .unwrap();
    }
    let mut saw_removed = false;
    for _ in 0..12 {
        let e = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if e.kind == StoreEventKind::Removed && e.hashes == [1] {
            assert_eq!(e.tier, "host");
            saw_removed = true;
            break;
        }
    }
    assert!(saw_removed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_clients_keep_every_byte() {
    for transport in [Transport::Auto, Transport::Grpc] {
        // 192 blocks: room for all of them in host memory.
        let server = start_with(ServiceConfig::default(), "256MiB").await;
        let probe = client_over(&server.addr, None, transport);
        assert_eq!(
            probe.data_addr().await.is_some(),
            transport == Transport::Auto,
            "{transport:?} picks its path"
        );
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let addr = server.addr.clone();
            tasks.push(tokio::spawn(async move {
                let c = client_over(&addr, None, transport);
                let ns = format!("tenant-{}", t % 4);
                // Sizes that straddle the read buffer and the gRPC chunk.
                let blocks: Vec<(u128, Bytes)> = (0..3)
                    .map(|i| {
                        let len = 50_000 + (t as usize * 7919 + i as usize * 104_729) % 300_000;
                        ((t * 10 + i) as u128, block(t * 10 + i, len))
                    })
                    .collect();
                let s = c.publish(&ns, &blocks).await.unwrap();
                assert_eq!((s.stored, s.already_present), (3, 0));
                let mut hashes: Vec<u128> = blocks.iter().map(|b| b.0).collect();
                hashes.insert(1, u128::MAX - t as u128);
                let got = c.fetch(&ns, &hashes).await.unwrap();
                assert!(got[1].is_none(), "unknown hash reported missing");
                let got: Vec<_> = got
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 1)
                    .collect();
                for ((hash, want), (_, got)) in blocks.iter().zip(got) {
                    assert!(
                        got.as_ref() == Some(want),
                        "block {hash} of client {t} differs or is missing ({transport:?})"
                    );
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(server.store.stats().blocks, 192);
    }
}

/// A raw data channel connection: hello with `token`, then the reply byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_channel_checks_tokens_checksums_and_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(ServiceConfig {
        tokens: vec![TokenConfig {
            token: "token-for-n".into(),
            namespaces: vec!["n".into()],
        }],
        ..Default::default()
    })
    .await;
    let c = client(&server.addr, Some("token-for-n"));
    let data = c.data_addr().await.expect("a data channel");

    // A wrong token: an UNAUTHENTICATED error frame, then the server hangs up.
    let (mut s, tag) = data_conn(&data, "wrong-token").await;
    assert_eq!(tag, 3);
    assert_eq!(s.read_u8().await.unwrap(), Code::Unauthenticated as u8);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();

    // One good block and one whose crc32c does not match: only the first is stored.
    let (mut s, tag) = data_conn(&data, "token-for-n").await;
    assert_eq!(tag, 0);
    let mut req = vec![2u8];
    req.extend_from_slice(&1u16.to_le_bytes());
    req.extend_from_slice(b"n");
    req.extend_from_slice(&2u32.to_le_bytes());
    for (hash, seed, flip) in [(7u128, 7u64, 0u32), (8, 8, 0xdead_beef)] {
        let payload = block(seed, 10_000);
        req.extend_from_slice(&hash.to_be_bytes());
        req.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        req.extend_from_slice(&(tierkv_tiers::checksum::crc32c(&payload) ^ flip).to_le_bytes());
        req.extend_from_slice(&payload);
    }
    s.write_all(&req).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 2, "a summary");
    assert_eq!(s.read_u64_le().await.unwrap(), 1, "stored");
    assert_eq!(s.read_u64_le().await.unwrap(), 0, "already present");
    assert_eq!(s.read_u32_le().await.unwrap(), 1, "rejected");
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(u128::from_be_bytes(h), 8);
    let got = c.fetch("n", &[7, 8]).await.unwrap();
    assert_eq!(got[0].as_ref(), Some(&block(7, 10_000)));
    assert!(got[1].is_none());

    // A namespace the token may not touch, on a fetch: an error frame, and the
    // connection stays usable.
    let mut req = vec![1u8];
    req.extend_from_slice(&1u16.to_le_bytes());
    req.extend_from_slice(b"m");
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&7u128.to_be_bytes());
    s.write_all(&req).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 3);
    assert_eq!(s.read_u8().await.unwrap(), Code::PermissionDenied as u8);
    let len = s.read_u16_le().await.unwrap() as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await.unwrap();

    // A block longer than the service takes: refused before any of it is read.
    let mut req = vec![2u8];
    req.extend_from_slice(&1u16.to_le_bytes());
    req.extend_from_slice(b"n");
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&9u128.to_be_bytes());
    req.extend_from_slice(&(1u64 << 40).to_le_bytes());
    req.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&req).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), 3);
    assert_eq!(s.read_u8().await.unwrap(), Code::ResourceExhausted as u8);
    let len = s.read_u16_le().await.unwrap() as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).await.unwrap();
    // ... and the connection is closed.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(server.store.stats().blocks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_falls_through_to_a_peer_and_promotes_what_it_fetched() {
    let peer = start(ServiceConfig::default()).await;
    let namespace = "model@L2xH2xD16xf16xB16@tp0of1";
    client(&peer.addr, None)
        .publish(namespace, &[(1, block(1, 4096)), (2, block(2, 4096))])
        .await
        .unwrap();

    let mut cc = BlockClientConfig::new(peer.addr.clone());
    cc.retries = 0;
    let store = host_over_read_only_peer("prefill-0", cc, namespace).await;
    let id = tierkv_kvstore::namespace_id(namespace);
    assert_eq!(
        store.get_key(BlockKey::new(id, 1)).await.unwrap(),
        Some(block(1, 4096))
    );
    assert!(store.get_key(BlockKey::new(id, 3)).await.unwrap().is_none());
    store.settle_promotions().await;
    let s = store.stats();
    assert_eq!((s.tiers[1].hits, s.tiers[1].promotions), (1, 1));
    // Promoted: now a local hit without asking the peer.
    assert_eq!(store.locate_prefix_keys(id, &[1]), vec![0]);
    // A read-only peer takes no puts.
    assert!(!store.tiers()[1].accepts_puts());
    assert!(
        store.tiers()[1]
            .put(BlockKey::new(id, 9), block(9, 10))
            .await
            .is_err()
    );

    // Lookups that reach the peer: 1 is local, 2 remote, 3 nowhere.
    let layout = tierkv_kvstore::KvLayout::new(2, 2, 16, tierkv_kvstore::DType::F16, 16).unwrap();
    let ns = tierkv_kvstore::Namespace::new("model", layout).unwrap();
    assert_eq!(ns.name(), namespace);
    let hashes = [1, 2, 3].map(tierkv_kvstore::BlockHash);
    assert_eq!(store.lookup_prefix(&ns, &hashes), 1);
    assert_eq!(store.lookup_prefix_deep(&ns, &hashes).await, 2);

    // A peer that is gone: reads miss, nothing fails.
    drop(peer);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(store.get_key(BlockKey::new(id, 2)).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_fetch_does_not_promote_unless_configured() {
    for promote_on_fetch in [false, true] {
        // Host of 2 slots over disk: of 4 published blocks, 1 and 2 are demoted.
        let server = start_with(
            ServiceConfig {
                promote_on_fetch,
                ..Default::default()
            },
            "2MiB",
        )
        .await;
        let c = client(&server.addr, None);
        let blocks: Vec<(u128, Bytes)> = (1..=4).map(|i| (i, block(i as u64, 300_000))).collect();
        c.publish("ns", &blocks).await.unwrap();
        let id = tierkv_kvstore::namespace_id("ns");
        assert_eq!(server.store.locate_prefix_keys(id, &[1, 2]), [1, 1]);
        assert_eq!(
            c.fetch("ns", &[1]).await.unwrap()[0].as_ref(),
            Some(&blocks[0].1)
        );
        // A local read of block 2 promotes it; the promoter works in order, so once it
        // is done, a promotion of block 1 queued by the fetch would be done too.
        server
            .store
            .get_key(BlockKey::new(id, 2))
            .await
            .unwrap()
            .unwrap();
        server.store.settle_promotions().await;
        let where_1 = server.store.locate_prefix_keys(id, &[1]);
        assert_eq!(
            where_1,
            [if promote_on_fetch { 0 } else { 1 }],
            "promote_on_fetch = {promote_on_fetch}"
        );
        assert_eq!(server.store.locate_prefix_keys(id, &[2]), [0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_streams_is_resource_exhausted() {
    let server = start(ServiceConfig {
        max_concurrent_streams: 1,
        ..Default::default()
    })
    .await;
    let c = client(&server.addr, None);
    let _watch = c.watch(&[]).await.unwrap();
    let mut r = raw(&server.addr).await;
    let e = r
        .watch_events(WatchRequest { namespaces: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_write_peer_receives_demoted_blocks() {
    let peer = start(ServiceConfig::default()).await;
    let namespace = "model@L2xH2xD16xf16xB16@tp0of1";
    let host: Arc<dyn Tier> = Arc::new(
        HostTier::new(HostTierConfig {
            capacity_bytes: 2 * 4096,
            slot_bytes: 4096,
            ..Default::default()
        })
        .unwrap(),
    );
    let remote = RemoteTier::new(RemoteTierConfig {
        name: "shared-cache".into(),
        client: BlockClientConfig::new(peer.addr.clone()),
        read_only: false,
        namespaces: vec![],
        slot_bytes: 4096,
    })
    .unwrap();
    remote.register_namespace(namespace);
    let store = TieredStore::builder()
        .tier(host)
        .tier(Arc::new(remote))
        .build()
        .await
        .unwrap();
    let id = tierkv_kvstore::namespace_id(namespace);
    for i in 1..=3u64 {
        store
            .put_key(BlockKey::new(id, i as u128), block(i, 4096))
            .await
            .unwrap();
    }
    // The host tier holds two blocks: the oldest was demoted (published) to the peer.
    assert_eq!(store.stats().tiers[0].demotions, 1);
    let peer_client = client(&peer.addr, None);
    assert_eq!(
        peer_client.fetch(namespace, &[1]).await.unwrap(),
        vec![Some(block(1, 4096))]
    );
    // And it still reads back through the store.
    assert_eq!(
        store.get_key(BlockKey::new(id, 1)).await.unwrap(),
        Some(block(1, 4096))
    );
}

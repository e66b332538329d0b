//! `Stats`: the store's per-tier figures and where the fast paths listen (the data
//! channel's port, the same-host socket, this process's instance id).
//!
//! A token limited to some namespaces sees only what is theirs: the blocks they hold
//! per tier (and the slots those take) beside each tier's capacity. The store-wide
//! counters (hits, misses, bytes, evictions) are left at zero for it: their changes
//! would tell it when other tenants' prefixes are hit.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tierkv_proto::v1::{StatsReply, StatsRequest, TierStatsProto};
use tonic::{Request, Status};

use crate::service::auth::Access;
use crate::service::state::BlockServer;

pub(crate) fn stats(
    server: &BlockServer,
    request: Request<StatsRequest>,
) -> Result<StatsReply, Status> {
    let start = std::time::Instant::now();
    let result = server.auth.caller(request.metadata()).map(|access| {
        let s = server.store.stats();
        let mut reply = StatsReply {
            data_port: u32::from(server.data_port.load(Relaxed)),
            local_socket: server.local_socket.get().cloned().unwrap_or_default(),
            instance: Bytes::copy_from_slice(&server.instance.to_le_bytes()),
            blocks: s.blocks,
            tiers: s
                .tiers
                .into_iter()
                .map(|t| TierStatsProto {
                    name: t.tier.name.clone(),
                    kind: t.tier.kind.to_string(),
                    capacity_bytes: t.tier.capacity_bytes,
                    used_bytes: t.tier.used_bytes,
                    payload_bytes: t.tier.payload_bytes,
                    blocks: t.tier.blocks,
                    hits: t.hits,
                    misses: t.misses,
                    bytes_in: t.bytes_written,
                    bytes_out: t.bytes_read,
                    evictions: t.evictions,
                    corrupt_blocks: t.tier.corrupt_blocks,
                })
                .collect(),
        };
        if let Access::Namespaces(names) = access {
            let ids: Vec<u64> = names.iter().map(|n| crate::namespace_id(n)).collect();
            let (per_tier, distinct) = server.store.blocks_of(&ids);
            let slot = server.store.slot_bytes() as u64;
            reply.blocks = distinct;
            for (t, blocks) in reply.tiers.iter_mut().zip(per_tier) {
                *t = TierStatsProto {
                    name: std::mem::take(&mut t.name),
                    kind: std::mem::take(&mut t.kind),
                    capacity_bytes: t.capacity_bytes,
                    used_bytes: blocks.saturating_mul(slot),
                    blocks,
                    ..TierStatsProto::default()
                };
            }
        }
        reply
    });
    server.finish("stats", start, result)
}

//! `Stats`: the store's per-tier figures and where the fast paths listen (the data
//! channel's port, the same-host socket, this process's instance id).

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tierkv_proto::v1::{StatsReply, StatsRequest, TierStatsProto};
use tonic::{Request, Status};

use crate::service::state::BlockServer;

pub(crate) fn stats(
    server: &BlockServer,
    request: Request<StatsRequest>,
) -> Result<StatsReply, Status> {
    let start = std::time::Instant::now();
    let result = server.auth.caller(request.metadata()).map(|_| {
        let s = server.store.stats();
        StatsReply {
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
        }
    });
    server.finish("stats", start, result)
}

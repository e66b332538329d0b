//! What [`BlockClient`](super::BlockClient) hands back, as domain types: a service's
//! figures ([`ServiceStats`]) and its store's events ([`ServiceEvent`]), checked on the
//! way in from the wire so callers never see proto messages.

use std::pin::Pin;

use futures::Stream;
use serde::Serialize;
use tierkv_proto::v1::{KvEvent, StatsReply, kv_event};

use crate::{KvStoreError, Result, StoreEventKind};

/// One tier of a block service's store, as its `Stats` call reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceTierStats {
    /// The tier's name.
    pub name: String,
    /// `host`, `disk`, `object`, `remote`, ...
    pub kind: String,
    /// Its capacity in bytes.
    pub capacity_bytes: u64,
    /// The capacity the blocks take (a whole slot each).
    pub used_bytes: u64,
    /// Sum of the blocks' payload lengths.
    pub payload_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// Reads served by this tier.
    pub hits: u64,
    /// Reads that reached it and found nothing.
    pub misses: u64,
    /// Bytes read out of it.
    pub bytes_read: u64,
    /// Bytes written into it.
    pub bytes_written: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Blocks found damaged on read and dropped.
    pub corrupt_blocks: u64,
}

/// A block service's figures and the fast paths it offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    /// Distinct blocks held in any tier.
    pub blocks: u64,
    /// Each tier, fastest first.
    pub tiers: Vec<ServiceTierStats>,
    /// The data channel's port, if it has one.
    pub data_port: Option<u16>,
    /// Its same-host socket, if it has one.
    pub local_socket: Option<String>,
    /// Random id of the server process (0 from a server that sends none).
    pub instance: u128,
}

impl TryFrom<StatsReply> for ServiceStats {
    type Error = KvStoreError;

    fn try_from(r: StatsReply) -> Result<ServiceStats> {
        let data_port = match r.data_port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                KvStoreError::Protocol(format!("stats: data port {p} is not a port"))
            })?),
        };
        let instance = match r.instance.len() {
            0 => 0,
            _ => u128::from_le_bytes(r.instance.as_ref().try_into().map_err(|_| {
                KvStoreError::Protocol(format!(
                    "stats: instance id of {} bytes, not 16",
                    r.instance.len()
                ))
            })?),
        };
        Ok(ServiceStats {
            blocks: r.blocks,
            tiers: r
                .tiers
                .into_iter()
                .map(|t| ServiceTierStats {
                    name: t.name,
                    kind: t.kind,
                    capacity_bytes: t.capacity_bytes,
                    used_bytes: t.used_bytes,
                    payload_bytes: t.payload_bytes,
                    blocks: t.blocks,
                    hits: t.hits,
                    misses: t.misses,
                    bytes_read: t.bytes_out,
                    bytes_written: t.bytes_in,
                    evictions: t.evictions,
                    corrupt_blocks: t.corrupt_blocks,
                })
                .collect(),
            data_port,
            local_socket: Some(r.local_socket).filter(|s| !s.is_empty()),
            instance,
        })
    }
}

/// Blocks of one namespace entering or leaving a peer's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceEvent {
    /// Entered or left.
    pub kind: StoreEventKind,
    /// The namespace's name.
    pub namespace: String,
    /// The blocks' hashes.
    pub hashes: Vec<u128>,
    /// The tier the blocks entered or left.
    pub tier: String,
    /// Increases by one per event: a gap means the watcher fell behind and should
    /// resynchronise.
    pub seq: u64,
}

impl TryFrom<KvEvent> for ServiceEvent {
    type Error = KvStoreError;

    fn try_from(e: KvEvent) -> Result<ServiceEvent> {
        let kind = match kv_event::Kind::try_from(e.kind) {
            Ok(kv_event::Kind::Stored) => StoreEventKind::Stored,
            Ok(kv_event::Kind::Removed) => StoreEventKind::Removed,
            _ => {
                return Err(KvStoreError::Protocol(format!(
                    "watch: unknown event kind {}",
                    e.kind
                )));
            }
        };
        let hashes = e
            .hashes
            .iter()
            .map(|h| {
                <[u8; 16]>::try_from(h.as_ref())
                    .map(u128::from_be_bytes)
                    .map_err(|_| {
                        KvStoreError::Protocol(format!(
                            "watch: block hash of {} bytes, not 16",
                            h.len()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ServiceEvent {
            kind,
            namespace: e.namespace,
            hashes,
            tier: e.tier,
            seq: e.seq,
        })
    }
}

/// The events of a watch, in order; ends when the server closes the stream.
pub type ServiceEvents = Pin<Box<dyn Stream<Item = Result<ServiceEvent>> + Send>>;

//! What every entry point of the block service (gRPC, the data channel, the same-host
//! channel) checks and how store errors become statuses.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::KvStoreError;

/// Longest namespace name accepted.
const MAX_NAMESPACE_LEN: usize = 512;

/// Waits up to `wait` for `bytes` of the in-flight budget.
pub(crate) async fn acquire_budget(
    sem: &Arc<Semaphore>,
    bytes: usize,
    wait: Duration,
) -> Result<OwnedSemaphorePermit, Status> {
    let n = u32::try_from(bytes).map_err(|_| Status::resource_exhausted("block too large"))?;
    match tokio::time::timeout(wait, Arc::clone(sem).acquire_many_owned(n)).await {
        Ok(Ok(permit)) => Ok(permit),
        Ok(Err(_)) => Err(Status::unavailable("block service is shutting down")),
        Err(_) => Err(Status::resource_exhausted(format!(
            "no room for {bytes} more bytes in flight within {wait:?}; retry later"
        ))),
    }
}

pub(crate) fn check_namespace(ns: &str) -> Result<(), Status> {
    if ns.is_empty() || ns.len() > MAX_NAMESPACE_LEN {
        return Err(Status::invalid_argument(format!(
            "namespace must be 1 to {MAX_NAMESPACE_LEN} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn parse_hash(h: &[u8]) -> Result<u128, Status> {
    let arr: [u8; 16] = h.try_into().map_err(|_| {
        Status::invalid_argument(format!("block hash must be 16 bytes, got {}", h.len()))
    })?;
    Ok(u128::from_be_bytes(arr))
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn store_status(e: KvStoreError) -> Status {
    match e {
        KvStoreError::NoRoom { .. } => Status::resource_exhausted(e.to_string()),
        KvStoreError::Tier(tierkv_tiers::TierError::TooLarge { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        other => {
            // The client learns the kind and an id to quote; the server's log has the
            // whole error (paths, endpoints and object keys stay here).
            static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!(error_id = id, error = %other, "store failure");
            Status::internal(format!(
                "{} (error {id} in the block service's log)",
                other.public_summary()
            ))
        }
    }
}

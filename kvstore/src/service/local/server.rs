//! The same-host channel's server side: one task per Unix connection, holding that
//! connection's leases and staged slots (dropped, so released, when it ends).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tierkv_tiers::{BlockKey, HostTier, PutOutcome, StagedSlot};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tonic::Status;

use super::fd::send_with_fd;
use super::{
    COMMIT_ENTRY, MAGIC, MAX_LEASES, MAX_STAGED, OP_COMMIT, OP_LEASE, OP_RELEASE, OP_STAGE,
    TAG_MISSING, TAG_NOT_SHARED, TAG_OK, TAG_SUMMARY, VERSION, be_u128, le_u64, lease_entry,
};
use crate::service::auth::Access;
use crate::service::data::{READ_BUFFER, error_frame};
use crate::service::framing::{Failure, broken, check_head, hello, in_step, read_head};
use crate::service::idle::{IdleLimit, within};
use crate::service::request::store_status;
use crate::service::state::BlockServer;

/// Removes the socket file when the server stops.
pub(crate) struct SocketFile(pub(crate) PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds `path` (replacing a stale socket file), readable and writable by the owner
/// only: same-host clients still present a token when tokens are configured.
pub(crate) fn bind(path: &std::path::Path) -> std::io::Result<(UnixListener, SocketFile)> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// Accepts same-host connections until the server closes.
pub(crate) async fn accept_loop(
    server: Arc<BlockServer>,
    host: HostTier,
    listener: UnixListener,
    socket: SocketFile,
) {
    let _socket = socket;
    let mut closing = server.closing.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let (server, host) = (Arc::clone(&server), host.clone());
                tokio::spawn(async move {
                    server.metrics.open_streams.inc();
                    if let Err(e) = serve_connection(&server, &host, stream).await {
                        tracing::debug!(error = %e, "same-host connection ended");
                    }
                    server.metrics.open_streams.dec();
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "same-host accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// One connection's state; dropping it releases every lease and staged slot. Each
/// half fails with `TimedOut` after `idle_timeout_ms` without progress inside a
/// request (the read half's limit is off between requests: holding leases while
/// reading them in place is how the channel is used).
struct Conn {
    rd: BufReader<IdleLimit<OwnedReadHalf>>,
    wr: IdleLimit<OwnedWriteHalf>,
    leases: HashMap<u64, Bytes>,
    staged: HashMap<u64, StagedSlot>,
    next_id: u64,
}

async fn serve_connection(
    server: &BlockServer,
    host: &HostTier,
    mut stream: UnixStream,
) -> std::io::Result<()> {
    let idle = server.limits.idle_timeout;
    let greeted = within(
        idle,
        "the same-host hello",
        hello(server, &mut stream, (MAGIC, VERSION, "same-host")),
    )
    .await;
    let access = match greeted
        .map_err(|s| std::io::Error::new(std::io::ErrorKind::TimedOut, s.message().to_string()))??
    {
        Ok(access) => access,
        Err(status) => {
            stream.write_all(&error_frame(&status)).await?;
            return Ok(());
        }
    };
    let Some(fd) = host.shared_fd() else {
        let status = Status::unavailable("the host tier is not shared");
        stream.write_all(&error_frame(&status)).await?;
        return Ok(());
    };
    let (_, slab_len) = host.slab();
    let mut reply = vec![0u8];
    reply.extend_from_slice(&server.instance.to_le_bytes());
    reply.extend_from_slice(&(slab_len as u64).to_le_bytes());
    reply.extend_from_slice(&(host.slot_stride() as u64).to_le_bytes());
    reply.extend_from_slice(&(tierkv_tiers::Tier::slot_bytes(host) as u64).to_le_bytes());
    send_with_fd(&stream, &reply, fd.as_raw_fd()).await?;
    let (rd, wr) = stream.into_split();
    let mut c = Conn {
        rd: BufReader::with_capacity(READ_BUFFER, IdleLimit::new(rd, idle)),
        wr: IdleLimit::new(wr, idle),
        leases: HashMap::new(),
        staged: HashMap::new(),
        next_id: 1,
    };
    let mut closing = server.closing.subscribe();
    loop {
        // At rest between requests: no limit on how long the client takes.
        c.rd.get_mut().set_on(false);
        let op = tokio::select! {
            op = c.rd.read_u8() => op,
            _ = closing.wait_for(|c| *c) => return Ok(()),
        };
        c.rd.get_mut().set_on(true);
        let op = match op {
            Ok(op) => op,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        let (rpc, result) = match op {
            OP_LEASE => ("local_lease", lease(server, host, &access, &mut c).await),
            OP_RELEASE => ("local_release", release(&mut c).await),
            OP_STAGE => ("local_stage", stage(host, &mut c).await),
            OP_COMMIT => ("local_commit", commit(server, &access, &mut c).await),
            other => (
                "local_unknown",
                Err(broken(Status::invalid_argument(format!(
                    "unknown same-host op {other}"
                )))),
            ),
        };
        if op != OP_RELEASE {
            let code = match &result {
                Ok(()) => tonic::Code::Ok,
                Err(f) => f.status.code(),
            };
            server.record_rpc(rpc, start, code);
        }
        if let Err(f) = result {
            c.wr.write_all(&error_frame(&f.status)).await?;
            if !f.in_step {
                return Ok(());
            }
        }
    }
}

async fn lease(
    server: &BlockServer,
    host: &HostTier,
    access: &Access,
    c: &mut Conn,
) -> Result<(), Failure> {
    let (ns, count) = read_head(server, &mut c.rd).await?;
    let mut raw = vec![0u8; count * 16];
    c.rd.read_exact(&mut raw).await?;
    let ns_id = check_head(server, access, ns)?;
    if c.leases.len() + count > MAX_LEASES {
        return Err(in_step(Status::resource_exhausted(format!(
            "more than {MAX_LEASES} leases held on one connection; release some"
        ))));
    }
    let mut reply = Vec::with_capacity(count * super::LEASE_ENTRY);
    for i in 0..count {
        let key = BlockKey::new(ns_id, be_u128(&raw, i * 16));
        let found = server
            .store
            .read_key(key, server.limits.promote_on_fetch)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "lease: read failed; reporting the block missing");
                None
            });
        let Some(data) = found else {
            reply.extend_from_slice(&lease_entry(TAG_MISSING, 0, 0, 0, 0));
            server.count_block("fetch", "missing");
            continue;
        };
        let crc = server.crcs.get_or_compute(key, &data);
        // In the slab already (a host hit), or copied once into a staged slot.
        let shared = match host.offset_of(&data) {
            Some(offset) => Some((offset, data)),
            None => host.stage().map(|slot| {
                let offset = slot.offset();
                copy_into(&slot, &data);
                (offset, slot.into_bytes(data.len()))
            }),
        };
        let Some((offset, view)) = shared else {
            reply.extend_from_slice(&lease_entry(TAG_NOT_SHARED, 0, 0, 0, 0));
            continue;
        };
        let id = c.next_id;
        c.next_id += 1;
        reply.extend_from_slice(&lease_entry(TAG_OK, id, offset, view.len() as u64, crc));
        server.count_bytes("out", view.len());
        server.count_block("fetch", "leased");
        c.leases.insert(id, view);
    }
    c.wr.write_all(&reply).await?;
    Ok(())
}

/// Copies a lower-tier block into a staged slot of the shared slab.
fn copy_into(slot: &StagedSlot, data: &[u8]) {
    let len = data.len().min(slot.capacity());
    // SAFETY: the slot is staged for this call alone (no client knows its offset yet),
    // `len <= capacity`, and the slab outlives `slot`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), slot.as_mut_ptr(), len) };
}

async fn release(c: &mut Conn) -> Result<(), Failure> {
    let count = c.rd.read_u32_le().await? as usize;
    if count > MAX_LEASES {
        return Err(broken(Status::invalid_argument(
            "release of too many leases",
        )));
    }
    let mut raw = vec![0u8; count * 8];
    c.rd.read_exact(&mut raw).await?;
    for i in 0..count {
        // An unknown id (already released) is ignored: releases are idempotent.
        c.leases.remove(&le_u64(&raw, i * 8));
    }
    Ok(())
}

async fn stage(host: &HostTier, c: &mut Conn) -> Result<(), Failure> {
    let count = c.rd.read_u32_le().await? as usize;
    if c.staged.len() + count > MAX_STAGED {
        return Err(in_step(Status::resource_exhausted(format!(
            "more than {MAX_STAGED} slots staged on one connection"
        ))));
    }
    let mut slots = Vec::with_capacity(count);
    for _ in 0..count {
        match host.stage() {
            Some(s) => slots.push(s),
            // Every slot is held: the client publishes over the network instead.
            None => {
                return Err(in_step(Status::resource_exhausted(
                    "no free slot in the shared host tier",
                )));
            }
        }
    }
    let mut reply = Vec::with_capacity(1 + count * 16);
    reply.push(TAG_OK);
    for s in slots {
        let id = c.next_id;
        c.next_id += 1;
        reply.extend_from_slice(&id.to_le_bytes());
        reply.extend_from_slice(&s.offset().to_le_bytes());
        c.staged.insert(id, s);
    }
    c.wr.write_all(&reply).await?;
    Ok(())
}

async fn commit(server: &BlockServer, access: &Access, c: &mut Conn) -> Result<(), Failure> {
    let (ns, count) = read_head(server, &mut c.rd).await?;
    let mut raw = vec![0u8; count * COMMIT_ENTRY];
    c.rd.read_exact(&mut raw).await?;
    let ns_id = check_head(server, access, ns)?;
    let (mut stored, mut present) = (0u64, 0u64);
    // Nothing is rejected here (no checksum crossed a wire); the field keeps the
    // reply's shape that of the data channel.
    let rejected: Vec<u8> = Vec::new();
    for e in raw.chunks_exact(COMMIT_ENTRY) {
        let (id, hash, len) = (le_u64(e, 0), be_u128(e, 8), le_u64(e, 24));
        let Some(slot) = c.staged.remove(&id) else {
            return Err(in_step(Status::invalid_argument(format!(
                "commit of unknown staged slot {id}"
            ))));
        };
        if len == 0 || len as usize > slot.capacity() || len as usize > server.limits.max_block {
            return Err(in_step(Status::invalid_argument(format!(
                "commit of {len} bytes into a slot of {}",
                slot.capacity()
            ))));
        }
        let data = slot.into_bytes(len as usize);
        let key = BlockKey::new(ns_id, hash);
        // The block enters the store here: its crc32c, computed once, is kept for
        // every later reader.
        server
            .crcs
            .insert(key, tierkv_tiers::checksum::crc32c(&data));
        server.count_bytes("in", data.len());
        match server.store.put_key(key, data).await {
            Ok(PutOutcome::Stored) => {
                stored += 1;
                server.count_block("publish", "stored");
            }
            Ok(PutOutcome::AlreadyPresent) => {
                present += 1;
                server.count_block("publish", "already_present");
            }
            Err(e) => return Err(in_step(store_status(e))),
        }
    }
    let mut reply = Vec::with_capacity(21 + rejected.len());
    reply.push(TAG_SUMMARY);
    reply.extend_from_slice(&stored.to_le_bytes());
    reply.extend_from_slice(&present.to_le_bytes());
    reply.extend_from_slice(&((rejected.len() / 16) as u32).to_le_bytes());
    reply.extend_from_slice(&rejected);
    c.wr.write_all(&reply).await?;
    Ok(())
}

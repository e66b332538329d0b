//! The data channel's server side: one task per connection, one request at a time,
//! the same namespaces, tokens, limits, budget and metrics as the gRPC calls.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tierkv_tiers::{BlockKey, PutOutcome};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;

use super::{
    MAGIC, OP_FETCH, OP_PUBLISH, PUBLISH_HEADER, READ_BUFFER, TAG_BLOCK, TAG_MISSING, TAG_SUMMARY,
    VERSION, block_header, error_frame, read_payload_into, write_all_vectored,
};
use crate::service::auth::Access;
use crate::service::framing::{Failure, broken, check_head, hello, in_step, read_head};
use crate::service::idle::IdleLimit;
use crate::service::request::{acquire_budget, store_status};
use crate::service::state::BlockServer;

/// Accepts data connections until the server closes.
pub(crate) async fn accept_loop(server: Arc<BlockServer>, listener: TcpListener) {
    let mut closing = server.closing.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    server.metrics.open_streams.inc();
                    if let Err(e) = serve_connection(&server, stream).await {
                        tracing::debug!(%peer, error = %e, "data connection ended");
                    }
                    server.metrics.open_streams.dec();
                });
            }
            Err(e) => {
                // Out of descriptors and the like: keep serving the connections we have.
                tracing::warn!(error = %e, "data channel accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// A data connection; each half fails with `TimedOut` after `idle_timeout_ms` without
/// progress inside a request (the read half's limit is off between requests).
struct Conn<R, W> {
    rd: BufReader<IdleLimit<R>>,
    wr: IdleLimit<W>,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Conn<R, W> {
    /// Resolves once the client has closed (or broken) the connection; never while it
    /// is only quiet or has sent its next request early.
    async fn client_gone(&mut self) {
        self.rd.get_mut().set_on(false);
        match self.rd.fill_buf().await {
            Ok([]) | Err(_) => {}
            Ok(_) => std::future::pending::<()>().await,
        }
    }
}

async fn serve_connection(server: &BlockServer, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    serve_halves(server, rd, wr).await
}

/// A data connection's requests, read from `rd` and answered on `wr`, until the client
/// closes it or breaks the protocol.
pub(crate) async fn serve_halves<R, W>(server: &BlockServer, rd: R, wr: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let idle = server.limits.idle_timeout;
    let mut c = Conn {
        rd: BufReader::with_capacity(READ_BUFFER, IdleLimit::new(rd, idle)),
        wr: IdleLimit::new(wr, idle),
    };
    let access = match hello(server, &mut c.rd, (MAGIC, VERSION, "data channel")).await? {
        Ok(access) => {
            c.wr.write_all(&[0]).await?;
            access
        }
        Err(status) => {
            c.wr.write_all(&error_frame(&status)).await?;
            return Ok(());
        }
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
            // The client closed the connection between requests.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        let (rpc, result) = match op {
            OP_FETCH => ("data_fetch", fetch(server, &access, &mut c).await),
            OP_PUBLISH => ("data_publish", publish(server, &access, &mut c).await),
            other => (
                "data_unknown",
                Err(broken(Status::invalid_argument(format!(
                    "unknown data channel op {other}"
                )))),
            ),
        };
        let code = match &result {
            Ok(()) => tonic::Code::Ok,
            Err(f) => f.status.code(),
        };
        server.record_rpc(rpc, start, code);
        if let Err(f) = result {
            c.wr.write_all(&error_frame(&f.status)).await?;
            if !f.in_step {
                drain(c).await;
                return Ok(());
            }
        }
    }
}

/// Before closing a connection whose request was refused half-read: stop writing and
/// read what the client still sends (bounded), so that the close does not reset the
/// connection and discard the error frame before the client reads it.
async fn drain<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut c: Conn<R, W>) {
    const MAX_DRAIN: u64 = 256 << 20;
    let _ = c.wr.shutdown().await;
    let mut sink = tokio::io::sink();
    let mut rest = (&mut c.rd).take(MAX_DRAIN);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::io::copy(&mut rest, &mut sink),
    )
    .await;
}

async fn fetch<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    server: &BlockServer,
    access: &Access,
    c: &mut Conn<R, W>,
) -> Result<(), Failure> {
    let (ns, count) = read_head(server, &mut c.rd).await?;
    let mut raw = vec![0u8; count * 16];
    c.rd.read_exact(&mut raw).await?;
    // The whole request is read: a refusal leaves the connection in step.
    let ns_id = check_head(server, access, ns)?;
    // Headers of missing blocks wait here and go out with the next write.
    let mut pending: Vec<u8> = Vec::new();
    for h in raw.chunks_exact(16) {
        let mut a = [0u8; 16];
        a.copy_from_slice(h);
        let key = BlockKey::new(ns_id, u128::from_be_bytes(a));
        let read = server.store.read_key(key, server.limits.promote_on_fetch);
        let found = tokio::select! {
            found = read => found,
            // The client closed the connection: stop waiting on the tiers for it.
            () = c.client_gone() => return Err(broken(Status::cancelled("the client went away"))),
        };
        let found = found.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "fetch: read failed; reporting the block missing");
            None
        });
        let Some(data) = found else {
            pending.extend_from_slice(&block_header(TAG_MISSING, 0, 0));
            server.count_block("fetch", "missing");
            continue;
        };
        let _permit = acquire_budget(&server.inflight, data.len(), server.limits.inflight_wait)
            .await
            .map_err(in_step)?;
        let crc = server.crcs.get_or_compute(key, &data);
        let header = block_header(TAG_BLOCK, data.len() as u64, crc);
        let mut bufs = [
            IoSlice::new(&pending),
            IoSlice::new(&header),
            IoSlice::new(&data),
        ];
        tierkv_tiers::failpoint::check("net.send")?;
        write_all_vectored(&mut c.wr, &mut bufs).await?;
        pending.clear();
        server.count_bytes("out", data.len());
        server.count_block("fetch", "sent");
    }
    if !pending.is_empty() {
        c.wr.write_all(&pending).await?;
    }
    Ok(())
}

async fn publish<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    server: &BlockServer,
    access: &Access,
    c: &mut Conn<R, W>,
) -> Result<(), Failure> {
    let (ns, count) = read_head(server, &mut c.rd).await?;
    let ns_id = check_head(server, access, ns).map_err(|f| broken(f.status))?;
    let (mut stored, mut present) = (0u64, 0u64);
    let mut rejected: Vec<u8> = Vec::new();
    // The receive buffer of the last block, once the store let go of it (a host tier
    // copies the payload into its slot): reused so that a stream of large blocks is
    // received into memory already faulted in, not into a fresh allocation each.
    let mut spare: Option<BytesMut> = None;
    for i in 0..count {
        let mut h = [0u8; PUBLISH_HEADER];
        tierkv_tiers::failpoint::check("net.recv")?;
        c.rd.read_exact(&mut h).await?;
        let mut a = [0u8; 16];
        a.copy_from_slice(&h[..16]);
        let hash = u128::from_be_bytes(a);
        let mut l = [0u8; 8];
        l.copy_from_slice(&h[16..24]);
        let len = u64::from_le_bytes(l);
        let mut k = [0u8; 4];
        k.copy_from_slice(&h[24..28]);
        let crc = u32::from_le_bytes(k);
        if len == 0 {
            return Err(broken(Status::invalid_argument("empty block (length 0)")));
        }
        if len > server.limits.max_block as u64 {
            return Err(broken(Status::resource_exhausted(format!(
                "block of {len} bytes exceeds this service's limit of {} bytes",
                server.limits.max_block
            ))));
        }
        let len = len as usize;
        let _permit = acquire_budget(&server.inflight, len, server.limits.inflight_wait)
            .await
            .map_err(broken)?;
        server.metrics.inflight_bytes.add(len as i64);
        let data = read_payload_into(&mut c.rd, len, spare.take()).await;
        server.metrics.inflight_bytes.sub(len as i64);
        let data = data?;
        server.count_bytes("in", len);
        // The one check of the bytes that crossed the wire.
        if tierkv_tiers::checksum::crc32c(&data) != crc {
            tracing::warn!("publish: crc32c mismatch; block rejected");
            rejected.extend_from_slice(&a);
            server.count_block("publish", "rejected");
            continue;
        }
        let key = BlockKey::new(ns_id, hash);
        let stored_now = server.store.put_key(key, data.clone()).await;
        spare = data.try_into_mut().ok();
        match stored_now {
            Ok(PutOutcome::Stored) => {
                // Only what was stored seeds the checksum readers are sent.
                server.crcs.insert(key, crc);
                stored += 1;
                server.count_block("publish", "stored");
            }
            Ok(PutOutcome::AlreadyPresent) => {
                present += 1;
                server.count_block("publish", "already_present");
            }
            Err(e) => {
                let status = store_status(e);
                // Blocks are stored in order: say which ones are in (a client retries
                // the rest).
                return Err(broken(Status::new(
                    status.code(),
                    format!(
                        "{} (block {i} of {count}; the {i} before it are stored or were present)",
                        status.message()
                    ),
                )));
            }
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

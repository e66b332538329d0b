//! The data channel: bulk block bytes over a plain TCP connection beside the gRPC
//! service, the way Mooncake's Transfer Engine moves bytes over TCP. gRPC keeps the
//! control calls (lookup, watch, stats, health); publish and fetch payloads go here
//! when the server advertises a data port (`StatsReply.data_port`) and the service is
//! not behind TLS.
//!
//! Why: a block crossing gRPC is chunked into HTTP/2 frames, flow-controlled by
//! windows smaller than a large block, encoded and decoded by prost, and reassembled
//! into a fresh buffer on the other side. Here the server writes a block straight from
//! tier memory to the socket (one vectored write of header and payload), the client
//! reads it straight into the buffer it returns, and the crc32c is carried, not
//! recomputed: the sender has it (kept since the block entered the store), the
//! receiver verifies it once.
//!
//! Wire format (little-endian; hashes are 16 bytes big-endian as on gRPC):
//!
//! ```text
//! hello    C->S  "TKVD" | version u16 | token_len u16 | token
//!          S->C  0 (ok)                     or an error frame, then close
//! request  C->S  op u8 | ns_len u16 | namespace | count u32 | body
//!   fetch   body = count x hash
//!           S->C  per hash, in order: 1 | len u64 | crc32c u32 | payload
//!                                 or 0 | 0 u64 | 0 u32        (missing)
//!                 or an error frame, after which the request is over
//!   publish body = count x (hash | len u64 | crc32c u32 | payload)
//!           S->C  2 | stored u64 | already_present u64 | n u32 | n x rejected hash
//!                 or an error frame, then close
//! error    tag 3 | grpc code u8 | msg_len u16 | message
//! ```
//!
//! A connection carries one request at a time; clients keep a pool of them.

pub(crate) mod client;
pub(crate) mod server;

use std::io::IoSlice;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::{Code, Status};

pub(crate) const MAGIC: [u8; 4] = *b"TKVD";
pub(crate) const VERSION: u16 = 1;
pub(crate) const OP_FETCH: u8 = 1;
pub(crate) const OP_PUBLISH: u8 = 2;
pub(crate) const TAG_MISSING: u8 = 0;
pub(crate) const TAG_BLOCK: u8 = 1;
pub(crate) const TAG_SUMMARY: u8 = 2;
pub(crate) const TAG_ERROR: u8 = 3;
/// A fetched block's header: tag, length, crc32c.
pub(crate) const BLOCK_HEADER: usize = 13;
/// A published block's header: hash, length, crc32c.
pub(crate) const PUBLISH_HEADER: usize = 28;
/// Longest token a hello may carry.
pub(crate) const MAX_TOKEN: usize = 4096;
/// Read buffer of a connection: headers are small, payloads bypass it.
pub(crate) const READ_BUFFER: usize = 64 << 10;

pub(crate) fn block_header(tag: u8, len: u64, crc: u32) -> [u8; BLOCK_HEADER] {
    let mut h = [0u8; BLOCK_HEADER];
    h[0] = tag;
    h[1..9].copy_from_slice(&len.to_le_bytes());
    h[9..13].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(crate) fn publish_header(hash: u128, len: u64, crc: u32) -> [u8; PUBLISH_HEADER] {
    let mut h = [0u8; PUBLISH_HEADER];
    h[..16].copy_from_slice(&hash.to_be_bytes());
    h[16..24].copy_from_slice(&len.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The header of a request (its body follows).
pub(crate) fn request_header(op: u8, namespace: &str, count: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(7 + namespace.len());
    h.push(op);
    h.extend_from_slice(&(namespace.len() as u16).to_le_bytes());
    h.extend_from_slice(namespace.as_bytes());
    h.extend_from_slice(&count.to_le_bytes());
    h
}

/// Whether a received block matches the crc32c its sender computed; one that does not
/// is logged and must be treated as missing (recomputed, never used).
pub(crate) fn crc_ok(data: &[u8], crc: u32, block: usize, how: &str) -> bool {
    let ok = tierkv_tiers::checksum::crc32c(data) == crc;
    if !ok {
        tracing::warn!(
            block,
            "{how} block failed its crc32c check; treating it as missing"
        );
    }
    ok
}

pub(crate) fn error_frame(status: &Status) -> Vec<u8> {
    let msg = status.message().as_bytes();
    let msg = &msg[..msg.len().min(u16::MAX as usize)];
    let mut f = Vec::with_capacity(4 + msg.len());
    f.push(TAG_ERROR);
    f.push(i32::from(status.code()) as u8);
    f.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    f.extend_from_slice(msg);
    f
}

/// Reads the rest of an error frame (its tag already read).
pub(crate) async fn read_error<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Status> {
    let code = Code::from_i32(i32::from(r.read_u8().await?));
    let len = r.read_u16_le().await? as usize;
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    Ok(Status::new(
        code,
        String::from_utf8_lossy(&msg).into_owned(),
    ))
}

/// Writes every byte of `bufs`, in as few system calls as the socket allows.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = w.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Reads exactly `len` bytes into a new buffer (no zero-fill: the socket writes it).
pub(crate) async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
) -> std::io::Result<bytes::Bytes> {
    read_payload_into(r, len, None).await
}

/// [`read_payload`] into `reuse` when it is large enough (its old bytes are dropped).
pub(crate) async fn read_payload_into<R: AsyncRead + Unpin>(
    r: &mut R,
    len: usize,
    reuse: Option<bytes::BytesMut>,
) -> std::io::Result<bytes::Bytes> {
    let mut buf = match reuse {
        Some(mut b) if b.capacity() >= len => {
            b.clear();
            b
        }
        _ => bytes::BytesMut::with_capacity(len),
    };
    while buf.len() < len {
        let want = len - buf.len();
        let mut part = (&mut buf).limit(want);
        if r.read_buf(&mut part).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf.freeze())
}

//! The data channel's client side: a pool of authenticated connections to one
//! server's data port; requests with a timeout; a connection that saw an I/O error
//! or a protocol error is dropped, never reused.

use std::io::IoSlice;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tonic::{Code, Status};

use super::{
    MAGIC, OP_FETCH, OP_PUBLISH, READ_BUFFER, TAG_BLOCK, TAG_ERROR, TAG_MISSING, TAG_SUMMARY,
    VERSION, crc_ok, publish_header, read_error, read_payload, request_header, write_all_vectored,
};
use crate::service::PublishSummary;

/// Idle connections kept per server.
const MAX_IDLE: usize = 64;

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

/// Why a data channel request failed.
pub(crate) enum DataError {
    /// The connection broke or timed out: worth a retry on a new connection.
    Io(std::io::Error),
    /// The server refused the request.
    Status(Status),
}

impl From<std::io::Error> for DataError {
    fn from(e: std::io::Error) -> DataError {
        DataError::Io(e)
    }
}

impl DataError {
    pub(crate) fn into_status(self) -> Status {
        match self {
            DataError::Io(e) => Status::unavailable(format!("data channel: {e}")),
            DataError::Status(s) => s,
        }
    }
}

fn protocol(what: &str) -> DataError {
    DataError::Status(Status::internal(format!("data channel: {what}")))
}

/// Connections to one server's data port.
pub(crate) struct DataChannel {
    addr: String,
    token: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    max_block: usize,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for DataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of logs.
        f.debug_struct("DataChannel")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DataChannel {
    pub(crate) fn new(
        addr: String,
        token: Option<String>,
        connect_timeout: Duration,
        timeout: Duration,
        max_block: usize,
    ) -> DataChannel {
        DataChannel {
            addr,
            token,
            connect_timeout,
            timeout,
            max_block,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<Conn, DataError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = Conn {
            rd: BufReader::with_capacity(READ_BUFFER, rd),
            wr,
        };
        let token = self.token.as_deref().unwrap_or("").as_bytes();
        let mut hello = Vec::with_capacity(8 + token.len());
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
        hello.extend_from_slice(token);
        c.wr.write_all(&hello).await?;
        match c.rd.read_u8().await? {
            0 => Ok(c),
            TAG_ERROR => Err(DataError::Status(read_error(&mut c.rd).await?)),
            _ => Err(protocol("bad hello reply")),
        }
    }

    fn take(&self) -> Option<Conn> {
        tierkv_tiers::sync::lock(&self.idle).pop()
    }

    fn put_back(&self, c: Conn) {
        let mut idle = tierkv_tiers::sync::lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(c);
        }
    }

    /// A pooled connection, or a new one.
    async fn checkout(&self) -> Result<Conn, DataError> {
        match self.take() {
            Some(c) => Ok(c),
            None => self.connect().await,
        }
    }

    fn timed_out() -> DataError {
        DataError::Io(std::io::ErrorKind::TimedOut.into())
    }

    /// Fetches blocks in request order; `None` for a block the server lacks or that
    /// failed its crc32c check. A connection goes back to the pool only after a
    /// complete, well-formed exchange.
    pub(crate) async fn fetch(
        &self,
        namespace: &str,
        hashes: &[u128],
    ) -> Result<Vec<Option<Bytes>>, DataError> {
        let work = async {
            let mut c = self.checkout().await?;
            let out = self.fetch_on(&mut c, namespace, hashes).await?;
            self.put_back(c);
            Ok(out)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Self::timed_out())?
    }

    async fn fetch_on(
        &self,
        c: &mut Conn,
        namespace: &str,
        hashes: &[u128],
    ) -> Result<Vec<Option<Bytes>>, DataError> {
        let count = u32::try_from(hashes.len()).map_err(|_| protocol("too many hashes"))?;
        let mut request = request_header(OP_FETCH, namespace, count);
        for h in hashes {
            request.extend_from_slice(&h.to_be_bytes());
        }
        c.wr.write_all(&request).await?;
        let mut out = Vec::with_capacity(hashes.len());
        for i in 0..hashes.len() {
            let tag = c.rd.read_u8().await?;
            if tag == TAG_ERROR {
                return Err(DataError::Status(read_error(&mut c.rd).await?));
            }
            let len = c.rd.read_u64_le().await?;
            let crc = c.rd.read_u32_le().await?;
            match tag {
                TAG_MISSING => out.push(None),
                TAG_BLOCK if len > 0 && len as usize <= self.max_block => {
                    let data = read_payload(&mut c.rd, len as usize).await?;
                    out.push(crc_ok(&data, crc, i, "fetched").then_some(data));
                }
                TAG_BLOCK => return Err(protocol(&format!("block of {len} bytes"))),
                _ => return Err(protocol("unexpected reply tag")),
            }
        }
        Ok(out)
    }

    /// Publishes blocks `(hash, payload)`; the payloads are written straight from the
    /// caller's buffers.
    pub(crate) async fn publish(
        &self,
        namespace: &str,
        blocks: &[(u128, Bytes)],
    ) -> Result<PublishSummary, DataError> {
        let work = async {
            let mut c = self.checkout().await?;
            let out = self.publish_on(&mut c, namespace, blocks).await?;
            self.put_back(c);
            Ok(out)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Self::timed_out())?
    }

    async fn publish_on(
        &self,
        c: &mut Conn,
        namespace: &str,
        blocks: &[(u128, Bytes)],
    ) -> Result<PublishSummary, DataError> {
        let count = u32::try_from(blocks.len()).map_err(|_| protocol("too many blocks"))?;
        let head = request_header(OP_PUBLISH, namespace, count);
        let headers: Vec<[u8; 28]> = blocks
            .iter()
            .map(|(h, d)| publish_header(*h, d.len() as u64, tierkv_tiers::checksum::crc32c(d)))
            .collect();
        {
            let mut bufs = Vec::with_capacity(1 + 2 * blocks.len());
            bufs.push(IoSlice::new(&head));
            for ((_, data), header) in blocks.iter().zip(&headers) {
                bufs.push(IoSlice::new(header));
                bufs.push(IoSlice::new(data));
            }
            write_all_vectored(&mut c.wr, &mut bufs).await?;
        }
        match c.rd.read_u8().await? {
            TAG_SUMMARY => {}
            // The server closes after refusing a publish.
            TAG_ERROR => return Err(DataError::Status(read_error(&mut c.rd).await?)),
            _ => return Err(protocol("unexpected reply tag")),
        }
        let stored = c.rd.read_u64_le().await?;
        let already_present = c.rd.read_u64_le().await?;
        let n = c.rd.read_u32_le().await? as usize;
        if n > blocks.len() {
            return Err(protocol("more rejected blocks than published"));
        }
        let mut rejected = Vec::with_capacity(n);
        for _ in 0..n {
            let mut h = [0u8; 16];
            c.rd.read_exact(&mut h).await?;
            rejected.push(u128::from_be_bytes(h));
        }
        Ok(PublishSummary {
            stored,
            already_present,
            rejected,
        })
    }
}

/// Retries make sense for these codes (as on gRPC).
pub(crate) fn retryable(e: &DataError) -> bool {
    match e {
        DataError::Io(_) => true,
        DataError::Status(s) => matches!(
            s.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::Aborted
        ),
    }
}

//! `Publish`: reassembling chunked blocks, checking their crc32c and storing them. A
//! block is stored only once complete and verified; a stream that breaks mid-block
//! stores nothing of it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tierkv_proto::v1::{BlockId, PublishChunk, PublishReply};
use tierkv_tiers::{BlockKey, PutOutcome};
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Status, Streaming};

use crate::metrics::Metrics;
use crate::service::auth::Access;
use crate::service::idle::within;
use crate::service::request::{acquire_budget, check_namespace, hex, parse_hash, store_status};
use crate::service::state::BlockServer;

/// Stores the blocks of one publish stream, counting the call.
pub(crate) async fn publish(
    server: &BlockServer,
    request: Request<Streaming<PublishChunk>>,
) -> Result<PublishReply, Status> {
    let start = std::time::Instant::now();
    server.metrics.open_streams.inc();
    let result = server.publish_inner(request).await;
    server.metrics.open_streams.dec();
    server.finish("publish", start, result)
}

impl BlockServer {
    async fn publish_inner(
        &self,
        request: Request<Streaming<PublishChunk>>,
    ) -> Result<PublishReply, Status> {
        let access = self.auth.caller(request.metadata())?;
        let _slot = self.stream_slot()?;
        let mut stream = request.into_inner();
        let mut reply = PublishReply::default();
        let mut current: Option<Assembly> = None;
        let mut blocks = 0usize;
        let idle = self.limits.idle_timeout;
        while let Some(chunk) = within(idle, "the next publish chunk", stream.message()).await?? {
            let data_len = chunk.data.len() as u64;
            if chunk.offset == 0 {
                if let Some(open) = &current {
                    return Err(Status::invalid_argument(format!(
                        "block {} ended after {} of {} bytes",
                        open.describe(),
                        open.buf_len(),
                        open.total_len
                    )));
                }
                blocks += 1;
                if blocks > self.limits.max_blocks {
                    return Err(Status::resource_exhausted(format!(
                        "more than {} blocks in one publish stream",
                        self.limits.max_blocks
                    )));
                }
                current = Some(self.start_block(&access, chunk).await?);
            } else {
                let Some(open) = current.as_mut() else {
                    return Err(Status::invalid_argument(format!(
                        "chunk at offset {} without a block started at offset 0",
                        chunk.offset
                    )));
                };
                open.append(chunk)?;
            }
            self.metrics
                .bytes_total
                .with_label_values(&["in"])
                .inc_by(data_len);
            if current.as_ref().is_some_and(Assembly::is_complete)
                && let Some(done) = current.take()
            {
                self.store_block(done, &mut reply).await?;
            }
        }
        if let Some(open) = current {
            return Err(Status::invalid_argument(format!(
                "stream ended inside block {} after {} of {} bytes; nothing of it was stored",
                open.describe(),
                open.buf_len(),
                open.total_len
            )));
        }
        Ok(reply)
    }

    async fn start_block(&self, access: &Access, chunk: PublishChunk) -> Result<Assembly, Status> {
        let id = chunk.id.ok_or_else(|| {
            Status::invalid_argument("the first chunk of a block must carry its id")
        })?;
        check_namespace(&id.namespace)?;
        access.check(&id.namespace)?;
        let hash = parse_hash(&id.hash)?;
        let total = chunk.total_len;
        if total == 0 {
            return Err(Status::invalid_argument("empty block (total_len = 0)"));
        }
        if total > self.limits.max_block as u64 {
            return Err(Status::resource_exhausted(format!(
                "block of {total} bytes exceeds this service's limit of {} bytes",
                self.limits.max_block
            )));
        }
        if chunk.data.len() as u64 > total {
            return Err(Status::invalid_argument("chunk is longer than total_len"));
        }
        let permit =
            acquire_budget(&self.inflight, total as usize, self.limits.inflight_wait).await?;
        self.metrics.inflight_bytes.add(total as i64);
        let key = BlockKey::new(self.remember(&id.namespace), hash);
        let buf = if chunk.data.len() as u64 == total {
            Buf::Whole(chunk.data)
        } else {
            let mut b = BytesMut::with_capacity(total as usize);
            b.extend_from_slice(&chunk.data);
            Buf::Parts(b)
        };
        Ok(Assembly {
            id,
            key,
            total_len: total,
            crc: chunk.crc32c,
            buf,
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
        })
    }

    /// Stores a complete block; its in-flight budget is held until the store has it.
    async fn store_block(
        &self,
        mut done: Assembly,
        reply: &mut PublishReply,
    ) -> Result<(), Status> {
        let data = done.take_data();
        let (id, key, crc) = (std::mem::take(&mut done.id), done.key, done.crc);
        let outcome = if tierkv_tiers::checksum::crc32c(&data) != crc {
            tracing::warn!(namespace = %id.namespace, "publish: crc32c mismatch; block rejected");
            reply.rejected.push(id);
            "rejected"
        } else {
            match self.store.put_key(key, data).await {
                Ok(PutOutcome::Stored) => {
                    // Only what was stored may seed the checksum readers are sent: a
                    // different payload under a key already held is not it.
                    self.crcs.insert(key, crc);
                    reply.stored += 1;
                    "stored"
                }
                Ok(PutOutcome::AlreadyPresent) => {
                    reply.already_present += 1;
                    "already_present"
                }
                Err(e) => {
                    // Blocks are stored in stream order: say how many are in, so the
                    // client retries only the rest.
                    let status = store_status(e);
                    let done = reply.stored + reply.already_present + reply.rejected.len() as u64;
                    return Err(Status::new(
                        status.code(),
                        format!(
                            "{} (after {done} blocks of this stream: {} stored, {} already present)",
                            status.message(),
                            reply.stored,
                            reply.already_present
                        ),
                    ));
                }
            }
        };
        self.metrics
            .blocks_total
            .with_label_values(&["publish", outcome])
            .inc();
        Ok(())
    }
}

/// A block being received.
struct Assembly {
    id: BlockId,
    key: BlockKey,
    total_len: u64,
    crc: u32,
    buf: Buf,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

enum Buf {
    /// The block arrived in one chunk: kept as received, no copy.
    Whole(Bytes),
    Parts(BytesMut),
}

impl Assembly {
    fn buf_len(&self) -> u64 {
        match &self.buf {
            Buf::Whole(b) => b.len() as u64,
            Buf::Parts(b) => b.len() as u64,
        }
    }

    fn is_complete(&self) -> bool {
        self.buf_len() == self.total_len
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.id.namespace, hex(&self.id.hash))
    }

    fn append(&mut self, chunk: PublishChunk) -> Result<(), Status> {
        if let Some(id) = &chunk.id
            && (id.namespace != self.id.namespace || id.hash != self.id.hash)
        {
            return Err(Status::invalid_argument(format!(
                "chunk of another block inside block {}",
                self.describe()
            )));
        }
        if chunk.offset != self.buf_len() {
            return Err(Status::invalid_argument(format!(
                "block {}: chunk at offset {}, expected {}",
                self.describe(),
                chunk.offset,
                self.buf_len()
            )));
        }
        if self.buf_len() + chunk.data.len() as u64 > self.total_len {
            return Err(Status::invalid_argument(format!(
                "block {}: chunks run past total_len {}",
                self.describe(),
                self.total_len
            )));
        }
        match &mut self.buf {
            Buf::Parts(b) => b.extend_from_slice(&chunk.data),
            Buf::Whole(_) => return Err(Status::invalid_argument("chunk after a complete block")),
        }
        Ok(())
    }

    fn take_data(&mut self) -> Bytes {
        match std::mem::replace(&mut self.buf, Buf::Whole(Bytes::new())) {
            Buf::Whole(b) => b,
            Buf::Parts(b) => b.freeze(),
        }
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        self.metrics.inflight_bytes.sub(self.total_len as i64);
    }
}

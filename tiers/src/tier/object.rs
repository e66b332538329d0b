//! Object-storage tier through `object_store`: a local directory by default, or S3
//! (and S3-compatible services: OSS, MinIO, Ceph RGW) with endpoint, bucket, region and
//! credentials. One object per block, named `<prefix>/<namespace>/<hash>.kvb`, holding
//! the 64-byte [`crate::header`] and the payload, so damage is detected on read.
//!
//! Requests are bounded by a semaphore; HTTP stores retry with exponential backoff
//! (object_store's retry layer) and time out. The tier keeps an in-memory index of the
//! objects it knows (loaded by listing at open), which bounds its capacity and answers
//! `contains` without a request.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::Semaphore;

use super::host::check_payload;
use super::{PutOutcome, Tier, TierKind, lock};
use crate::defaults;
use crate::header::{self, HEADER_LEN};
use crate::{BlockKey, BlockKeyMap, Result, TierCounters, TierError, TierStats};

/// Where the objects live.
#[derive(Clone)]
pub enum ObjectBackend {
    /// A directory on a local filesystem (created if missing).
    LocalDir(PathBuf),
    /// An S3 bucket, or an S3-compatible service when `endpoint` is set.
    S3 {
        /// The bucket's name.
        bucket: String,
        /// AWS region; S3-compatible services usually accept any. Default `us-east-1`.
        region: String,
        /// `http(s)://host:port` of an S3-compatible service; `None` for AWS.
        endpoint: Option<String>,
        /// Static credentials. `None` means anonymous requests; the `tierkv` binaries
        /// fill these from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
        access_key_id: Option<String>,
        /// The secret of `access_key_id` (never printed: `Debug` shows `<redacted>`).
        secret_access_key: Option<String>,
        /// Allow plain-HTTP endpoints. Default false.
        allow_http: bool,
        /// Use `bucket.host` addressing instead of `host/bucket` (OSS needs this).
        virtual_hosted_style: bool,
    },
}

impl std::fmt::Debug for ObjectBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectBackend::LocalDir(dir) => f.debug_tuple("LocalDir").field(dir).finish(),
            ObjectBackend::S3 {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                allow_http,
                virtual_hosted_style,
            } => f
                .debug_struct("S3")
                .field("bucket", bucket)
                .field("region", region)
                .field("endpoint", endpoint)
                .field("access_key_id", access_key_id)
                .field(
                    "secret_access_key",
                    &secret_access_key.as_ref().map(|_| "<redacted>"),
                )
                .field("allow_http", allow_http)
                .field("virtual_hosted_style", virtual_hosted_style)
                .finish(),
        }
    }
}

/// Configuration of an [`ObjectTier`].
#[derive(Clone, Debug)]
pub struct ObjectTierConfig {
    /// Tier name. Default `"object"`.
    pub name: String,
    /// Where the objects live. No default: the configuration names it.
    pub backend: ObjectBackend,
    /// Key prefix inside the bucket or directory. Default `"tierkv"`.
    pub prefix: String,
    /// How many bytes of blocks to keep; rounded down to whole slots. Default
    /// [`defaults::OBJECT_CAPACITY`] (16 GiB).
    pub capacity_bytes: u64,
    /// Largest block payload. Default 2 MiB.
    pub slot_bytes: usize,
    /// Requests in flight at once. Default 32.
    pub max_concurrency: usize,
    /// Retries of a failed request (HTTP backends). Default 3.
    pub max_retries: usize,
    /// Timeout of one request (HTTP backends). Default 30 s.
    pub request_timeout: Duration,
}

impl Default for ObjectTierConfig {
    fn default() -> Self {
        ObjectTierConfig {
            name: "object".into(),
            backend: ObjectBackend::LocalDir(PathBuf::from("tierkv-data/object")),
            prefix: defaults::OBJECT_PREFIX.into(),
            capacity_bytes: defaults::OBJECT_CAPACITY,
            slot_bytes: defaults::SLOT_BYTES,
            max_concurrency: defaults::OBJECT_MAX_CONCURRENCY,
            max_retries: defaults::OBJECT_MAX_RETRIES,
            request_timeout: defaults::OBJECT_REQUEST_TIMEOUT,
        }
    }
}

impl ObjectTierConfig {
    /// How many blocks the tier holds.
    pub fn capacity_blocks(&self) -> u64 {
        self.capacity_bytes / self.slot_bytes.max(1) as u64
    }

    /// Builds the `object_store` client for [`ObjectTierConfig::backend`].
    pub fn build_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let name = &self.name;
        let obj_err = |source| TierError::Object {
            tier: name.clone(),
            source,
        };
        match &self.backend {
            ObjectBackend::LocalDir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    TierError::io(
                        format!("creating object tier directory {}", dir.display()),
                        e,
                    )
                })?;
                let store =
                    object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(obj_err)?;
                Ok(Arc::new(store))
            }
            ObjectBackend::S3 {
                bucket,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                allow_http,
                virtual_hosted_style,
            } => {
                let retry = object_store::RetryConfig {
                    max_retries: self.max_retries,
                    retry_timeout: self.request_timeout * (self.max_retries as u32 + 1),
                    backoff: object_store::BackoffConfig {
                        init_backoff: Duration::from_millis(50),
                        max_backoff: Duration::from_secs(5),
                        base: 2.0,
                    },
                };
                let client = object_store::ClientOptions::new()
                    .with_timeout(self.request_timeout)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_allow_http(*allow_http);
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_allow_http(*allow_http)
                    .with_virtual_hosted_style_request(*virtual_hosted_style)
                    .with_retry(retry)
                    .with_client_options(client);
                if let Some(endpoint) = endpoint {
                    b = b.with_endpoint(endpoint);
                }
                match (access_key_id, secret_access_key) {
                    (Some(id), Some(secret)) => {
                        b = b.with_access_key_id(id).with_secret_access_key(secret);
                    }
                    (None, None) => b = b.with_skip_signature(true),
                    _ => {
                        return Err(TierError::config(
                            name,
                            "set both access_key_id and secret_access_key, or neither",
                        ));
                    }
                }
                Ok(Arc::new(b.build().map_err(obj_err)?))
            }
        }
    }
}

/// One indexed block: its payload length and the generation of the put that stored
/// it, so that a read which finds the object gone or damaged forgets only that put's
/// block, never a newer one of the same key.
#[derive(Clone, Copy)]
struct Entry {
    len: u64,
    generation: u64,
}

struct Index {
    blocks: BlockKeyMap<Entry>,
    /// Generation of the next indexed block.
    next_generation: u64,
    /// Puts admitted but not finished: they count against capacity.
    /// Keys being written; a put of the same key waits on the receiver until the
    /// writer is done (its sender dropped), so it never returns before the data landed.
    writing: BlockKeyMap<tokio::sync::watch::Receiver<()>>,
    used_bytes: u64,
}

struct Inner {
    name: String,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    slot_bytes: usize,
    capacity_blocks: u64,
    permits: Semaphore,
    index: Mutex<Index>,
    counters: TierCounters,
}

/// A block pool in object storage. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ObjectTier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ObjectTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTier")
            .field("name", &self.name())
            .field("slot_bytes", &self.slot_bytes())
            .field("capacity_blocks", &self.capacity_blocks())
            .field("blocks", &self.len())
            .finish_non_exhaustive()
    }
}

impl ObjectTier {
    /// Connects to the backend and lists the blocks already stored under the prefix.
    /// An unreachable endpoint fails here, after the configured retries.
    pub async fn open(config: ObjectTierConfig) -> Result<ObjectTier> {
        let store = config.build_store()?;
        Self::with_store(config, store).await
    }

    /// Like [`ObjectTier::open`] over an already built store.
    pub async fn with_store(
        config: ObjectTierConfig,
        store: Arc<dyn ObjectStore>,
    ) -> Result<ObjectTier> {
        let name = config.name.clone();
        if config.slot_bytes == 0 {
            return Err(TierError::config(&name, "slot_bytes must be > 0"));
        }
        if config.max_concurrency == 0 {
            return Err(TierError::config(&name, "max_concurrency must be > 0"));
        }
        let capacity_blocks = config.capacity_blocks();
        if capacity_blocks == 0 {
            return Err(TierError::config(
                &name,
                format!(
                    "capacity of {} bytes holds no block of {} bytes",
                    config.capacity_bytes, config.slot_bytes
                ),
            ));
        }
        let tier = ObjectTier {
            inner: Arc::new(Inner {
                name,
                store,
                prefix: config.prefix.trim_matches('/').to_string(),
                slot_bytes: config.slot_bytes,
                capacity_blocks,
                permits: Semaphore::new(config.max_concurrency),
                index: Mutex::new(Index {
                    blocks: BlockKeyMap::default(),
                    writing: BlockKeyMap::default(),
                    next_generation: 0,
                    used_bytes: 0,
                }),
                counters: TierCounters::default(),
            }),
        };
        tier.reload().await?;
        Ok(tier)
    }

    /// The underlying store (benchmarks compare against it).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.inner.store)
    }

    /// The object path of a block.
    pub fn object_path(&self, key: BlockKey) -> ObjectPath {
        self.inner.path(key)
    }

    async fn reload(&self) -> Result<()> {
        let inner = &self.inner;
        let prefix = ObjectPath::from(inner.prefix.as_str());
        let listed: Vec<_> = {
            let _permit = inner.permit().await?;
            inner
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|e| inner.obj_error(e))?
        };
        let mut index = lock(&inner.index);
        for meta in listed {
            let Some(key) = parse_path(meta.location.as_ref()) else {
                continue;
            };
            let Some(len) = meta.size.checked_sub(HEADER_LEN as u64) else {
                continue;
            };
            if !index.blocks.contains_key(&key) {
                index.insert(key, len);
            }
        }
        Ok(())
    }
}

/// `<prefix>/<namespace:016x>/<hash:032x>.kvb` -> key.
fn parse_path(path: &str) -> Option<BlockKey> {
    let mut parts = path.rsplit('/');
    let hash = parts.next()?.strip_suffix(".kvb")?;
    let ns = parts.next()?;
    if hash.len() != 32 || ns.len() != 16 {
        return None;
    }
    Some(BlockKey::new(
        u64::from_str_radix(ns, 16).ok()?,
        u128::from_str_radix(hash, 16).ok()?,
    ))
}

impl Inner {
    fn path(&self, key: BlockKey) -> ObjectPath {
        let name = format!("{:016x}/{:032x}.kvb", key.namespace, key.hash);
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.permits
            .acquire()
            .await
            .map_err(|_| TierError::Closed(self.name.clone()))
    }

    fn obj_error(&self, source: object_store::Error) -> TierError {
        TierCounters::add(&self.counters.io_errors, 1);
        TierError::Object {
            tier: self.name.clone(),
            source,
        }
    }

    /// Removes `key`'s block (only that of put `generation`, when given): out of the
    /// index, then its object deleted. Meanwhile the key counts as being written, so a
    /// put of the same key waits and its object is never the one deleted.
    async fn remove_block(&self, key: BlockKey, generation: Option<u64>) -> Result<bool> {
        let done = loop {
            let in_flight = {
                let mut index = lock(&self.index);
                match index.writing.get(&key) {
                    Some(rx) => rx.clone(),
                    None => match index.blocks.get(&key).copied() {
                        Some(e) if generation.is_none_or(|g| g == e.generation) => {
                            index.blocks.remove(&key);
                            index.used_bytes -= e.len;
                            let (tx, rx) = tokio::sync::watch::channel(());
                            index.writing.insert(key, rx);
                            break tx;
                        }
                        _ => return Ok(false),
                    },
                }
            };
            let mut in_flight = in_flight;
            let _ = in_flight.changed().await;
        };
        let _guard = WritingGuard {
            inner: self,
            key,
            _done: done,
        };
        let _permit = self.permit().await?;
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(self.obj_error(e)),
        }
    }
}

impl Index {
    fn insert(&mut self, key: BlockKey, len: u64) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some(old) = self.blocks.insert(key, Entry { len, generation }) {
            self.used_bytes -= old.len;
        }
        self.used_bytes += len;
    }
}

/// Releases a put's admission if the put does not finish (error or cancellation).
struct WritingGuard<'a> {
    inner: &'a Inner,
    key: BlockKey,
    /// Dropped after the key leaves `writing`: wakes puts waiting on the same key.
    _done: tokio::sync::watch::Sender<()>,
}

impl Drop for WritingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.inner.index).writing.remove(&self.key);
    }
}

#[async_trait]
impl Tier for ObjectTier {
    fn name(&self) -> &str {
        &self.inner.name
    }
    fn kind(&self) -> TierKind {
        TierKind::Object
    }
    fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }
    fn capacity_blocks(&self) -> u64 {
        self.inner.capacity_blocks
    }
    fn payload_bytes(&self) -> u64 {
        lock(&self.inner.index).used_bytes
    }
    fn len(&self) -> u64 {
        let index = lock(&self.inner.index);
        (index.blocks.len() + index.writing.len()) as u64
    }
    fn is_persistent(&self) -> bool {
        true
    }

    async fn put(&self, key: BlockKey, data: Bytes) -> Result<PutOutcome> {
        let inner = &self.inner;
        check_payload(&inner.name, inner.slot_bytes, &data)?;
        let done = loop {
            let in_flight = {
                let mut index = lock(&inner.index);
                if index.blocks.contains_key(&key) {
                    return Ok(PutOutcome::AlreadyPresent);
                }
                match index.writing.get(&key) {
                    Some(rx) => rx.clone(),
                    None => {
                        if (index.blocks.len() + index.writing.len()) as u64
                            >= inner.capacity_blocks
                        {
                            return Err(TierError::Full {
                                tier: inner.name.clone(),
                                capacity_blocks: inner.capacity_blocks,
                            });
                        }
                        let (tx, rx) = tokio::sync::watch::channel(());
                        index.writing.insert(key, rx);
                        break tx;
                    }
                }
            };
            // Another put of this key is writing it: wait, then look again (it may
            // have failed, and then this put writes).
            let mut in_flight = in_flight;
            let _ = in_flight.changed().await;
        };
        let guard = WritingGuard {
            inner,
            key,
            _done: done,
        };
        let len = data.len() as u64;
        let header = Bytes::copy_from_slice(&header::encode(key, &data));
        let payload: PutPayload = [header, data].into_iter().collect();
        crate::failpoint::check("object.put")
            .map_err(|e| TierError::io(format!("tier {}: putting {key}", inner.name), e))?;
        {
            let _permit = inner.permit().await?;
            inner
                .store
                .put(&inner.path(key), payload)
                .await
                .map_err(|e| inner.obj_error(e))?;
        }
        lock(&inner.index).insert(key, len);
        drop(guard);
        TierCounters::add(&inner.counters.puts, 1);
        TierCounters::add(&inner.counters.put_bytes, len);
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, key: BlockKey) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        TierCounters::add(&inner.counters.gets, 1);
        let entry = lock(&inner.index).blocks.get(&key).copied();
        let Some(Entry {
            len: expected,
            generation,
        }) = entry
        else {
            TierCounters::add(&inner.counters.misses, 1);
            return Ok(None);
        };
        crate::failpoint::check("object.get")
            .map_err(|e| TierError::io(format!("tier {}: getting {key}", inner.name), e))?;
        let fetched = {
            let _permit = inner.permit().await?;
            match inner.store.get(&inner.path(key)).await {
                Ok(result) => result.bytes().await,
                Err(e) => Err(e),
            }
        };
        let stored = match fetched {
            Ok(stored) => stored,
            Err(object_store::Error::NotFound { .. }) => {
                // Deleted behind our back (lifecycle rule, another node): a miss.
                inner.remove_block(key, Some(generation)).await?;
                TierCounters::add(&inner.counters.misses, 1);
                return Ok(None);
            }
            Err(e) => return Err(inner.obj_error(e)),
        };
        match header::verify(&stored, key, Some(expected)) {
            Ok(len) => {
                TierCounters::add(&inner.counters.hits, 1);
                TierCounters::add(&inner.counters.get_bytes, len as u64);
                Ok(Some(stored.slice(HEADER_LEN..HEADER_LEN + len)))
            }
            Err(why) => {
                TierCounters::add(&inner.counters.corrupt_blocks, 1);
                TierCounters::add(&inner.counters.misses, 1);
                tracing::warn!(tier = %inner.name, %key, %why, "corrupt object; deleting it");
                inner.remove_block(key, Some(generation)).await?;
                Ok(None)
            }
        }
    }

    async fn contains(&self, key: BlockKey) -> Result<bool> {
        Ok(lock(&self.inner.index).blocks.contains_key(&key))
    }

    async fn remove(&self, key: BlockKey) -> Result<bool> {
        let removed = self.inner.remove_block(key, None).await?;
        if removed {
            TierCounters::add(&self.inner.counters.removes, 1);
        }
        Ok(removed)
    }

    async fn keys(&self) -> Result<Vec<(BlockKey, u64)>> {
        Ok(lock(&self.inner.index)
            .blocks
            .iter()
            .map(|(k, e)| (*k, e.len))
            .collect())
    }

    fn stats(&self) -> TierStats {
        let (used, blocks) = {
            let index = lock(&self.inner.index);
            (index.used_bytes, index.blocks.len() as u64)
        };
        self.inner.counters.snapshot(
            &self.inner.name,
            TierKind::Object,
            self.capacity_bytes(),
            self.slot_bytes(),
            used,
            blocks,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_round_trip() {
        let key = BlockKey::new(0xabc, 0x1234_5678_9abc_def0_1122_3344_5566_7788);
        let path = format!("tierkv/{:016x}/{:032x}.kvb", key.namespace, key.hash);
        assert_eq!(parse_path(&path), Some(key));
        assert_eq!(parse_path("tierkv/short/abc.kvb"), None);
        assert_eq!(parse_path("tierkv/0000000000000abc/zz.kvb"), None);
        assert_eq!(parse_path("unrelated.txt"), None);
    }
}

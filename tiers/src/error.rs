use std::path::PathBuf;

/// Every error a tier can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TierError {
    /// The tier has no free slot; the caller (the tiered store) must evict first.
    #[error("tier `{tier}` is full ({capacity_blocks} blocks)")]
    Full {
        /// The tier's name.
        tier: String,
        /// How many blocks it holds when full.
        capacity_blocks: u64,
    },
    /// A payload larger than the tier's slot.
    #[error("block of {len} bytes does not fit tier `{tier}`, whose slots hold {slot_bytes} bytes")]
    TooLarge {
        /// The tier's name.
        tier: String,
        /// The payload's length.
        len: usize,
        /// The largest payload a slot holds.
        slot_bytes: usize,
    },
    /// An empty payload; only full blocks are stored.
    #[error("empty block payload for tier `{0}`")]
    Empty(String),
    /// A configuration that cannot work (zero capacity, slot larger than capacity, ...).
    #[error("invalid configuration for tier `{tier}`: {reason}")]
    Config {
        /// The tier's name.
        tier: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// An I/O error with what was being done and where.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, on which file.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The on-disk geometry disagrees with the configuration or is damaged.
    #[error("disk tier at {path}: {reason}")]
    DiskLayout {
        /// The tier's data file.
        path: PathBuf,
        /// What disagrees.
        reason: String,
    },
    /// The RocksDB slot index failed.
    #[error("disk index at {path}: {source}")]
    Index {
        /// The index directory.
        path: PathBuf,
        /// RocksDB's error.
        #[source]
        source: rocksdb::Error,
    },
    /// The object store failed (after its retries).
    #[error("object tier `{tier}`: {source}")]
    Object {
        /// The tier's name.
        tier: String,
        /// `object_store`'s error.
        #[source]
        source: object_store::Error,
    },
    /// A tier behind a network (a peer's block service) could not be reached or failed.
    #[error("tier `{tier}` is unavailable: {reason}{}", caused_by(.source))]
    Unavailable {
        /// The tier's name.
        tier: String,
        /// What failed, in words (never the peer's credentials).
        reason: String,
        /// The underlying error (the peer's client error), when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A put into a read-only tier.
    #[error("tier `{0}` is read-only")]
    ReadOnly(String),
    /// A CUDA call failed, or there is no GPU (feature `cuda`).
    #[error("GPU: {0}")]
    Gpu(String),
    /// The tier's I/O threads are gone.
    #[error("tier `{0}` is shut down")]
    Closed(String),
}

/// An underlying error of another crate, kept as a [`TierError`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `": {source}"`, or nothing without a source: the message then says what failed and
/// why, and [`std::error::Error::source`] still gives the cause itself.
fn caused_by(source: &Option<BoxError>) -> String {
    source
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default()
}

impl TierError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TierError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(tier: &str, reason: impl Into<String>) -> Self {
        TierError::Config {
            tier: tier.to_string(),
            reason: reason.into(),
        }
    }
}

/// `Result` with [`TierError`].
pub type Result<T, E = TierError> = std::result::Result<T, E>;

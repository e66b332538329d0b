use std::path::PathBuf;

/// Every error of the kvstore crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvStoreError {
    /// A tier failed.
    #[error(transparent)]
    Tier(#[from] tierkv_tiers::TierError),
    /// A payload whose size does not match the namespace's KV layout.
    #[error("block payload has {got} bytes, but the layout {layout} needs exactly {expected}")]
    WrongBlockSize {
        /// The layout's description.
        layout: String,
        /// The bytes one block of that layout has.
        expected: usize,
        /// The payload's bytes.
        got: usize,
    },
    /// A configuration that cannot work.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A configuration file that cannot be read or parsed.
    #[error("config file {path}: {source}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong: the I/O error, the TOML error (with its line) or the
        /// validation error.
        #[source]
        source: tierkv_tiers::BoxError,
    },
    /// TOML that does not parse as a store configuration.
    #[error("invalid store configuration: {0}")]
    Toml(#[from] toml::de::Error),
    /// A layout with a zero dimension or a size that overflows.
    #[error("invalid KV layout: {0}")]
    Layout(String),
    /// A block service call failed (after retries, for idempotent calls).
    #[error("block service {op}: {code:?}: {message}")]
    Rpc {
        /// The call (`fetch`, `publish`, ...).
        op: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A block service could not be reached or set up.
    #[error("block service at {addr}: {context}: {source}")]
    Connect {
        /// The address (or socket path).
        addr: String,
        /// What was being done (`connecting`, `binding the data channel`, ...).
        context: String,
        /// The underlying error (transport, I/O, TLS).
        #[source]
        source: tierkv_tiers::BoxError,
    },
    /// Something that is not a valid message of the block service protocol.
    #[error("block service protocol: {0}")]
    Protocol(String),
    /// Every tier that could take the block is full of pinned blocks.
    #[error("no room in tier `{tier}`: all {capacity_blocks} blocks are pinned or being written")]
    NoRoom {
        /// The tier's name.
        tier: String,
        /// Its capacity in blocks.
        capacity_blocks: u64,
    },
}

/// `Result` with [`KvStoreError`].
pub type Result<T, E = KvStoreError> = std::result::Result<T, E>;

impl KvStoreError {
    /// What a remote client may be told about this error: its kind and the tier it
    /// happened in. Never the paths, endpoints, object keys or the text of the
    /// underlying error (object_store and I/O errors carry them): those go to the
    /// server's log.
    pub fn public_summary(&self) -> String {
        use tierkv_tiers::TierError as T;
        match self {
            KvStoreError::Tier(t) => match t {
                T::Full { .. } | T::TooLarge { .. } | T::Empty(_) | T::ReadOnly(_) => t.to_string(),
                T::Closed(tier) => format!("tier `{tier}` is shut down"),
                T::Config { tier, .. } => format!("tier `{tier}` is misconfigured"),
                T::Io { .. } => "a tier's I/O failed".into(),
                T::DiskLayout { .. } => "a disk tier's files are unusable".into(),
                T::Index { .. } => "a disk tier's index failed".into(),
                T::Object { tier, .. } => format!("object tier `{tier}` failed"),
                T::Unavailable { tier, .. } => format!("tier `{tier}` is unavailable"),
                T::Gpu(_) => "the GPU tier failed".into(),
                // A tier error added later: its kind only, never its text.
                _ => "a tier failed".into(),
            },
            KvStoreError::WrongBlockSize { .. }
            | KvStoreError::NoRoom { .. }
            | KvStoreError::Layout(_) => self.to_string(),
            KvStoreError::Config(_) | KvStoreError::ConfigFile { .. } | KvStoreError::Toml(_) => {
                "the store's configuration is invalid".into()
            }
            KvStoreError::Rpc { op, code, .. } => {
                format!("a peer block service's {op} failed ({code:?})")
            }
            KvStoreError::Connect { .. } => "a peer block service is unreachable".into(),
            KvStoreError::Protocol(_) => "a peer block service broke the protocol".into(),
        }
    }
}

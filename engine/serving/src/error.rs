//! The serving crate's one error type.

/// Everything that can go wrong in the serving layer: a request, the text side of a
/// model, a worker or discovery, or the backend behind the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServingError {
    /// The request is invalid (bad parameter, too long, cannot fit): the caller's fault.
    #[error("{0}")]
    InvalidRequest(String),
    /// Tokenizing or rendering the chat template failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The backend is shutting down, gone, or has no worker for the request.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The model file or directory is missing, unreadable or not a supported model.
    #[error("model: {0}")]
    Model(String),
    /// Discovery (etcd) failed.
    #[error("discovery: {0}")]
    Discovery(String),
    /// The KV block store (hashing, namespaces, a block service) failed.
    #[error("store: {0}")]
    Store(#[from] tierkv_kvstore::KvStoreError),
    /// A trace or request log that does not parse (file and line named).
    #[error("trace: {0}")]
    Trace(String),
    /// An I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The backend failed in a way the caller cannot fix. `summary` is all a client is
    /// told (no paths, endpoints or object keys); `source` goes to the log.
    #[error("{summary}: {source}")]
    Internal {
        /// What a client may be told.
        summary: String,
        /// The failure itself.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `Result` with [`ServingError`].
pub type Result<T, E = ServingError> = std::result::Result<T, E>;

impl ServingError {
    pub(crate) fn model(msg: impl Into<String>) -> ServingError {
        ServingError::Model(msg.into())
    }
}

//! The engine's one error type.

/// Everything that can go wrong in the engine library.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file or directory is missing, unreadable or not a supported model.
    #[error("model: {0}")]
    Model(String),
    /// A numeric kernel failed (shape mismatch and the like): a bug or a broken model file.
    #[error("compute: {0}")]
    Compute(#[from] candle_core::Error),
    /// Tokenizing or rendering the chat template failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The request is invalid (bad parameter, too long, cannot fit): the caller's fault.
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine is shutting down or its worker thread is gone.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// The engine configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// The KV block store failed.
    #[error("store: {0}")]
    Store(#[from] tierkv_kvstore::KvStoreError),
    /// A trace or request log is malformed (the message names the file and line).
    #[error("trace: {0}")]
    Trace(String),
    /// Discovery (etcd) failed.
    #[error("discovery: {0}")]
    Discovery(String),
    /// An I/O error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`EngineError`].
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub(crate) fn model(msg: impl Into<String>) -> EngineError {
        EngineError::Model(msg.into())
    }
}

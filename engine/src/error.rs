//! The engine's one error type.

use tierkv_serving::ServingError;

/// Everything that can go wrong in the engine library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model file or directory is missing, unreadable or not a supported model.
    #[error("model: {0}")]
    Model(String),
    /// A numeric kernel failed (shape mismatch and the like): a bug or a broken model file.
    #[error("compute: {0}")]
    Compute(#[from] candle_core::Error),
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
    /// The serving layer failed: the text side of the model (tokenizer, chat template,
    /// GGUF metadata), the API, the PD protocol or discovery.
    #[error(transparent)]
    Serving(#[from] ServingError),
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

/// What the API layer (and so a client) sees of an engine error: the caller's faults
/// and unavailability as they are, everything else as an internal failure whose
/// summary names only its kind (paths, endpoints and object keys stay in the log).
impl From<EngineError> for ServingError {
    fn from(e: EngineError) -> ServingError {
        match e {
            EngineError::Serving(e) => e,
            EngineError::InvalidRequest(m) => ServingError::InvalidRequest(m),
            EngineError::Unavailable(m) => ServingError::Unavailable(m),
            EngineError::Config(m) => ServingError::Config(m),
            EngineError::Store(e) => ServingError::Internal {
                summary: e.public_summary(),
                source: Box::new(e),
            },
            EngineError::Compute(e) => ServingError::Internal {
                summary: "the model's compute failed".into(),
                source: Box::new(e),
            },
            other => ServingError::Internal {
                summary: "internal error".into(),
                source: Box::new(other),
            },
        }
    }
}

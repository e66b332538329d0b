//! The crate's one error enum, and its mapping to the Python exception `TierkvError`.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;

create_exception!(
    _tierkv,
    TierkvError,
    PyException,
    "An error of tierkv: the message is the Rust error's."
);

/// Every error of the Python binding.
#[derive(Debug, thiserror::Error)]
pub enum PyTierkvError {
    #[error(transparent)]
    Store(#[from] tierkv_kvstore::KvStoreError),
    /// A copy to or from caller memory outside every registered region.
    #[error(
        "memory range {addr:#x}+{len} is not inside a registered region (register_memory first)"
    )]
    Unregistered { addr: usize, len: usize },
    /// Ranges whose total differs from the block's size.
    #[error("ranges cover {got} bytes, but a block of {namespace} has {expected}")]
    RangeSize {
        namespace: String,
        expected: usize,
        got: usize,
    },
    /// A block handed over that does not match its namespace.
    #[error("block payload has {got} bytes, but a block of {namespace} has {expected}")]
    PayloadSize {
        namespace: String,
        expected: usize,
        got: usize,
    },
    #[error("invalid argument: {0}")]
    Argument(String),
    /// An operation the kind of store cannot do (e.g. `serve` on a sidecar client).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A GPU copy that could not run (no GPU, a bad address, a driver error).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Gpu(tierkv_tiers::TierError),
    #[error("the store is closed")]
    Closed,
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::sync::Arc<std::io::Error>),
}

pub(crate) type Result<T, E = PyTierkvError> = std::result::Result<T, E>;

impl From<PyTierkvError> for PyErr {
    fn from(e: PyTierkvError) -> PyErr {
        TierkvError::new_err(e.to_string())
    }
}

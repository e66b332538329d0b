//! The tokio runtime shared by every store and client of the process.

use std::sync::OnceLock;

use crate::error::{PyTierkvError, Result};

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The process-wide runtime: two worker threads (the stores' own I/O runs on their
/// dedicated threads), created on first use.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("tierkv-py")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PyTierkvError::Runtime(e.clone()))
}

//! The Rust side's `tracing` logs (the store, the block service and its clients): off
//! until the Python side turns them on (`tierkv` does when `TIERKV_LOG` is set), then
//! written to stderr, one line per event, as the `tierkv` binary writes them.

use pyo3::prelude::*;

use crate::error::PyTierkvError;

/// Writes the Rust side's logs to stderr with `filter` (`tracing` env-filter syntax,
/// e.g. `info` or `tierkv_kvstore=debug`). Returns false if logging was already set up
/// (by an earlier call or by the embedding process); a bad filter is an error.
#[pyfunction]
pub(crate) fn init_logging(filter: &str) -> PyResult<bool> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| PyTierkvError::Argument(format!("log filter {filter:?}: {e}")))?;
    Ok(tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init()
        .is_ok())
}

//! Subcommands. This is the binary edge: the only place that reads the environment.

pub mod blocks;
pub mod config;
pub mod engine;
pub mod frontend;
pub mod register;
pub mod serve;
pub mod up;
pub mod vllm_worker;

use std::path::PathBuf;

use tierkv_kvstore::StoreConfig;

/// Loads the configuration (the built-in default without a file), applies a data
/// directory override, and fills credentials the file leaves out from the
/// environment: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` for S3 tiers and
/// `TIERKV_TOKEN` for remote tiers.
pub fn load_config(
    config: Option<&PathBuf>,
    data_dir: Option<PathBuf>,
    default: impl FnOnce() -> StoreConfig,
) -> anyhow::Result<StoreConfig> {
    let mut c = match config {
        Some(path) => StoreConfig::from_file(path)?,
        None => default(),
    };
    if let Some(dir) = data_dir {
        c.data_dir = dir;
    }
    c.fill_secrets(|name| std::env::var(name).ok());
    c.validate()?;
    Ok(c)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    serve::shutdown_signal_impl().await
}

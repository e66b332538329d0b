//! `tierkv`: the tierkv command line.
//!
//! Today it inspects and opens store configurations; the engine daemon (`tierkv
//! engine`), the block service (`tierkv serve`) and the local cluster (`tierkv up`) are
//! built on the same store.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tierkv_kvstore::{StoreConfig, TierConfig, TieredStore};

#[derive(Parser, Debug)]
#[command(
    name = "tierkv",
    version,
    about = "tierkv: a tiered KV-cache block store for LLM inference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the effective configuration (the built-in default without --config).
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration, open every tier and report what each holds.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

/// Loads the configuration and fills S3 credentials from the environment where the
/// file leaves them out (the only place tierkv reads the environment).
fn load(config: Option<&PathBuf>, data_dir: Option<PathBuf>) -> anyhow::Result<StoreConfig> {
    let mut c = match config {
        Some(path) => StoreConfig::from_file(path)?,
        None => StoreConfig::default(),
    };
    if let Some(dir) = data_dir {
        c.data_dir = dir;
    }
    for tier in &mut c.tiers {
        if let TierConfig::Object(o) = tier
            && let Some(s3) = &mut o.s3
        {
            if s3.access_key_id.is_none() {
                s3.access_key_id = std::env::var("AWS_ACCESS_KEY_ID").ok();
            }
            if s3.secret_access_key.is_none() {
                s3.secret_access_key = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
            }
        }
    }
    Ok(c)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Config(ConfigCommand::Show { config }) => {
            print!("{}", load(config.as_ref(), None)?.to_toml());
        }
        Command::Config(ConfigCommand::Check { config, data_dir }) => {
            let c = load(config.as_ref(), data_dir)?;
            let store = TieredStore::open(&c)
                .await
                .with_context(|| format!("opening the store under {}", c.data_dir.display()))?;
            println!("configuration OK; data_dir = {}", c.data_dir.display());
            println!(
                "{:<10} {:<7} {:>14} {:>14} {:>8}",
                "tier", "kind", "capacity", "used", "blocks"
            );
            for s in store.stats().tiers {
                let t = s.tier;
                println!(
                    "{:<10} {:<7} {:>14} {:>14} {:>8}",
                    t.name, t.kind, t.capacity_bytes, t.used_bytes, t.blocks
                );
            }
        }
    }
    Ok(())
}

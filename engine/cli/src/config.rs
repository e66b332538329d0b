//! `tierkv config show | check`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tierkv_kvstore::{StoreConfig, TieredStore};

#[derive(Subcommand, Debug)]
pub(crate) enum ConfigCommand {
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

pub(crate) async fn run(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Show { config } => {
            print!(
                "{}",
                // Secrets read from the file or the environment are never printed.
                crate::edge::load_config(config.as_ref(), None, StoreConfig::default)?
                    .redacted()
                    .to_toml()
            );
        }
        ConfigCommand::Check { config, data_dir } => {
            let c = crate::edge::load_config(config.as_ref(), data_dir, StoreConfig::default)?;
            let store = TieredStore::open(&c)
                .await
                .with_context(|| format!("opening the store under {}", c.data_dir.display()))?;
            println!("configuration OK; data_dir = {}", c.data_dir.display());
            println!(
                "{:<10} {:<7} {:>20} {:>14} {:>8}",
                "tier", "kind", "capacity", "used", "blocks"
            );
            for s in store.stats().tiers {
                let t = s.tier;
                println!(
                    "{:<10} {:<7} {:>20} {:>14} {:>8}",
                    t.name, t.kind, t.capacity_bytes, t.used_bytes, t.blocks
                );
            }
        }
    }
    Ok(())
}

//! `tierkv blocks put | get | lookup | stats`: an operator client for a block service.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig};

#[derive(clap::Args, Debug)]
pub(crate) struct BlocksArgs {
    /// The service, `host:port` or `http(s)://host:port`.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: String,
    /// Bearer token (default: `TIERKV_TOKEN` from the environment).
    #[arg(long)]
    pub token: Option<String>,
    /// CA certificate to trust (TLS; an address without a scheme becomes `https://`).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Certificate and key to present to a service that asks for one (mutual TLS).
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: BlocksCommand,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BlocksCommand {
    /// Publish one block from a file (or standard input).
    Put {
        #[arg(long)]
        namespace: String,
        /// 32 hex digits.
        #[arg(long)]
        hash: String,
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Fetch one block into a file (or standard output).
    Get {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        hash: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The longest cached prefix of a chain of hashes, and where each block is.
    Lookup {
        #[arg(long)]
        namespace: String,
        /// Hashes in chain order, 32 hex digits each.
        hashes: Vec<String>,
    },
    /// Per-tier capacity, usage and counters.
    Stats,
}

fn parse_hash(s: &str) -> anyhow::Result<u128> {
    if s.len() != 32 {
        bail!("block hash `{s}` must be 32 hex digits");
    }
    u128::from_str_radix(s, 16).with_context(|| format!("block hash `{s}` is not hex"))
}

pub(crate) async fn run(args: BlocksArgs) -> anyhow::Result<()> {
    let mut config = BlockClientConfig::new(args.addr);
    config.token = args.token.or_else(|| std::env::var("TIERKV_TOKEN").ok());
    config.tls_ca = args.tls_ca;
    config.tls_cert = args.tls_cert;
    config.tls_key = args.tls_key;
    let client = BlockClient::new(config)?;
    match args.command {
        BlocksCommand::Put {
            namespace,
            hash,
            file,
        } => {
            let hash = parse_hash(&hash)?;
            let data = match file {
                Some(path) => {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?
                }
                None => {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .context("reading standard input")?;
                    v
                }
            };
            if data.is_empty() {
                bail!("the block is empty");
            }
            let s = client
                .publish(&namespace, &[(hash, Bytes::from(data))])
                .await?;
            if !s.rejected.is_empty() {
                bail!("the service rejected the block");
            }
            println!("stored={} already_present={}", s.stored, s.already_present);
        }
        BlocksCommand::Get {
            namespace,
            hash,
            out,
        } => {
            let hash = parse_hash(&hash)?;
            let Some(data) = client.fetch(&namespace, &[hash]).await?.pop().flatten() else {
                bail!("block {hash:032x} is not in namespace `{namespace}` on this service");
            };
            match out {
                Some(path) => std::fs::write(&path, &data)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout()
                    .write_all(&data)
                    .context("writing standard output")?,
            }
        }
        BlocksCommand::Lookup { namespace, hashes } => {
            let hashes = hashes
                .iter()
                .map(|h| parse_hash(h))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (hits, tiers) = client.lookup(&namespace, &hashes).await?;
            println!("prefix_hits={hits}");
            for (h, t) in hashes.iter().zip(&tiers) {
                println!("{h:032x} {t}");
            }
        }
        BlocksCommand::Stats => {
            let s = client.stats().await?;
            println!("blocks={}", s.blocks);
            println!(
                "{:<10} {:<7} {:>16} {:>16} {:>8} {:>10} {:>10} {:>10}",
                "tier", "kind", "capacity", "used", "blocks", "hits", "misses", "corrupt"
            );
            for t in s.tiers {
                println!(
                    "{:<10} {:<7} {:>16} {:>16} {:>8} {:>10} {:>10} {:>10}",
                    t.name,
                    t.kind,
                    t.capacity_bytes,
                    t.used_bytes,
                    t.blocks,
                    t.hits,
                    t.misses,
                    t.corrupt_blocks
                );
            }
        }
    }
    Ok(())
}

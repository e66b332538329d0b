//! `tierkv-bench service`: publish and fetch through a `tierkv serve` process over
//! loopback with 1, 8 and 32 concurrent clients, beside Redis SET / GET of the same
//! payloads, in the same run. Rounds alternate tierkv and Redis; medians.

mod redis;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use tierkv_kvstore::ByteSize;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig};

use crate::drive::{drive, median};
use crate::report::{self, Baseline, Measurement, Row, byte_row};
use crate::tier::payload;

#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    /// Concurrent clients (each its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2MiB,16MiB")]
    pub block_sizes: Vec<ByteSize>,
    /// Blocks each client publishes and fetches per round [default: 8, or 3 with --quick].
    #[arg(long)]
    pub ops: Option<usize>,
    /// Rounds, alternating tierkv and Redis [default: 5, or 3 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// A short run.
    #[arg(long)]
    pub quick: bool,
    /// Data directory of the tierkv server.
    #[arg(long, default_value = "tierkv-bench-data/service")]
    pub dir: PathBuf,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// A `tierkv serve` child process.
struct TierkvServer {
    child: Child,
    addr: String,
}

impl TierkvServer {
    fn start(dir: &std::path::Path, block: usize, blocks: usize) -> anyhow::Result<TierkvServer> {
        let exe = std::env::current_exe()?
            .parent()
            .map(|p| p.join("tierkv"))
            .context("locating the tierkv binary")?;
        if !exe.exists() {
            bail!(
                "{} not found: build it with `cargo build --release -p tierkv-engine`",
                exe.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let stride = block.div_ceil(4096) * 4096;
        let config = dir.join("serve.toml");
        std::fs::write(
            &config,
            format!(
                "slot_bytes = {block}\n[service]\nmax_inflight_bytes = \"4GiB\"\n[[tier]]\nkind = \"host\"\ncapacity = {}\nprefault = true\n",
                stride * (blocks + 8)
            ),
        )?;
        let mut child = Command::new(&exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let addr = loop {
            let line = lines.next().context("tierkv serve exited")??;
            if let Some(a) = line.strip_prefix("tierkv serve: listening on ") {
                break a.to_string();
            }
        };
        Ok(TierkvServer { child, addr })
    }
}

impl Drop for TierkvServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hash(client: usize, op: usize) -> u128 {
    ((client as u128) << 32) | op as u128
}

async fn tierkv_round(
    addr: &str,
    clients: usize,
    ops: usize,
    data: &Bytes,
) -> anyhow::Result<(Measurement, Measurement)> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        let mut c = BlockClientConfig::new(addr.to_string());
        c.retries = 0;
        conns.push(BlockClient::connect(c).await?);
    }
    let conns = Arc::new(conns);
    let block = data.len() as u64;
    let (c, d) = (Arc::clone(&conns), data.clone());
    // Work item i: client i % clients, its op i / clients.
    let publish = drive(clients * ops, clients, move |i| {
        let (c, d) = (Arc::clone(&c), d.clone());
        async move {
            let s = c[i % clients]
                .publish("bench", &[(hash(i % clients, i / clients), d)])
                .await?;
            anyhow::ensure!(s.rejected.is_empty(), "rejected");
            Ok(block)
        }
    })
    .await?;
    let c = Arc::clone(&conns);
    let fetch = drive(clients * ops, clients, move |i| {
        let c = Arc::clone(&c);
        async move {
            let got = c[i % clients]
                .fetch("bench", &[hash(i % clients, i / clients)])
                .await?;
            match got.first() {
                Some(Some(b)) if b.len() as u64 == block => Ok(block),
                _ => bail!("fetch {i}: block missing"),
            }
        }
    })
    .await?;
    Ok((publish, fetch))
}

async fn redis_round(
    port: u16,
    clients: usize,
    ops: usize,
    data: &Bytes,
) -> anyhow::Result<(Measurement, Measurement)> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(tokio::sync::Mutex::new(
            redis::RedisConn::connect(port).await?,
        ));
    }
    let conns = Arc::new(conns);
    let block = data.len() as u64;
    let (c, d) = (Arc::clone(&conns), data.clone());
    let set = drive(clients * ops, clients, move |i| {
        let (c, d) = (Arc::clone(&c), d.clone());
        async move {
            let key = format!("bench:{:x}", hash(i % clients, i / clients));
            c[i % clients].lock().await.set(&key, &d).await?;
            Ok(block)
        }
    })
    .await?;
    let c = Arc::clone(&conns);
    let get = drive(clients * ops, clients, move |i| {
        let c = Arc::clone(&c);
        async move {
            let key = format!("bench:{:x}", hash(i % clients, i / clients));
            match c[i % clients].lock().await.get(&key).await? {
                Some(b) if b.len() as u64 == block => Ok(block),
                _ => bail!("GET {key}: missing"),
            }
        }
    })
    .await?;
    Ok((set, get))
}

pub async fn run(args: ServiceArgs) -> anyhow::Result<Vec<Row>> {
    let ops = args.ops.unwrap_or(if args.quick { 3 } else { 8 }).max(1);
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    let redis = match redis::RedisServer::start() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("note: {e:#}; service rows have no baseline");
            None
        }
    };
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for size in &args.block_sizes {
        let block = usize::try_from(size.0)?;
        let data = payload(block, block as u64 + 1);
        let dir = args.dir.join(format!("{block}"));
        // Distinct hashes per round would need more room; each round republishes the
        // same hashes, so the server is restarted per round to measure fresh stores.
        for &clients in &args.clients {
            let (mut pubs, mut fetches, mut sets, mut gets) = (vec![], vec![], vec![], vec![]);
            for _ in 0..rounds {
                let server = TierkvServer::start(&dir, block, max_clients * ops)?;
                let (p, f) = tierkv_round(&server.addr, clients, ops, &data).await?;
                drop(server);
                let _ = std::fs::remove_dir_all(&dir);
                pubs.push(p);
                fetches.push(f);
                if let Some(r) = &redis {
                    let (s, g) = redis_round(r.port, clients, ops, &data).await?;
                    sets.push(s);
                    gets.push(g);
                }
            }
            let baseline = |name: &str, runs: Vec<Measurement>| {
                if runs.is_empty() {
                    Baseline {
                        name: name.into(),
                        gbps: None,
                        p99_us: None,
                        note: Some("redis-server is not installed: no baseline".into()),
                    }
                } else {
                    Baseline::measured(name, &median(runs))
                }
            };
            let tier = format!("service x{clients}");
            rows.push(byte_row(
                &tier,
                "publish",
                block as u64,
                clients,
                &median(pubs),
                &baseline("redis SET", sets),
            ));
            rows.push(byte_row(
                &tier,
                "fetch",
                block as u64,
                clients,
                &median(fetches),
                &baseline("redis GET", gets),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    report::print_table(&rows);
    report::write_json(&rows, args.json.as_deref())?;
    Ok(rows)
}

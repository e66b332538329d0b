//! `tierkv-bench service`: publish and fetch through a `tierkv serve` process with 1
//! and 8 concurrent clients on each of its paths — shared memory (beside a `memcpy` of
//! the same bytes), the data channel over loopback (beside Redis SET / GET and a raw TCP
//! request/response, the loopback ceiling) and gRPC (beside Redis) — in the same run.
//! Rounds interleave them all; medians. The servers' CPU time per GB moved is read
//! from /proc.

mod mooncake;
mod raw_tcp;
mod redis;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use tierkv_kvstore::ByteSize;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig, Transport};

use crate::drive::{drive, median};
use crate::report::{self, Baseline, Measurement, Row, byte_row};
use crate::tier::payload;

#[derive(clap::Args, Debug)]
pub(crate) struct ServiceArgs {
    /// Concurrent clients (each its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub clients: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2MiB,16MiB")]
    pub block_sizes: Vec<ByteSize>,
    /// Blocks each client publishes and fetches per round [default: 8, or 3 with --quick].
    #[arg(long)]
    pub ops: Option<usize>,
    /// Rounds, interleaving tierkv, Redis and raw TCP [default: 5, or 3 with --quick].
    #[arg(long)]
    pub rounds: Option<usize>,
    /// A short run.
    #[arg(long)]
    pub quick: bool,
    /// A Python with `mooncake-transfer-engine-non-cuda`, for the Mooncake Store
    /// baseline [default: `python3`; its rows are left out when Mooncake is missing].
    #[arg(long, default_value = "python3")]
    pub mooncake_python: PathBuf,
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
        let (child, addr) = spawn_serve(dir, &config, &[], "warn")?;
        Ok(TierkvServer { child, addr })
    }
}

/// Starts the `tierkv` binary beside this one as `tierkv serve` on a free loopback
/// port with `config`, data in `dir` and `extra` arguments; the child and its address.
pub(crate) fn spawn_serve(
    dir: &std::path::Path,
    config: &std::path::Path,
    extra: &[String],
    log: &str,
) -> anyhow::Result<(Child, String)> {
    let exe = std::env::current_exe()?
        .parent()
        .map(|p| p.join("tierkv"))
        .context("locating the tierkv binary")?;
    if !exe.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p tierkv-cli`",
            exe.display()
        );
    }
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", log)
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
    Ok((child, addr))
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

/// Publish and fetch measurements, with the server's CPU seconds spent on each.
struct Round {
    put: Measurement,
    get: Measurement,
    put_cpu: Option<f64>,
    get_cpu: Option<f64>,
}

/// CPU seconds of `pid` spent while `f` ran.
async fn with_cpu<T>(
    pid: Option<u32>,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Option<f64>)> {
    let before = pid.and_then(raw_tcp::cpu_seconds);
    let out = f.await?;
    let after = pid.and_then(raw_tcp::cpu_seconds);
    Ok((out, before.zip(after).map(|(b, a)| a - b)))
}

async fn tierkv_round(
    server: &TierkvServer,
    transport: Transport,
    clients: usize,
    ops: usize,
    data: &Bytes,
) -> anyhow::Result<Round> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        let mut c = BlockClientConfig::new(server.addr.clone());
        c.retries = 0;
        c.transport = transport;
        let client = BlockClient::connect(c).await?;
        let (local, data) = (
            client.is_same_host().await,
            client.data_addr().await.is_some(),
        );
        let expected = match transport {
            Transport::Auto => (true, true),
            Transport::Network => (false, true),
            Transport::Grpc => (false, false),
        };
        anyhow::ensure!(
            (local, data) == expected,
            "expected the {transport:?} path; shared memory = {local}, data channel = {data}"
        );
        conns.push(client);
    }
    // Shared memory hands out the block in place: the fetch copies it into the
    // consumer's buffer (the one copy that path makes), as an engine importing it does.
    let sinks: Arc<Vec<std::sync::Mutex<Vec<u8>>>> = Arc::new(
        (0..clients)
            .map(|_| std::sync::Mutex::new(vec![0u8; data.len()]))
            .collect(),
    );
    let copy_out = transport == Transport::Auto;
    let pid = Some(server.child.id());
    let conns = Arc::new(conns);
    let block = data.len() as u64;
    let (c, d) = (Arc::clone(&conns), data.clone());
    // Work item i: client i % clients, its op i / clients.
    let (put, put_cpu) = with_cpu(
        pid,
        drive(clients * ops, clients, move |i| {
            let (c, d) = (Arc::clone(&c), d.clone());
            async move {
                let s = c[i % clients]
                    .publish("bench", &[(hash(i % clients, i / clients), d)])
                    .await?;
                anyhow::ensure!(s.rejected.is_empty(), "rejected");
                Ok(block)
            }
        }),
    )
    .await?;
    let c = Arc::clone(&conns);
    let (get, get_cpu) = with_cpu(
        pid,
        drive(clients * ops, clients, move |i| {
            let (c, sinks) = (Arc::clone(&c), Arc::clone(&sinks));
            async move {
                let got = c[i % clients]
                    .fetch("bench", &[hash(i % clients, i / clients)])
                    .await?;
                match got.first() {
                    Some(Some(b)) if b.len() as u64 == block => {
                        if copy_out {
                            let mut sink = sinks[i % clients]
                                .lock()
                                .map_err(|_| anyhow::anyhow!("sink poisoned"))?;
                            sink[..b.len()].copy_from_slice(b);
                        }
                        Ok(block)
                    }
                    _ => bail!("fetch {i}: block missing"),
                }
            }
        }),
    )
    .await?;
    Ok(Round {
        put,
        get,
        put_cpu,
        get_cpu,
    })
}

async fn redis_round(
    server: &redis::RedisServer,
    clients: usize,
    ops: usize,
    data: &Bytes,
) -> anyhow::Result<Round> {
    let (port, pid) = (server.port, Some(server.pid()));
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(tokio::sync::Mutex::new(
            redis::RedisConn::connect(port).await?,
        ));
    }
    let conns = Arc::new(conns);
    let block = data.len() as u64;
    let (c, d) = (Arc::clone(&conns), data.clone());
    let (put, put_cpu) = with_cpu(
        pid,
        drive(clients * ops, clients, move |i| {
            let (c, d) = (Arc::clone(&c), d.clone());
            async move {
                let key = format!("bench:{:x}", hash(i % clients, i / clients));
                c[i % clients].lock().await.set(&key, &d).await?;
                Ok(block)
            }
        }),
    )
    .await?;
    let c = Arc::clone(&conns);
    let (get, get_cpu) = with_cpu(
        pid,
        drive(clients * ops, clients, move |i| {
            let c = Arc::clone(&c);
            async move {
                let key = format!("bench:{:x}", hash(i % clients, i / clients));
                match c[i % clients].lock().await.get(&key).await? {
                    Some(b) if b.len() as u64 == block => Ok(block),
                    _ => bail!("GET {key}: missing"),
                }
            }
        }),
    )
    .await?;
    Ok(Round {
        put,
        get,
        put_cpu,
        get_cpu,
    })
}

async fn raw_round(port: u16, clients: usize, ops: usize, data: &Bytes) -> anyhow::Result<Round> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(tokio::sync::Mutex::new(
            raw_tcp::RawTcpConn::connect(port, data.len()).await?,
        ));
    }
    let conns = Arc::new(conns);
    let block = data.len() as u64;
    let (c, d) = (Arc::clone(&conns), data.clone());
    let put = drive(clients * ops, clients, move |i| {
        let (c, d) = (Arc::clone(&c), d.clone());
        async move {
            c[i % clients].lock().await.put(&d).await?;
            Ok(block)
        }
    })
    .await?;
    let c = Arc::clone(&conns);
    let get = drive(clients * ops, clients, move |i| {
        let c = Arc::clone(&c);
        async move { Ok(c[i % clients].lock().await.get(block as usize).await? as u64) }
    })
    .await?;
    Ok(Round {
        put,
        get,
        put_cpu: None,
        get_cpu: None,
    })
}

/// The same-host ceiling: `memcpy` of the same bytes between buffers larger than the
/// cache (256 MiB of sources and of destinations), with the same concurrency.
async fn memcpy_round(clients: usize, ops: usize, block: usize) -> anyhow::Result<Round> {
    let n = ((256usize << 20) / block).max(2);
    let src: Arc<Vec<Vec<u8>>> = Arc::new((0..n).map(|i| vec![i as u8; block]).collect());
    let dst: Arc<Vec<std::sync::Mutex<Vec<u8>>>> = Arc::new(
        (0..n)
            .map(|_| std::sync::Mutex::new(vec![0u8; block]))
            .collect(),
    );
    let copy = move |i: usize| {
        let (src, dst) = (Arc::clone(&src), Arc::clone(&dst));
        async move {
            let mut d = dst[i % n].lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            d.copy_from_slice(&src[(i * 7 + 1) % n]);
            Ok(block as u64)
        }
    };
    let put = drive(clients * ops, clients, copy.clone()).await?;
    let get = drive(clients * ops, clients, copy).await?;
    Ok(Round {
        put,
        get,
        put_cpu: None,
        get_cpu: None,
    })
}

/// Medians of each side of a set of rounds, and CPU seconds per GB moved.
#[derive(Default)]
struct Runs {
    put: Vec<Measurement>,
    get: Vec<Measurement>,
    put_cpu: Vec<f64>,
    get_cpu: Vec<f64>,
}

impl Runs {
    fn add(&mut self, r: Round) {
        let per_gb = |cpu: Option<f64>, m: &Measurement| cpu.map(|c| c / (m.bytes as f64 / 1e9));
        self.put_cpu.extend(per_gb(r.put_cpu, &r.put));
        self.get_cpu.extend(per_gb(r.get_cpu, &r.get));
        self.put.push(r.put);
        self.get.push(r.get);
    }
}

fn median_f64(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn cpu_note(name: &str, cpu: &[f64]) -> String {
    median_f64(cpu.to_vec()).map_or(String::new(), |c| format!("{name} server {c:.2} CPU-s/GB"))
}

pub(crate) async fn run(args: ServiceArgs) -> anyhow::Result<Vec<Row>> {
    let ops = args.ops.unwrap_or(if args.quick { 3 } else { 8 }).max(1);
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 5 }).max(1);
    let redis = match redis::RedisServer::start() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("note: {e:#}; service rows have no Redis baseline");
            None
        }
    };
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let sizes: Vec<usize> = args
        .block_sizes
        .iter()
        .map(|s| usize::try_from(s.0))
        .collect::<Result<_, _>>()?;
    let mooncake = match mooncake::run(&args.mooncake_python, &sizes, &args.clients, ops, rounds) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("note: {e:#}; no Mooncake rows");
            None
        }
    };
    let mut rows = Vec::new();
    for size in &args.block_sizes {
        let block = usize::try_from(size.0)?;
        let data = payload(block, block as u64 + 1);
        let raw = raw_tcp::RawTcpServer::start(block)?;
        let dir = args.dir.join(format!("{block}"));
        // Each round republishes the same hashes, so the server is restarted per round
        // to measure fresh stores.
        for &clients in &args.clients {
            let (mut shm, mut data_path, mut grpc) =
                (Runs::default(), Runs::default(), Runs::default());
            let (mut redis_runs, mut raw_runs, mut memcpy_runs) =
                (Runs::default(), Runs::default(), Runs::default());
            for _ in 0..rounds {
                for (transport, runs) in [
                    (Transport::Auto, &mut shm),
                    (Transport::Network, &mut data_path),
                    (Transport::Grpc, &mut grpc),
                ] {
                    let server = TierkvServer::start(&dir, block, max_clients * ops)?;
                    runs.add(tierkv_round(&server, transport, clients, ops, &data).await?);
                    drop(server);
                    let _ = std::fs::remove_dir_all(&dir);
                }
                if let Some(r) = &redis {
                    redis_runs.add(redis_round(r, clients, ops, &data).await?);
                }
                raw_runs.add(raw_round(raw.port, clients, ops, &data).await?);
                memcpy_runs.add(memcpy_round(clients, ops, block).await?);
            }
            let redis_base = |name: &str, runs: &[Measurement]| {
                if runs.is_empty() {
                    Baseline {
                        name: name.into(),
                        gbps: None,
                        p99_us: None,
                        note: Some("redis-server is not installed: no baseline".into()),
                    }
                } else {
                    Baseline::measured(name, &median(runs.to_vec()))
                }
            };
            let base =
                |name: &str, runs: &[Measurement]| Baseline::measured(name, &median(runs.to_vec()));
            let cpu = |ours: &[f64], theirs: &[f64]| {
                let (a, b) = (cpu_note("tierkv", ours), cpu_note("redis", theirs));
                Some(format!("{a}; {b}"))
            };
            let b = block as u64;
            let mut push = |tier: &str, op: &str, m: &[Measurement], baseline: Baseline, note| {
                rows.push(Row {
                    note,
                    ..byte_row(tier, op, b, clients, &median(m.to_vec()), &baseline)
                });
            };
            let tier = format!("service shm x{clients}");
            push(
                &tier,
                "publish",
                &shm.put,
                base("memcpy", &memcpy_runs.put),
                cpu(&shm.put_cpu, &[]),
            );
            push(
                &tier,
                "fetch",
                &shm.get,
                base("memcpy", &memcpy_runs.get),
                cpu(&shm.get_cpu, &[]),
            );
            let tier = format!("service data channel x{clients}");
            push(
                &tier,
                "publish",
                &data_path.put,
                redis_base("redis SET", &redis_runs.put),
                cpu(&data_path.put_cpu, &redis_runs.put_cpu),
            );
            push(
                &tier,
                "fetch",
                &data_path.get,
                redis_base("redis GET", &redis_runs.get),
                cpu(&data_path.get_cpu, &redis_runs.get_cpu),
            );
            push(
                &tier,
                "publish",
                &data_path.put,
                base("raw tcp put", &raw_runs.put),
                None,
            );
            push(
                &tier,
                "fetch",
                &data_path.get,
                base("raw tcp get", &raw_runs.get),
                None,
            );
            if let Some(m) = mooncake.as_ref().and_then(|m| m.get(&(b, clients))) {
                let mc = |c: &[f64]| cpu_note("mooncake", c);
                let ours = |c: &[f64]| cpu_note("tierkv", c);
                push(
                    &tier,
                    "publish",
                    &data_path.put,
                    base("mooncake put", &m.put),
                    Some(format!(
                        "{}; {}",
                        ours(&data_path.put_cpu),
                        mc(&m.put_cpu_per_gb)
                    )),
                );
                push(
                    &tier,
                    "fetch",
                    &data_path.get,
                    base("mooncake get", &m.get),
                    Some(format!(
                        "{}; {}",
                        ours(&data_path.get_cpu),
                        mc(&m.get_cpu_per_gb)
                    )),
                );
            }
            let tier = format!("service grpc x{clients}");
            push(
                &tier,
                "publish",
                &grpc.put,
                redis_base("redis SET", &redis_runs.put),
                cpu(&grpc.put_cpu, &redis_runs.put_cpu),
            );
            push(
                &tier,
                "fetch",
                &grpc.get,
                redis_base("redis GET", &redis_runs.get),
                cpu(&grpc.get_cpu, &redis_runs.get_cpu),
            );
        }
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    report::print_table(&rows);
    report::write_json(&rows, args.json.as_deref())?;
    Ok(rows)
}

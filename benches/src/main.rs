//! `tierkv-bench`: offload tuning benchmarks for tierkv.

mod drive;
mod e2e;
mod fio;
#[cfg(feature = "cuda")]
mod gpu;
mod pd;
mod plot;
mod report;
mod service;
mod soak;
mod tier;
mod trace;
mod vllm;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tierkv-bench",
    version,
    about = "Benchmarks every tierkv tier against a baseline measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Put/get throughput and latency per tier beside memcpy, fio and raw object_store.
    Tier(tier::TierArgs),
    /// Publish/fetch through `tierkv serve` over loopback beside Redis SET/GET.
    Service(service::ServiceArgs),
    /// Write a synthetic workload trace (Mooncake format).
    GenTrace(trace::generate::GenArgs),
    /// Replay a trace against a real (or simulated) tiered store.
    Replay(trace::replay::ReplayArgs),
    /// The engine end to end: TTFT cold vs warm per tier, decode speed, llama.cpp.
    E2e(e2e::E2eArgs),
    /// Sweep tier sizes and policies over a trace and recommend a configuration.
    Tune(trace::tune::TuneArgs),
    /// Prefill/decode disaggregation (xPyD) vs aggregated clusters: TTFT, ITL,
    /// throughput under a concurrent workload.
    Pd(pd::PdArgs),
    /// GPU offload/onboard through the transfer engine beside contiguous pinned copies,
    /// pinned allocation, HBM <-> disk (built with `--features cuda`).
    #[cfg(feature = "cuda")]
    Gpu(gpu::GpuArgs),
    /// vLLM with TierkvConnector beside vLLM without it, its prefix cache and its
    /// ExampleConnector (TTFT, throughput, hits per tier); block loads beside memcpy.
    Vllm(vllm::VllmArgs),
    /// `tierkv serve` under 1,000 streams with clients that vanish, stall and
    /// reconnect: RSS, open streams, p99 and errors over time.
    Soak(soak::SoakArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Tier(args) => {
            tier::run(args).await?;
        }
        Command::Service(args) => {
            service::run(args).await?;
        }
        Command::Soak(args) => soak::run(args).await?,
        Command::GenTrace(args) => trace::generate::run(args)?,
        Command::Replay(args) => {
            trace::replay::run(args).await?;
        }
        Command::Tune(args) => trace::tune::run(args).await?,
        Command::E2e(args) => e2e::run(args).await?,
        Command::Pd(args) => pd::run(args).await?,
        #[cfg(feature = "cuda")]
        Command::Gpu(args) => gpu::run(args).await?,
        Command::Vllm(args) => vllm::run(args)?,
    }
    Ok(())
}

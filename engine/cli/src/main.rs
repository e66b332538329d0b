//! `tierkv`: the tierkv command line — the inference engine (`engine`), the frontend
//! of a disaggregated cluster (`frontend`), a local cluster (`up`), the block service
//! (`serve`), an operator client for it (`blocks`) and configuration tools (`config`).

mod blocks;
mod config;
mod edge;
mod engine;
mod frontend;
mod register;
mod serve;
mod up;
mod vllm_worker;

use clap::{Parser, Subcommand};

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
    /// Run the block service: the store as a gRPC sidecar or shared cache node.
    Serve(serve::ServeArgs),
    /// Run the inference engine: a model whose KV cache sits on the tiered store,
    /// behind an OpenAI-compatible API.
    Engine(Box<engine::EngineArgs>),
    /// Run the frontend: the OpenAI API routing to prefill/decode workers.
    Frontend(Box<frontend::FrontendArgs>),
    /// Start a local disaggregated cluster: prefill and decode workers plus a
    /// frontend, all stopped by Ctrl-C.
    Up(Box<up::UpArgs>),
    /// Keep a worker that cannot register itself (vLLM with TierkvConnector) in etcd
    /// while it is healthy.
    Register(Box<register::RegisterArgs>),
    /// Poke a running block service.
    Blocks(blocks::BlocksArgs),
    /// Store configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
        Command::Engine(args) => engine::run(*args).await,
        Command::Frontend(args) => frontend::run(*args).await,
        Command::Up(args) => up::run(*args).await,
        Command::Register(args) => register::run(*args).await,
        Command::Blocks(args) => blocks::run(args).await,
        Command::Config(cmd) => config::run(cmd).await,
    }
}

//! The `wick` binary: `wick serve` (the OpenAI API), `wick generate` (one prompt through
//! the engine), `wick bench` (load tests).

mod config_file;
mod generate;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use wick_server::{LogFormat, ServeArgs};

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "A self-hosted LLM inference server",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI API (`--config FILE` reads flags from TOML).
    Serve(ServeArgs),
    /// Generate text greedily for one prompt and print it.
    Generate(generate::GenerateArgs),
    /// Load-test an OpenAI-compatible endpoint and report latency, throughput and cost.
    Bench(wick_bench::BenchArgs),
}

fn init_logs(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = config_file::expand(std::env::args_os().collect())?;
    match Cli::parse_from(args).command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = runtime.block_on(wick_server::run(args));
            // Do not wait on stray blocking tasks (a dead engine's server exits promptly).
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            // An error (the engine died, a bad flag) exits non-zero.
            Ok(served?)
        }
        Command::Generate(args) => {
            init_logs(LogFormat::Text);
            generate::run(args)
        }
        Command::Bench(args) => {
            init_logs(LogFormat::Text);
            Ok(wick_bench::run(args)?)
        }
    }
}

//! The `wick` binary: `wick generate` (and, as they land, `serve` and `bench`).

mod generate;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wick", version, about = "A self-hosted LLM inference server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text greedily for one prompt and print it.
    Generate(generate::GenerateArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
    }
}

//! `wick bench` without building the rest of wick (no model or engine crates):
//! `cargo run --release -p wick-bench --example bench -- --url ... [same flags]`.

use clap::Parser;

/// Load-test an OpenAI-compatible endpoint and report latency, throughput and cost.
#[derive(clap::Parser)]
#[command(name = "wick-bench")]
struct Cli {
    #[command(flatten)]
    args: wick_bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    Ok(wick_bench::run(Cli::parse().args)?)
}

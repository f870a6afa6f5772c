//! The `wick` binary: `wick serve` (the OpenAI API), `wick generate` (one prompt through
//! the engine), `wick bench` (load tests), `wick fetch` (a model into the cache, checked).
//!
//! Its build identity (version, the git commit build.rs bakes in as `WICK_GIT_SHA`, the
//! compiled-in features) is `wick --version`'s and goes to the server for `GET /version`.

mod config_file;
mod fetch;
mod generate;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::io::IsTerminal;
use wick_server::{BuildInfo, LogFormat, ServeArgs};

#[derive(Parser)]
#[command(
    name = "wick",
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
    /// Download a model (and LoRA adapters) into the Hugging Face cache and check that it
    /// loads (on the CPU: needs about the model's size in RAM).
    Fetch(fetch::FetchArgs),
}

/// This build: the crate version, the commit build.rs baked in, `cuda` or `cpu`, and
/// `fault-injection` when the server has it (test builds).
fn build_info() -> BuildInfo {
    let mut features = vec![if wick_models::device::cuda_compiled() {
        "cuda"
    } else {
        "cpu"
    }];
    if wick_server::FAULT_INJECTION {
        features.push("fault-injection");
    }
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        git_sha: env!("WICK_GIT_SHA").into(),
        features: features.into_iter().map(String::from).collect(),
    }
}

/// `wick --version`: `wick 0.1.0 (git 0123456789ab, features: cpu)`.
fn version_line(build: &BuildInfo) -> String {
    format!(
        "{} (git {}, features: {})",
        build.version,
        build.short_sha(),
        build.features.join(", ")
    )
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
    let build = build_info();
    let matches = Cli::command()
        // Once per process: clap takes a `&'static str`.
        .version(version_line(&build).leak() as &str)
        .get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Serve(args) => {
            init_logs(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let served = runtime.block_on(wick_server::run(args, build));
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
        Command::Fetch(args) => {
            init_logs(LogFormat::Text);
            fetch::run(args)
        }
    }
}

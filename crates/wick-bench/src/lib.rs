//! wick bench: production-like load tests of any OpenAI-compatible endpoint, with
//! latency percentiles (TTFT, TPOT, ITL, end-to-end), throughput, goodput against SLOs,
//! errors by kind and cost per million tokens.
//!
//! The CLI (`wick bench`, [`run`]) is a thin layer over the library: build a
//! [`BenchConfig`] (directly, or from [`BenchArgs`]) and call [`run_benchmark`] or
//! [`run_sweep`]; both return plain reports that tests can assert on.
//!
//! ```no_run
//! # async fn demo() -> wick_bench::Result<()> {
//! use wick_bench::{run_benchmark, BenchConfig, CancelToken, LoadSpec};
//! let config = BenchConfig {
//!     load: LoadSpec::Closed { concurrency: 4 },
//!     num_requests: Some(32),
//!     ..BenchConfig::new("http://127.0.0.1:8000")
//! };
//! let report = run_benchmark(&config, &CancelToken::new()).await?;
//! println!("{} output tokens in {:.1} s", report.total_output_tokens, report.duration_s);
//! # Ok(()) }
//! ```

mod args;
mod bench;
mod cancel;
pub mod client;
mod config;
mod error;
pub mod metrics;
pub mod plot;
mod progress;
pub mod report;
mod runner;
pub mod sse;
pub mod stats;
pub mod tokenize;
pub mod workload;

use std::io::IsTerminal;

use error::Context;

pub use args::{parse_duration, parse_slo, parse_sweep, Arrival, BenchArgs, WorkloadKind};
pub use bench::{prepare, run_benchmark, run_prepared, run_sweep, Prepared};
pub use cancel::CancelToken;
pub use client::{ErrorKind, Outcome, RequestRecord};
pub use config::{
    BenchConfig, CostSpec, EndpointKind, LoadSpec, Slo, TokenizerSource, WorkloadSpec,
    DEFAULT_NUM_REQUESTS,
};
pub use error::{BenchError, Result};
pub use report::{Report, SweepReport};

/// Runs `wick bench`: the benchmark (or sweep), then the table on stdout, `--json` and
/// `--plot` files. The first Ctrl-C stops the run and reports what was measured; a
/// second one exits at once.
pub fn run(args: BenchArgs) -> Result<()> {
    let mut config = args.to_config()?;
    config.progress &= std::io::stderr().is_terminal();
    let loads = args.sweep_loads()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let cancel = CancelToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\ninterrupted: stopping, reporting what was measured (Ctrl-C again to quit)"
                );
                on_signal.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        match loads {
            Some(loads) => {
                let sweep = run_sweep(&config, &loads, &cancel).await?;
                if !config.progress {
                    for p in &sweep.points {
                        println!("{}", p.render());
                    }
                }
                println!("{}", sweep.render());
                write_outputs(&args, &sweep, plot::sweep_svg(&sweep))
            }
            None => {
                let report = run_benchmark(&config, &cancel).await?;
                println!("{}", report.render());
                write_outputs(&args, &report, plot::report_svg(&report))
            }
        }
    })
}

fn write_outputs(args: &BenchArgs, value: &impl serde::Serialize, svg: String) -> Result<()> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(value).context("serialising the report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write(path, &svg)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

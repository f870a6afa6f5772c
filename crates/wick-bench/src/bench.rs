//! One benchmark from configuration to report: resolve the model and tokenizer, build
//! the workload once, then for each load level run the warm-up and the counted phase,
//! bracketed by `/metrics` scrapes.
//!
//! Invariants: warm-up requests use their own items and never reach a report; a
//! cancelled run still returns a report of what it measured (`interrupted: true`).

use std::sync::Arc;

use anyhow::Context;

use crate::cancel::CancelToken;
use crate::client::{Client, StreamOpts};
use crate::config::{BenchConfig, EndpointKind, LoadSpec};
use crate::metrics::Counters;
use crate::progress::Progress;
use crate::report::{Report, RunInfo, SweepReport};
use crate::runner::{run_phase, Live, Phase};
use crate::tokenize::Tokenizer;
use crate::workload::{self, Prompt, WorkItem};

/// Items built when a run is bounded by time only; they are cycled.
const DURATION_POOL: usize = 1000;

/// A run made ready: endpoint, model, tokenizer and items.
pub struct Prepared {
    client: Client,
    model: String,
    chat: bool,
    tokenizer: &'static str,
    warmup: Arc<Vec<WorkItem>>,
    counted: Arc<Vec<WorkItem>>,
}

/// Resolves the model, the tokenizer and the workload of `config`.
pub async fn prepare(config: &BenchConfig) -> anyhow::Result<Prepared> {
    let client = Client::new(&config.base_url(), config.api_key.clone())?;
    let model = match &config.model {
        Some(m) => m.clone(),
        None => client
            .first_model()
            .await
            .context("finding the model name (pass --model to skip this)")?,
    };
    let tok = Tokenizer::resolve(&config.tokenizer, &client, &model).await?;
    let (n, _) = config.stop_condition();
    let counted_n = n.unwrap_or(DURATION_POOL).max(1);
    let mut items = workload::build(
        &config.workload,
        config.warmup + counted_n,
        config.seed,
        &tok,
    )
    .await
    .context("building the workload")?;
    let counted = items.split_off(config.warmup.min(items.len()));
    let has_chat = counted.iter().any(|i| matches!(i.prompt, Prompt::Chat(_)));
    let chat = match config.endpoint {
        EndpointKind::Chat => true,
        EndpointKind::Completions => false,
        EndpointKind::Auto => has_chat,
    };
    Ok(Prepared {
        client,
        model,
        chat,
        tokenizer: tok.name(),
        warmup: Arc::new(items),
        counted: Arc::new(counted),
    })
}

/// Runs `config` at `config.load`. Cancelling `cancel` stops it early with a partial
/// report.
pub async fn run_benchmark(config: &BenchConfig, cancel: &CancelToken) -> anyhow::Result<Report> {
    let prepared = prepare(config).await?;
    Ok(run_prepared(&prepared, config, config.load, cancel).await)
}

/// Runs `config` once per load level, on the same workload.
pub async fn run_sweep(
    config: &BenchConfig,
    loads: &[LoadSpec],
    cancel: &CancelToken,
) -> anyhow::Result<SweepReport> {
    let prepared = prepare(config).await?;
    let mut points = Vec::new();
    for &load in loads {
        if cancel.is_cancelled() {
            break;
        }
        let report = run_prepared(&prepared, config, load, cancel).await;
        if config.progress {
            eprintln!("{}", report.render());
        }
        points.push(report);
    }
    Ok(SweepReport { points })
}

/// Runs one load level on a prepared workload.
pub async fn run_prepared(
    prepared: &Prepared,
    config: &BenchConfig,
    load: LoadSpec,
    cancel: &CancelToken,
) -> Report {
    let opts = Arc::new(StreamOpts {
        model: prepared.model.clone(),
        chat: prepared.chat,
        ignore_eos: config.ignore_eos,
        temperature: config.temperature,
        request_timeout: config.request_timeout,
        ttft_timeout: config.ttft_timeout,
    });
    let phase = |items: &Arc<Vec<WorkItem>>| Phase {
        client: prepared.client.clone(),
        items: items.clone(),
        opts: opts.clone(),
        cancel: cancel.clone(),
    };
    if !prepared.warmup.is_empty() {
        let n = prepared.warmup.len();
        let concurrency = match load {
            LoadSpec::Closed { concurrency } => concurrency,
            LoadSpec::Open {
                max_concurrency, ..
            } => max_concurrency.unwrap_or(n),
        };
        let warm = LoadSpec::Closed {
            concurrency: concurrency.clamp(1, n),
        };
        let live = Arc::new(Live::default());
        let label = format!("{} warm-up", load.label());
        let bar = config
            .progress
            .then(|| Progress::start(label, live.clone(), Some(n), None));
        run_phase(
            &phase(&prepared.warmup),
            warm,
            Some(n),
            None,
            config.seed,
            live,
        )
        .await;
        if let Some(b) = bar {
            b.finish();
        }
    }
    let before = if config.scrape_metrics {
        prepared.client.metrics_text().await
    } else {
        None
    };
    let (max_requests, duration) = config.stop_condition();
    let live = Arc::new(Live::default());
    let bar = config
        .progress
        .then(|| Progress::start(load.label(), live.clone(), max_requests, duration));
    let result = run_phase(
        &phase(&prepared.counted),
        load,
        max_requests,
        duration,
        config.seed,
        live,
    )
    .await;
    if let Some(b) = bar {
        b.finish();
    }
    let server = match before.as_deref().and_then(Counters::parse) {
        Some(b) => {
            let ok = result.records.iter().filter(|r| r.is_ok()).count();
            server_delta(&prepared.client, b, ok).await
        }
        None => None,
    };
    let info = RunInfo {
        url: config.base_url(),
        model: prepared.model.clone(),
        endpoint: if prepared.chat { "chat" } else { "completions" }.into(),
        load,
        workload: config.workload.clone(),
        tokenizer: prepared.tokenizer.into(),
        duration_s: result.duration.as_secs_f64(),
        interrupted: result.interrupted,
        slo: config.slo,
        cost: config.cost,
        server,
    };
    Report::new(info, result.records)
}

/// The server's counters since `before`. A server may count a request just after its
/// last byte, so this re-reads for up to a second until the deltas cover `ok` requests.
async fn server_delta(client: &Client, before: Counters, ok: usize) -> Option<Counters> {
    let mut delta = None;
    for _ in 0..20 {
        let after = client.metrics_text().await;
        delta = after
            .as_deref()
            .and_then(Counters::parse)
            .map(|a| before.delta(&a));
        match delta {
            Some(d) if d.requests < ok as f64 => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            _ => break,
        }
    }
    delta
}

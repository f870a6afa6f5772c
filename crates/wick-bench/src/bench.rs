//! One benchmark from configuration to report: resolve the model and tokenizer, build
//! the workload once, then for each load level run the warm-up and the counted phase,
//! bracketed by `/metrics` scrapes.
//!
//! Invariants: warm-up requests use their own items and never reach a report; a
//! cancelled run still returns a report of what it measured (`interrupted: true`).

use std::sync::Arc;

use crate::error::{Context, Result};

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

/// A benchmark made ready: endpoint, model and tokenizer.
pub struct Prepared {
    client: Client,
    model: String,
    tokenizer: Tokenizer,
}

/// The requests of one load level.
struct Items {
    chat: bool,
    warmup: Arc<Vec<WorkItem>>,
    counted: Arc<Vec<WorkItem>>,
}

/// Resolves the endpoint, the model and the tokenizer of `config`.
pub async fn prepare(config: &BenchConfig) -> Result<Prepared> {
    let client = Client::new(&config.base_url(), config.api_key.clone())?;
    let model = match &config.model {
        Some(m) => m.clone(),
        None => client
            .first_model()
            .await
            .context("finding the model name (pass --model to skip this)")?,
    };
    let tokenizer = Tokenizer::resolve(&config.tokenizer, &client, &model).await?;
    Ok(Prepared {
        client,
        model,
        tokenizer,
    })
}

impl Prepared {
    /// Warm-up and counted items for `seed`.
    async fn items(&self, config: &BenchConfig, seed: u64) -> Result<Items> {
        let (n, _) = config.stop_condition();
        let counted_n = n.unwrap_or(DURATION_POOL).max(1);
        let mut items = workload::build(
            &config.workload,
            config.warmup + counted_n,
            seed,
            &self.tokenizer,
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
        Ok(Items {
            chat,
            warmup: Arc::new(items),
            counted: Arc::new(counted),
        })
    }
}

/// Runs `config` at `config.load`. Cancelling `cancel` stops it early with a partial
/// report.
pub async fn run_benchmark(config: &BenchConfig, cancel: &CancelToken) -> Result<Report> {
    let prepared = prepare(config).await?;
    run_prepared(&prepared, config, config.load, config.seed, cancel).await
}

/// Runs `config` once per load level. Each level gets its own prompts (seed + level
/// index), so a server's prefix cache cannot serve one level from another's prompts.
pub async fn run_sweep(
    config: &BenchConfig,
    loads: &[LoadSpec],
    cancel: &CancelToken,
) -> Result<SweepReport> {
    let prepared = prepare(config).await?;
    let mut points = Vec::new();
    for (i, &load) in loads.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let seed = config.seed.wrapping_add(i as u64);
        let report = run_prepared(&prepared, config, load, seed, cancel).await?;
        if config.progress {
            eprintln!("{}", report.render());
        }
        points.push(report);
    }
    Ok(SweepReport { points })
}

/// Runs one load level: builds its items from `seed`, warms up, measures.
pub async fn run_prepared(
    prepared: &Prepared,
    config: &BenchConfig,
    load: LoadSpec,
    seed: u64,
    cancel: &CancelToken,
) -> Result<Report> {
    let items = prepared.items(config, seed).await?;
    let opts = Arc::new(StreamOpts {
        model: prepared.model.clone(),
        chat: items.chat,
        ignore_eos: config.ignore_eos,
        temperature: config.temperature,
        top_p: config.top_p,
        request_timeout: config.request_timeout,
        ttft_timeout: config.ttft_timeout,
        stream_fraction: config.stream_fraction,
        seed,
    });
    let phase = |items: &Arc<Vec<WorkItem>>| Phase {
        client: prepared.client.clone(),
        items: items.clone(),
        opts: opts.clone(),
        cancel: cancel.clone(),
    };
    if !items.warmup.is_empty() {
        let n = items.warmup.len();
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
        run_phase(&phase(&items.warmup), warm, Some(n), None, seed, live).await;
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
        &phase(&items.counted),
        load,
        max_requests,
        duration,
        seed,
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
        endpoint: if items.chat { "chat" } else { "completions" }.into(),
        load,
        workload: config.workload.clone(),
        tokenizer: prepared.tokenizer.name().into(),
        duration_s: result.duration.as_secs_f64(),
        started_unix_s: result.started_unix_s,
        interrupted: result.interrupted,
        slo: config.slo,
        cost: config.cost,
        server,
    };
    Ok(Report::new(info, result.records))
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

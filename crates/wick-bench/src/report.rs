//! The report of one run (one load level) and of a sweep: counts, errors by kind,
//! throughput, latency distributions, goodput against SLOs, cost per million tokens,
//! and the server's own counters when it exposes `/metrics`.
//!
//! Invariants: only counted requests appear (warm-up never does); cancelled requests
//! are neither successes nor errors; throughputs divide by the counted phase's wall
//! time; latency distributions and token totals cover successful requests only.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::client::{Outcome, RequestRecord};
use crate::config::{CostSpec, LoadSpec, Slo, WorkloadSpec};
use crate::metrics::Counters;
use crate::stats::Distribution;

/// Requests that met every SLO.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Goodput {
    /// The objectives.
    pub slo: Slo,
    /// Good requests per second.
    pub requests_per_s: f64,
    /// Good requests over counted (successful + failed) requests.
    pub fraction: f64,
}

/// What the measured throughput costs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cost {
    /// The hardware price.
    pub spec: CostSpec,
    /// Dollars per hour for all GPUs.
    pub dollars_per_hour: f64,
    /// Dollars per million output tokens at the measured output throughput.
    pub per_million_output_tokens: Option<f64>,
    /// Dollars per million prompt + output tokens.
    pub per_million_total_tokens: Option<f64>,
}

impl Cost {
    /// Cost at the given token throughputs (tokens per second).
    pub fn at(spec: CostSpec, output_tps: f64, total_tps: f64) -> Self {
        let hourly = spec.gpu_hour_price * spec.gpus;
        let per_m = |tps: f64| (tps > 0.0).then(|| hourly / (tps * 3600.0) * 1e6);
        Cost {
            spec,
            dollars_per_hour: hourly,
            per_million_output_tokens: per_m(output_tps),
            per_million_total_tokens: per_m(total_tps),
        }
    }
}

/// The server's counters over the counted phase, beside the client's.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerCheck {
    /// Deltas of the server's counters.
    pub server: Counters,
    /// Output tokens the client counted (successful requests).
    pub client_output_tokens: u64,
    /// Prompt tokens the client counted (successful requests).
    pub client_prompt_tokens: u64,
}

/// One run at one load level.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Endpoint base URL.
    pub url: String,
    /// Model name.
    pub model: String,
    /// "completions" or "chat".
    pub endpoint: String,
    /// Load.
    pub load: LoadSpec,
    /// Workload.
    pub workload: WorkloadSpec,
    /// "server", "local" or "approximate".
    pub tokenizer: String,
    /// Counted requests that ended (successes + failures).
    pub requests: usize,
    /// Successes.
    pub ok: usize,
    /// Failures.
    pub failed: usize,
    /// Counted requests sent streamed (the others whole, `stream: false`).
    pub streamed: usize,
    /// Requests stopped by cancellation.
    pub cancelled: usize,
    /// Failures by kind (`http_429`, `dropped_stream`, ...).
    pub errors: BTreeMap<String, usize>,
    /// The first message seen for each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// Per replica that named itself (`x-wick-replica`): requests it answered, `[ok,
    /// failed]`; empty when no response named one.
    pub replicas: BTreeMap<String, [usize; 2]>,
    /// Failures over counted requests.
    pub error_rate: f64,
    /// Wall time of the counted phase, seconds.
    pub duration_s: f64,
    /// When the counted phase started (the origin of every record's `start_s`), seconds
    /// since the Unix epoch: ties records to other clocks (logs, metrics, faults).
    pub started_unix_s: f64,
    /// Prompt tokens of successful requests.
    pub total_prompt_tokens: u64,
    /// Output tokens of successful requests.
    pub total_output_tokens: u64,
    /// Successful requests whose counts came from the server's usage chunk.
    pub usage_reported: usize,
    /// Successful requests that returned fewer output tokens than they asked for (EOS,
    /// a stop string, or a server that ignores `ignore_eos`/`min_tokens` or cuts streams
    /// short).
    pub short_outputs: usize,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens per second.
    pub output_throughput: f64,
    /// Prompt + output tokens per second.
    pub total_token_throughput: f64,
    /// Time to first token, milliseconds (streamed requests).
    pub ttft_ms: Distribution,
    /// Time per output token after the first, milliseconds (streamed requests).
    pub tpot_ms: Distribution,
    /// Inter-token latency (gaps between streamed chunks), milliseconds.
    pub itl_ms: Distribution,
    /// End-to-end latency, milliseconds.
    pub e2e_ms: Distribution,
    /// Prompt tokens per request.
    pub prompt_len: Distribution,
    /// Output tokens per request.
    pub output_len: Distribution,
    /// Goodput, when SLOs are set.
    pub goodput: Option<Goodput>,
    /// Cost, when a GPU price is set.
    pub cost: Option<Cost>,
    /// The server's counters, when it has `/metrics`.
    pub server_metrics: Option<ServerCheck>,
    /// True when Ctrl-C (or a cancel) stopped the run early.
    pub interrupted: bool,
    /// Every counted request.
    pub records: Vec<RequestRecord>,
}

/// Run facts that are not in the records.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Endpoint base URL.
    pub url: String,
    /// Model name.
    pub model: String,
    /// "completions" or "chat".
    pub endpoint: String,
    /// Load.
    pub load: LoadSpec,
    /// Workload.
    pub workload: WorkloadSpec,
    /// Tokenizer name.
    pub tokenizer: String,
    /// Counted phase wall time, seconds.
    pub duration_s: f64,
    /// Counted phase start, seconds since the Unix epoch.
    pub started_unix_s: f64,
    /// Cancelled early.
    pub interrupted: bool,
    /// Goodput objectives.
    pub slo: Slo,
    /// Price.
    pub cost: Option<CostSpec>,
    /// Server counter deltas.
    pub server: Option<Counters>,
}

/// True when `r` succeeded and meets every objective set in `slo`. A whole (not
/// streamed) response's first token reaches the client with its last: its TTFT is its
/// e2e, and it has no TPOT.
pub fn meets(r: &RequestRecord, slo: &Slo) -> bool {
    let ms = |s: f64| s * 1000.0;
    let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
        (None, _) => true,
        (Some(l), Some(v)) => ms(v) <= l,
        (Some(_), None) => false,
    };
    let ttft = if r.streamed { r.ttft_s } else { Some(r.e2e_s) };
    r.is_ok()
        && within(slo.ttft_ms, ttft)
        && (slo.tpot_ms.is_none()
            || !r.streamed
            || r.output_tokens <= 1
            || within(slo.tpot_ms, r.tpot_s()))
        && within(slo.e2e_ms, Some(r.e2e_s))
}

impl Report {
    /// Summarises counted records.
    pub fn new(info: RunInfo, records: Vec<RequestRecord>) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.is_ok()).collect();
        let mut errors = BTreeMap::new();
        let mut error_examples = BTreeMap::new();
        for r in &records {
            if let Outcome::Failed { kind, message } = &r.outcome {
                *errors.entry(kind.as_str()).or_insert(0) += 1;
                error_examples
                    .entry(kind.as_str())
                    .or_insert_with(|| message.clone());
            }
        }
        let failed: usize = errors.values().sum();
        let mut replicas = BTreeMap::new();
        for r in &records {
            let Some(name) = &r.replica else { continue };
            let counts: &mut [usize; 2] = replicas.entry(name.clone()).or_default();
            match r.outcome {
                Outcome::Ok => counts[0] += 1,
                Outcome::Failed { .. } => counts[1] += 1,
                Outcome::Cancelled => {}
            }
        }
        let cancelled = records
            .iter()
            .filter(|r| r.outcome == Outcome::Cancelled)
            .count();
        let requests = ok.len() + failed;
        let dur = info.duration_s.max(1e-9);
        let total_prompt_tokens: u64 = ok.iter().map(|r| r.prompt_tokens).sum();
        let total_output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
        let output_throughput = total_output_tokens as f64 / dur;
        let total_token_throughput = (total_prompt_tokens + total_output_tokens) as f64 / dur;
        let ms = |v: Vec<f64>| {
            Distribution::from_samples(&v.iter().map(|s| s * 1e3).collect::<Vec<_>>())
        };
        let goodput = (!info.slo.is_empty()).then(|| {
            let good = records.iter().filter(|r| meets(r, &info.slo)).count();
            Goodput {
                slo: info.slo,
                requests_per_s: good as f64 / dur,
                fraction: if requests == 0 {
                    0.0
                } else {
                    good as f64 / requests as f64
                },
            }
        });
        let server_metrics = info.server.map(|server| ServerCheck {
            server,
            client_output_tokens: total_output_tokens,
            client_prompt_tokens: total_prompt_tokens,
        });
        Report {
            url: info.url,
            model: info.model,
            endpoint: info.endpoint,
            load: info.load,
            workload: info.workload,
            tokenizer: info.tokenizer,
            requests,
            ok: ok.len(),
            failed,
            streamed: records
                .iter()
                .filter(|r| r.streamed && r.outcome != Outcome::Cancelled)
                .count(),
            cancelled,
            error_rate: if requests == 0 {
                0.0
            } else {
                failed as f64 / requests as f64
            },
            errors,
            error_examples,
            replicas,
            duration_s: info.duration_s,
            started_unix_s: info.started_unix_s,
            total_prompt_tokens,
            total_output_tokens,
            usage_reported: ok.iter().filter(|r| r.usage_reported).count(),
            short_outputs: ok
                .iter()
                .filter(|r| r.output_tokens < r.requested_output_tokens)
                .count(),
            request_throughput: ok.len() as f64 / dur,
            output_throughput,
            total_token_throughput,
            ttft_ms: ms(ok.iter().filter_map(|r| r.ttft_s).collect()),
            tpot_ms: ms(ok.iter().filter_map(|r| r.tpot_s()).collect()),
            itl_ms: ms(ok.iter().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2e_ms: ms(ok.iter().map(|r| r.e2e_s).collect()),
            prompt_len: Distribution::from_samples(
                &ok.iter()
                    .map(|r| r.prompt_tokens as f64)
                    .collect::<Vec<_>>(),
            ),
            output_len: Distribution::from_samples(
                &ok.iter()
                    .map(|r| r.output_tokens as f64)
                    .collect::<Vec<_>>(),
            ),
            goodput,
            cost: info
                .cost
                .map(|c| Cost::at(c, output_throughput, total_token_throughput)),
            server_metrics,
            interrupted: info.interrupted,
            records,
        }
    }

    /// The terminal table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<14}{v}\n"));
        line(
            "wick bench",
            format!(
                "{} | {} | /v1/{} | {} | tokenizer {}{}",
                self.url,
                self.model,
                if self.endpoint == "chat" {
                    "chat/completions"
                } else {
                    "completions"
                },
                self.load.label(),
                self.tokenizer,
                if self.interrupted {
                    " | INTERRUPTED"
                } else {
                    ""
                }
            ),
        );
        let errs = if self.errors.is_empty() {
            String::new()
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            format!(": {}", kinds.join(", "))
        };
        line(
            "requests",
            format!(
                "{} ok, {} failed ({:.1}%){errs}{}{}",
                self.ok,
                self.failed,
                self.error_rate * 100.0,
                if self.streamed == self.requests {
                    String::new()
                } else {
                    format!(", {} streamed", self.streamed)
                },
                if self.cancelled > 0 {
                    format!(", {} cancelled", self.cancelled)
                } else {
                    String::new()
                }
            ),
        );
        if !self.replicas.is_empty() {
            let each: Vec<String> = (self.replicas.iter())
                .map(|(name, [ok, failed])| format!("{name} {ok} ok / {failed} failed"))
                .collect();
            line("replicas", each.join(", "));
        }
        line("duration", format!("{:.2} s", self.duration_s));
        line(
            "throughput",
            format!(
                "{:.2} req/s | output {:.1} tok/s | total {:.1} tok/s",
                self.request_throughput, self.output_throughput, self.total_token_throughput
            ),
        );
        line(
            "tokens",
            format!(
                "{} prompt, {} output ({} of {} counted from usage)",
                self.total_prompt_tokens, self.total_output_tokens, self.usage_reported, self.ok
            ),
        );
        if self.short_outputs > 0 {
            line(
                "short",
                format!(
                    "{} of {} successful requests returned fewer tokens than asked for \
                     (EOS, stop, or a server ignoring ignore_eos/min_tokens)",
                    self.short_outputs, self.ok
                ),
            );
        }
        if let Some(g) = &self.goodput {
            line(
                "goodput",
                format!(
                    "{:.2} req/s ({:.1}% of requests within {})",
                    g.requests_per_s,
                    g.fraction * 100.0,
                    slo_text(&g.slo)
                ),
            );
        }
        if let Some(c) = &self.cost {
            let per = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("${v:.3}"));
            line(
                "cost",
                format!(
                    "{} per 1M output tokens, {} per 1M total (${:.2}/GPU-h x {} GPU)",
                    per(c.per_million_output_tokens),
                    per(c.per_million_total_tokens),
                    c.spec.gpu_hour_price,
                    c.spec.gpus
                ),
            );
        }
        if let Some(m) = &self.server_metrics {
            line(
                "server",
                format!(
                    "/metrics: {} output, {} prompt tokens, {} requests (client: {} output, {} prompt)",
                    m.server.generation_tokens,
                    m.server.prompt_tokens,
                    m.server.requests,
                    m.client_output_tokens,
                    m.client_prompt_tokens
                ),
            );
            if let Some((ms, bytes)) = m.server.per_step() {
                let phases: Vec<String> = (crate::metrics::STEP_PHASES.iter())
                    .zip(ms)
                    .map(|(p, ms)| format!("{p} {ms:.2}"))
                    .collect();
                line(
                    "engine",
                    format!(
                        "{} steps; ms per step: {}; {:.0} bytes to the host per step",
                        m.server.engine_steps,
                        phases.join(", "),
                        bytes
                    ),
                );
            }
        }
        s.push('\n');
        s.push_str(&format!(
            "{:<16}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}\n",
            "", "mean", "p50", "p90", "p95", "p99", "max"
        ));
        for (name, d) in [
            ("TTFT (ms)", &self.ttft_ms),
            ("TPOT (ms)", &self.tpot_ms),
            ("ITL (ms)", &self.itl_ms),
            ("E2E (ms)", &self.e2e_ms),
            ("prompt tokens", &self.prompt_len),
            ("output tokens", &self.output_len),
        ] {
            let cells: String = [d.mean, d.p50, d.p90, d.p95, d.p99, d.max]
                .iter()
                .map(|v| format!("{:>10}", num(*v)))
                .collect();
            s.push_str(&format!("{name:<16}{cells}\n"));
        }
        for (kind, msg) in &self.error_examples {
            s.push_str(&format!("  e.g. {kind}: {msg}\n"));
        }
        s
    }
}

/// A table cell: two decimals below 10, one below 10,000, none above.
fn num(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 10_000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// "ttft<=500ms, tpot<=50ms".
pub fn slo_text(slo: &Slo) -> String {
    let parts: Vec<String> = [
        ("ttft", slo.ttft_ms),
        ("tpot", slo.tpot_ms),
        ("e2e", slo.e2e_ms),
    ]
    .iter()
    .filter_map(|(n, v)| v.map(|v| format!("{n}<={v}ms")))
    .collect();
    parts.join(", ")
}

/// Several runs over a range of loads.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// One report per load level, in sweep order.
    pub points: Vec<Report>,
}

impl SweepReport {
    /// The sweep's summary table, one row per load level.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{:<10}{:>7}{:>7}{:>9}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}{:>11}\n",
            "load",
            "ok",
            "err",
            "req/s",
            "out tok/s",
            "TTFT p50",
            "TTFT p95",
            "TPOT p50",
            "TPOT p95",
            "goodput",
            "$/M out"
        );
        for p in &self.points {
            let good = p
                .goodput
                .map_or("-".to_string(), |g| format!("{:.2}", g.requests_per_s));
            let cost = p
                .cost
                .and_then(|c| c.per_million_output_tokens)
                .map_or("-".to_string(), |c| format!("{c:.3}"));
            s.push_str(&format!(
                "{:<10}{:>7}{:>7}{:>9.2}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10}{:>11}\n",
                p.load.label(),
                p.ok,
                p.failed,
                p.request_throughput,
                p.output_throughput,
                p.ttft_ms.p50,
                p.ttft_ms.p95,
                p.tpot_ms.p50,
                p.tpot_ms.p95,
                good,
                cost
            ));
        }
        s.push_str("(latencies in ms)\n");
        s
    }
}

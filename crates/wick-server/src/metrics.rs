//! Prometheus metrics, named like vLLM's with a `wick:` prefix, exposed on GET /metrics
//! in the Prometheus text format (version 0.0.4, [`CONTENT_TYPE`]) through the
//! `prometheus-client` crate.
//!
//! Histograms and counters are recorded by the handlers as requests end; gauges (running,
//! waiting, KV usage, engine alive), the engine's own counters and its step-duration
//! histogram are read from [`EngineStats`] and [`EngineHealth`] at scrape time into a
//! registry built for that one scrape.
//!
//! Invariants: the exposed names and label sets are wick's public interface (dashboards,
//! alert rules, `wick bench` read them): every family carries `model_name` except
//! `wick:http_requests_total` (`route`, `status`). prometheus-client appends `_total` to
//! counters, so counters are registered without it. Label values are sanitised once, when
//! recorded, so the text always parses.

use std::borrow::Cow;
use std::fmt;

use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use wick_core::RequestMetrics;
use wick_engine::{DurationHistogram, EngineHealth, EngineStats, StepPhase};

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// The finish reasons always exposed (at 0 until one happens).
const FINISH_REASONS: [&str; 3] = ["stop", "length", "abort"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    finished_reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: u16,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    model_name: String,
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    tpot: Histogram,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success: Family<ReasonLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    /// Bytes of the model's weights as loaded; 0 while loading.
    model_weight_bytes: std::sync::atomic::AtomicU64,
    /// Dollars per GPU-hour (`--gpu-hour-price`), as f64 bits; 0.0 when not set.
    gpu_hour_price_bits: std::sync::atomic::AtomicU64,
}

/// `s` with the characters that would need escaping in a label value replaced by `_`.
fn sanitize(s: &str) -> String {
    s.replace(['\\', '"', '\n'], "_")
}

impl Metrics {
    /// Empty metrics labelled with `model_name`.
    pub fn new(model_name: &str) -> Self {
        let success = Family::default();
        for finished_reason in FINISH_REASONS {
            let _ = success.get_or_create(&ReasonLabels { finished_reason });
        }
        Self {
            model_name: sanitize(model_name),
            ttft: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            itl: Histogram::new(ITL_BUCKETS.iter().copied()),
            e2e: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            queue: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            tpot: Histogram::new(ITL_BUCKETS.iter().copied()),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            success,
            http: Family::default(),
            model_weight_bytes: Default::default(),
            gpu_hour_price_bits: Default::default(),
        }
    }

    /// Sets `wick:gpu_hour_price_dollars`, what this replica's hardware costs per hour
    /// (`--gpu-hour-price`); the cost recording rules divide it by the output token rate,
    /// as `wick bench --gpu-hour-price` does. Not exposed while 0 (not set).
    pub fn set_gpu_hour_price(&self, dollars: f64) {
        self.gpu_hour_price_bits
            .store(dollars.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets `wick:model_weight_bytes` once the model is loaded.
    pub fn set_model_weight_bytes(&self, bytes: u64) {
        self.model_weight_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A request that finished in the engine; `finish_reasons` has one entry per
    /// completion.
    pub fn record_finished(&self, m: &RequestMetrics, finish_reasons: &[&'static str]) {
        observe(&self.ttft, m.ttft_s);
        observe(&self.e2e, m.e2e_s);
        observe(&self.queue, m.queue_time_s);
        for &t in &m.inter_token_s {
            observe(&self.itl, t);
        }
        // Per request, as `wick bench` and vLLM's request_time_per_output_token: the
        // decode time over the tokens after the first, of one completion (n completions
        // decode side by side).
        let per_completion = m.generation_tokens as f64 / finish_reasons.len().max(1) as f64;
        if per_completion > 1.0 {
            observe(&self.tpot, (m.e2e_s - m.ttft_s) / (per_completion - 1.0));
        }
        self.prompt_tokens.inc_by(m.prompt_tokens as u64);
        self.generation_tokens.inc_by(m.generation_tokens as u64);
        for &finished_reason in finish_reasons {
            self.success
                .get_or_create(&ReasonLabels { finished_reason })
                .inc();
        }
    }

    /// A request that ended early (client gone, error): its tokens still count.
    pub fn record_unfinished(&self, prompt_tokens: usize, generation_tokens: usize) {
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.generation_tokens.inc_by(generation_tokens as u64);
    }

    /// One HTTP request answered.
    pub fn record_http(&self, route: &str, status: u16) {
        let route = sanitize(route);
        self.http.get_or_create(&HttpLabels { route, status }).inc();
    }

    /// Prometheus text exposition (version 0.0.4: serve it with [`CONTENT_TYPE`]).
    /// `health` is `None` while the model loads.
    pub fn render(&self, stats: &EngineStats, health: Option<&EngineHealth>) -> String {
        let model_label = (
            Cow::Borrowed("model_name"),
            Cow::Owned(self.model_name.clone()),
        );
        let mut r = Registry::with_labels(std::iter::once(model_label));
        r.register(
            "wick:num_requests_running",
            "Sequences running",
            gauge(stats.num_running),
        );
        r.register(
            "wick:num_requests_waiting",
            "Sequences waiting",
            gauge(stats.num_waiting),
        );
        r.register(
            "wick:kv_cache_usage_perc",
            "Fraction of KV cache blocks in use (0-1)",
            ConstGauge::new(stats.kv_usage),
        );
        r.register(
            "wick:kv_cache_used_blocks",
            "KV cache blocks in use",
            gauge(stats.num_used_blocks),
        );
        // Counters: prometheus-client adds the `_total` suffix.
        r.register(
            "wick:num_preemptions",
            "Preemptions",
            ConstCounter::new(stats.num_preemptions),
        );
        r.register(
            "wick:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            ConstCounter::new(stats.prefix_cache_queries),
        );
        r.register(
            "wick:prefix_cache_hits",
            "Prompt tokens found in the prefix cache",
            ConstCounter::new(stats.prefix_cache_hits),
        );
        r.register(
            "wick:prompt_tokens",
            "Prompt tokens processed",
            self.prompt_tokens.clone(),
        );
        r.register(
            "wick:generation_tokens",
            "Tokens generated",
            self.generation_tokens.clone(),
        );
        r.register(
            "wick:engine_steps",
            "Engine steps run",
            ConstCounter::new(stats.steps),
        );
        r.register(
            "wick:request_success",
            "Requests finished, by finish reason",
            self.success.clone(),
        );
        r.register(
            "wick:time_to_first_token_seconds",
            "Time to first token",
            self.ttft.clone(),
        );
        r.register(
            "wick:inter_token_latency_seconds",
            "Time between consecutive tokens",
            self.itl.clone(),
        );
        r.register(
            "wick:e2e_request_latency_seconds",
            "Arrival to last token",
            self.e2e.clone(),
        );
        r.register(
            "wick:request_queue_time_seconds",
            "Arrival to first scheduled step",
            self.queue.clone(),
        );
        r.register(
            "wick:request_time_per_output_token_seconds",
            "Per request: (e2e - TTFT) / (output tokens - 1), of requests with over one token",
            self.tpot.clone(),
        );
        let weight_bytes = self
            .model_weight_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if weight_bytes > 0 {
            r.register(
                "wick:model_weight_bytes",
                "Bytes of the model's weights as loaded (quantized ones at their GGUF size)",
                ConstGauge::new(i64::try_from(weight_bytes).unwrap_or(i64::MAX)),
            );
        }
        let price = f64::from_bits(
            self.gpu_hour_price_bits
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        if price > 0.0 {
            r.register(
                "wick:gpu_hour_price_dollars",
                "Dollars per hour of the GPU serving this replica (--gpu-hour-price)",
                ConstGauge::new(price),
            );
        }
        let alive = health.is_some_and(EngineHealth::is_healthy);
        r.register(
            "wick:engine_alive",
            "1 while the engine thread is alive and stepping, 0 when stalled, dead or loading",
            ConstGauge::<i64>::new(alive.into()),
        );
        r.register(
            "wick:engine_step_duration_seconds",
            "Duration of one engine step",
            StepHistogram::from(&stats.step_duration),
        );
        r.register(
            "wick:engine_step_phase_duration_seconds",
            "Duration of each phase of an engine step (schedule, prepare_inputs, forward, \
             sample: logits to token ids on the host, postprocess)",
            PhaseHistograms(
                (StepPhase::ALL.iter())
                    .map(|&p| {
                        (
                            p.name(),
                            StepHistogram::from(stats.step_phase_duration.get(p)),
                        )
                    })
                    .collect(),
            ),
        );
        r.register(
            "wick:engine_device_to_host_bytes",
            "Bytes engine steps read back from the model's device (sampled token ids and \
             requested logprobs; counted on a CPU too)",
            ConstCounter::new(stats.device_to_host_bytes),
        );
        r.register(
            "wick:engine_graph_steps",
            "Engine steps run through a captured decode graph (--cuda-graphs)",
            ConstCounter::new(stats.graph_steps),
        );
        r.register(
            "wick:engine_graph_shapes",
            "Decode step shapes (batch size, context bucket) captured as graphs",
            ConstGauge::new(i64::try_from(stats.graph_shapes).unwrap_or(i64::MAX)),
        );
        if let Some(t) = stats.last_step_unix_s {
            r.register(
                "wick:engine_last_step_timestamp_seconds",
                "Unix time the last engine step finished",
                ConstGauge::new(t),
            );
        }
        if stats.max_loras > 0 {
            // vLLM's shape: the adapters as labels (comma-separated names), the value the
            // time of the reading.
            let labels = [
                ("running_lora_adapters", stats.running_loras.join(",")),
                ("waiting_lora_adapters", stats.waiting_loras.join(",")),
                ("max_lora", stats.max_loras.to_string()),
            ];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            r.sub_registry_with_labels(
                labels
                    .into_iter()
                    .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v))),
            )
            .register(
                "wick:lora_requests_info",
                "LoRA adapters of running and waiting requests (labels); value: Unix time",
                ConstGauge::new(now),
            );
        }

        let mut http = Registry::default();
        http.register(
            "wick:http_requests",
            "HTTP requests by route and status",
            self.http.clone(),
        );

        let mut out = String::with_capacity(16 * 1024);
        for registry in [&r, &http] {
            // Writing to a String fails only if a label value cannot be encoded, and
            // every value here is a plain string or number.
            if let Err(e) = prometheus_text::encode(&mut out, registry) {
                tracing::error!("cannot encode metrics: {e}");
            }
        }
        out
    }
}

/// Records `v`, ignoring non-finite values (a clock gone backwards, a missing time).
fn observe(h: &Histogram, v: f64) {
    if v.is_finite() {
        h.observe(v);
    }
}

fn gauge(n: usize) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The engine's step-duration histogram, plain data read at scrape time, as a metric.
#[derive(Debug)]
struct StepHistogram {
    /// (upper bound, count in that bucket alone); `+Inf` is added from `count`.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl From<&DurationHistogram> for StepHistogram {
    fn from(h: &DurationHistogram) -> Self {
        Self {
            buckets: h
                .bounds
                .iter()
                .copied()
                .zip(h.counts.iter().copied())
                .collect(),
            sum: h.sum,
            count: h.count,
        }
    }
}

impl EncodeMetric for StepHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The step-phase histograms as one metric, a `phase` label each.
#[derive(Debug)]
struct PhaseHistograms(Vec<(&'static str, StepHistogram)>);

impl EncodeMetric for PhaseHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (phase, h) in &self.0 {
            let labels = [("phase", *phase)];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests;

//! Prometheus metrics, named like vLLM's with a `wick:` prefix, rendered as text for
//! GET /metrics. Histograms and counters are recorded by the handlers as requests end;
//! gauges (running, waiting, KV usage) and the engine's own counters are read from
//! [`EngineStats`] at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use wick_core::RequestMetrics;
use wick_engine::EngineStats;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
    0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
    prompt_tokens: u64,
    generation_tokens: u64,
    success: BTreeMap<&'static str, u64>,
    http: BTreeMap<(String, u16), u64>,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    model_name: String,
    recorded: Mutex<Recorded>,
}

impl Metrics {
    /// Empty metrics labelled with `model_name`.
    pub fn new(model_name: &str) -> Self {
        Self {
            model_name: model_name.replace(['\\', '"', '\n'], "_"),
            recorded: Mutex::new(Recorded {
                ttft: Histogram::new(LATENCY_BUCKETS),
                itl: Histogram::new(ITL_BUCKETS),
                e2e: Histogram::new(LATENCY_BUCKETS),
                queue: Histogram::new(LATENCY_BUCKETS),
                prompt_tokens: 0,
                generation_tokens: 0,
                success: BTreeMap::new(),
                http: BTreeMap::new(),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        let mut guard = match self.recorded.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A request that finished in the engine; `finish_reasons` has one entry per
    /// completion.
    pub fn record_finished(&self, m: &RequestMetrics, finish_reasons: &[&'static str]) {
        self.with(|r| {
            r.ttft.observe(m.ttft_s);
            r.e2e.observe(m.e2e_s);
            r.queue.observe(m.queue_time_s);
            for &t in &m.inter_token_s {
                r.itl.observe(t);
            }
            r.prompt_tokens += m.prompt_tokens as u64;
            r.generation_tokens += m.generation_tokens as u64;
            for reason in finish_reasons {
                *r.success.entry(reason).or_insert(0) += 1;
            }
        });
    }

    /// A request that ended early (client gone, error): its tokens still count.
    pub fn record_unfinished(&self, prompt_tokens: usize, generation_tokens: usize) {
        self.with(|r| {
            r.prompt_tokens += prompt_tokens as u64;
            r.generation_tokens += generation_tokens as u64;
        });
    }

    /// One HTTP request answered.
    pub fn record_http(&self, route: &str, status: u16) {
        self.with(|r| *r.http.entry((route.to_string(), status)).or_insert(0) += 1);
    }

    /// Prometheus text exposition.
    pub fn render(&self, stats: &EngineStats) -> String {
        let r = self.with(|r| r.clone());
        let labels = format!("model_name=\"{}\"", self.model_name);
        let mut out = String::with_capacity(16 * 1024);
        let mut scalar = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {v}"
            );
        };
        scalar(
            "wick:num_requests_running",
            "gauge",
            "Sequences running.",
            stats.num_running as f64,
        );
        scalar(
            "wick:num_requests_waiting",
            "gauge",
            "Sequences waiting.",
            stats.num_waiting as f64,
        );
        scalar(
            "wick:kv_cache_usage_perc",
            "gauge",
            "Fraction of KV cache blocks in use (0-1).",
            stats.kv_usage,
        );
        scalar(
            "wick:kv_cache_used_blocks",
            "gauge",
            "KV cache blocks in use.",
            stats.num_used_blocks as f64,
        );
        scalar(
            "wick:num_preemptions_total",
            "counter",
            "Preemptions.",
            stats.num_preemptions as f64,
        );
        scalar(
            "wick:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            stats.prefix_cache_queries as f64,
        );
        scalar(
            "wick:prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            stats.prefix_cache_hits as f64,
        );
        scalar(
            "wick:prompt_tokens_total",
            "counter",
            "Prompt tokens processed.",
            r.prompt_tokens as f64,
        );
        scalar(
            "wick:generation_tokens_total",
            "counter",
            "Tokens generated.",
            r.generation_tokens as f64,
        );
        scalar(
            "wick:engine_steps_total",
            "counter",
            "Engine steps run.",
            stats.steps as f64,
        );
        let _ = writeln!(
            out,
            "# HELP wick:request_success_total Requests finished, by finish reason.\n# TYPE wick:request_success_total counter"
        );
        for reason in ["stop", "length", "abort"] {
            let n = r.success.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "wick:request_success_total{{{labels},finished_reason=\"{reason}\"}} {n}"
            );
        }
        r.ttft.render(
            &mut out,
            "wick:time_to_first_token_seconds",
            "Time to first token.",
            &labels,
        );
        r.itl.render(
            &mut out,
            "wick:inter_token_latency_seconds",
            "Time between consecutive tokens.",
            &labels,
        );
        r.e2e.render(
            &mut out,
            "wick:e2e_request_latency_seconds",
            "Arrival to last token.",
            &labels,
        );
        r.queue.render(
            &mut out,
            "wick:request_queue_time_seconds",
            "Arrival to first scheduled step.",
            &labels,
        );
        let _ = writeln!(
            out,
            "# HELP wick:http_requests_total HTTP requests by route and status.\n# TYPE wick:http_requests_total counter"
        );
        for ((route, status), n) in &r.http {
            let route = route.replace(['\\', '"', '\n'], "_");
            let _ = writeln!(
                out,
                "wick:http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let m = Metrics::new("smol");
        m.record_finished(
            &RequestMetrics {
                prompt_tokens: 10,
                generation_tokens: 3,
                ttft_s: 0.03,
                e2e_s: 0.2,
                inter_token_s: vec![0.01, 0.02],
                ..Default::default()
            },
            &["length"],
        );
        m.record_unfinished(5, 2);
        m.record_http("/v1/completions", 200);
        let text = m.render(&EngineStats {
            num_running: 2,
            kv_usage: 0.25,
            ..Default::default()
        });
        for line in [
            "wick:prompt_tokens_total{model_name=\"smol\"} 15",
            "wick:generation_tokens_total{model_name=\"smol\"} 5",
            "wick:num_requests_running{model_name=\"smol\"} 2",
            "wick:kv_cache_usage_perc{model_name=\"smol\"} 0.25",
            "wick:request_success_total{model_name=\"smol\",finished_reason=\"length\"} 1",
            "wick:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.04\"} 1",
            "wick:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.02\"} 0",
            "wick:inter_token_latency_seconds_count{model_name=\"smol\"} 2",
            "wick:http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}

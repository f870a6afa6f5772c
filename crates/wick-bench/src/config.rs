//! The library's configuration: plain data that `BenchArgs` (the CLI) is turned into, and
//! that an integration test builds directly with `BenchConfig::new(url)` plus overrides.
//!
//! Invariants: every duration here is a `std::time::Duration`; a config with neither
//! `num_requests` nor `duration` is completed with a default request count by
//! [`BenchConfig::stop_condition`], so a run always ends.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Which OpenAI endpoint the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Chat when the workload holds conversations, completions otherwise.
    Auto,
    /// `POST /v1/completions` with a `prompt`.
    Completions,
    /// `POST /v1/chat/completions` with `messages`.
    Chat,
}

/// Where exact token counts come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerSource {
    /// The server's `/tokenize` when it answers, else approximate (one word ~ one token).
    Auto,
    /// The server's `/tokenize` and `/detokenize`; an error when they are missing.
    Server,
    /// A local `tokenizer.json`.
    Local(PathBuf),
    /// No tokenizer: prompts of N common words, counts approximate.
    Approximate,
}

/// What requests are sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkloadSpec {
    /// Random prompts of `input_len` tokens asking for `output_len` tokens, each length
    /// drawn uniformly from `len * (1 - spread) ..= len * (1 + spread)`.
    Synthetic {
        /// Prompt length in tokens.
        input_len: usize,
        /// Output length in tokens.
        output_len: usize,
        /// Relative spread of both lengths, 0 for fixed lengths.
        spread: f64,
    },
    /// A built-in mix of chat, summarisation, generation and retrieval-shaped requests.
    Mix,
    /// A JSONL (or JSON array) file of prompts, chat conversations or ShareGPT records.
    File {
        /// The file.
        path: PathBuf,
        /// Output length when a record does not give one.
        output_len: Option<usize>,
    },
}

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum LoadSpec {
    /// `concurrency` requests always in flight: each finished request starts the next.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
    /// Requests start at `rate` per second whatever the server does, at most
    /// `max_concurrency` in flight (further arrivals wait for a slot).
    Open {
        /// Requests per second.
        rate: f64,
        /// Poisson arrivals (exponential gaps) when true, constant gaps otherwise.
        poisson: bool,
        /// Cap on requests in flight.
        max_concurrency: Option<usize>,
    },
}

impl LoadSpec {
    /// A short label for tables: "c=16" or "r=4/s".
    pub fn label(&self) -> String {
        match self {
            LoadSpec::Closed { concurrency } => format!("c={concurrency}"),
            LoadSpec::Open { rate, .. } => format!("r={rate}/s"),
        }
    }

    /// The sweep's x value: concurrency or rate.
    pub fn x_value(&self) -> f64 {
        match self {
            LoadSpec::Closed { concurrency } => *concurrency as f64,
            LoadSpec::Open { rate, .. } => *rate,
        }
    }
}

/// Service-level objectives; a request is "good" when it succeeded and meets every one
/// that is set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Time to first token, milliseconds.
    pub ttft_ms: Option<f64>,
    /// Time per output token after the first, milliseconds.
    pub tpot_ms: Option<f64>,
    /// End-to-end latency, milliseconds.
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// True when no objective is set.
    pub fn is_empty(&self) -> bool {
        self.ttft_ms.is_none() && self.tpot_ms.is_none() && self.e2e_ms.is_none()
    }
}

/// Price of the hardware behind the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostSpec {
    /// Dollars per GPU-hour.
    pub gpu_hour_price: f64,
    /// Number of GPUs serving.
    pub gpus: f64,
}

/// One benchmark run against one endpoint at one load.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (a trailing `/v1` is accepted).
    pub url: String,
    /// Model name; the first of `GET /v1/models` when `None`.
    pub model: Option<String>,
    /// Bearer token.
    pub api_key: Option<String>,
    /// Endpoint.
    pub endpoint: EndpointKind,
    /// Requests.
    pub workload: WorkloadSpec,
    /// Load.
    pub load: LoadSpec,
    /// Counted requests to send (after warm-up).
    pub num_requests: Option<usize>,
    /// Stop starting counted requests after this long.
    pub duration: Option<Duration>,
    /// Requests sent first and not counted.
    pub warmup: usize,
    /// Limit on one request from send to last byte.
    pub request_timeout: Duration,
    /// Limit on the wait for the first token.
    pub ttft_timeout: Option<Duration>,
    /// Service-level objectives for goodput.
    pub slo: Slo,
    /// Cost model.
    pub cost: Option<CostSpec>,
    /// Seed for prompts, lengths and arrivals.
    pub seed: u64,
    /// Share of requests sent streamed (0..=1), chosen per request from the seed; the
    /// others are sent whole (`stream: false`) and have no TTFT, TPOT or ITL.
    pub stream_fraction: f64,
    /// Send `ignore_eos` and `min_tokens` so output lengths are exact.
    pub ignore_eos: bool,
    /// Sampling temperature.
    pub temperature: f64,
    /// `top_p`, sent when set.
    pub top_p: Option<f64>,
    /// Token counting.
    pub tokenizer: TokenizerSource,
    /// Read the server's Prometheus `/metrics` before and after and report the deltas.
    pub scrape_metrics: bool,
    /// Draw a live progress line on stderr.
    pub progress: bool,
}

/// Requests sent when neither a count nor a duration is given.
pub const DEFAULT_NUM_REQUESTS: usize = 200;

impl BenchConfig {
    /// Defaults: 256 prompt / 128 output tokens, closed loop at concurrency 1, 200
    /// requests, no warm-up, 300 s request timeout, seed 0, every request streamed,
    /// `ignore_eos`, greedy.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: None,
            api_key: None,
            endpoint: EndpointKind::Auto,
            workload: WorkloadSpec::Synthetic {
                input_len: 256,
                output_len: 128,
                spread: 0.0,
            },
            load: LoadSpec::Closed { concurrency: 1 },
            num_requests: None,
            duration: None,
            warmup: 0,
            request_timeout: Duration::from_secs(300),
            ttft_timeout: None,
            slo: Slo::default(),
            cost: None,
            seed: 0,
            stream_fraction: 1.0,
            ignore_eos: true,
            temperature: 0.0,
            top_p: None,
            tokenizer: TokenizerSource::Auto,
            scrape_metrics: true,
            progress: false,
        }
    }

    /// `(max counted requests, time limit)`: at least one is set.
    pub fn stop_condition(&self) -> (Option<usize>, Option<Duration>) {
        match (self.num_requests, self.duration) {
            (None, None) => (Some(DEFAULT_NUM_REQUESTS), None),
            other => other,
        }
    }

    /// Base URL without a trailing slash or `/v1`.
    pub fn base_url(&self) -> String {
        let trimmed = self.url.trim_end_matches('/');
        trimmed.strip_suffix("/v1").unwrap_or(trimmed).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_strips_slash_and_v1() {
        for url in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
        ] {
            assert_eq!(BenchConfig::new(url).base_url(), "http://h:1");
        }
    }

    #[test]
    fn a_run_always_has_a_stop_condition() {
        let mut c = BenchConfig::new("http://x");
        assert_eq!(c.stop_condition(), (Some(DEFAULT_NUM_REQUESTS), None));
        c.duration = Some(Duration::from_secs(3));
        assert_eq!(c.stop_condition(), (None, Some(Duration::from_secs(3))));
    }
}

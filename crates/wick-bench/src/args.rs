//! `wick bench` command-line arguments and their translation into [`BenchConfig`] and
//! sweep load levels. Parsers for durations (`500ms`, `30s`, `5m`), SLO lists
//! (`ttft=500ms,tpot=50`) and sweeps (`concurrency=1,4,16`, `rate=1,2,4`) live here.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{BenchError, Context, Result};

use crate::config::{
    BenchConfig, CostSpec, EndpointKind, LoadSpec, Slo, TokenizerSource, WorkloadSpec,
};

/// Built-in workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// Random prompts of `--input-len` tokens asking for `--output-len` tokens.
    Synthetic,
    /// A mix of chat, summarisation, long generation and retrieval-shaped requests.
    Mix,
}

/// Arrival process of `--request-rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Exponential gaps (Poisson process).
    Poisson,
    /// Equal gaps.
    Constant,
}

/// `wick bench` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the OpenAI-compatible server (wick, vLLM, SGLang, llama.cpp, ...).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name; the first one of GET /v1/models when omitted.
    #[arg(long)]
    pub model: Option<String>,
    /// Bearer token.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Endpoint: chat when the workload has conversations, else completions.
    #[arg(long, value_enum, default_value = "auto")]
    pub endpoint: EndpointKind,
    /// Built-in workload (ignored with --dataset).
    #[arg(long, value_enum, default_value = "synthetic")]
    pub workload: WorkloadKind,
    /// JSONL or JSON file of prompts ({"prompt"}), chats ({"messages"}) or ShareGPT
    /// records ({"conversations"}).
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Prompt length in tokens (synthetic workload).
    #[arg(long, default_value_t = 256)]
    pub input_len: usize,
    /// Output length in tokens (default 128; for --dataset, overrides the records').
    #[arg(long)]
    pub output_len: Option<usize>,
    /// Relative spread of lengths: 0.25 draws each length in ±25%.
    #[arg(long, default_value_t = 0.0)]
    pub len_spread: f64,
    /// Token counting: auto (server's /tokenize if present), server, none, or a path to
    /// a tokenizer.json.
    #[arg(long, default_value = "auto")]
    pub tokenizer: String,
    /// Seed for prompts, lengths and arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of requests streamed (0..1, drawn per request from --seed); the rest are
    /// sent with stream=false and measured end to end (no TTFT/TPOT/ITL).
    #[arg(long, default_value_t = 1.0)]
    pub stream_fraction: f64,
    /// Closed loop: requests kept in flight (default 1 unless --request-rate is given).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open loop: requests started per second.
    #[arg(long)]
    pub request_rate: Option<f64>,
    /// Arrival process for --request-rate.
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrival: Arrival,
    /// Cap on requests in flight in the open loop.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    /// Counted requests per load level (default 200 unless --duration is given).
    #[arg(long)]
    pub num_requests: Option<usize>,
    /// Start no counted request after this long (e.g. 60s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests sent before measuring, not counted.
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Sweep load levels: concurrency=1,4,16,64 or rate=1,2,4.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Limit on one request, first byte to last.
    #[arg(long, value_parser = parse_duration, default_value = "300s")]
    pub request_timeout: Duration,
    /// Limit on the wait for a request's first token.
    #[arg(long, value_parser = parse_duration)]
    pub ttft_timeout: Option<Duration>,
    /// Objectives for goodput: ttft=500ms,tpot=50ms,e2e=10s (bare numbers are ms).
    #[arg(long, value_parser = parse_slo)]
    pub slo: Option<Slo>,
    /// Dollars per GPU-hour (e.g. 2.10 for an H100), for cost per million tokens.
    #[arg(long)]
    pub gpu_hour_price: Option<f64>,
    /// GPUs behind the endpoint.
    #[arg(long, default_value_t = 1.0)]
    pub gpus: f64,
    /// Let requests stop at EOS (by default ignore_eos and min_tokens make output
    /// lengths exact on servers that support them).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: sample from the smallest set of tokens whose probability adds up
    /// to this (sent as `top_p` when given).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Do not read the server's /metrics before and after.
    #[arg(long)]
    pub no_server_metrics: bool,
    /// Write the full report (every request included) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write plots: .svg, or .png when rsvg-convert is installed.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// Parses `500ms`, `1.5s`, `30` (seconds), `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 30s, 5m"))?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_ms(v: &str) -> Result<f64, String> {
    let v = v.trim();
    if v.chars().last().is_some_and(|c| c.is_ascii_digit()) {
        v.parse::<f64>()
            .map_err(|_| format!("`{v}` is not a number"))
    } else {
        Ok(parse_duration(v)?.as_secs_f64() * 1000.0)
    }
}

/// Parses `ttft=500ms,tpot=50,e2e=10s` (bare numbers are milliseconds).
pub fn parse_slo(s: &str) -> Result<Slo, String> {
    let mut slo = Slo::default();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: expected name=value"))?;
        let ms = Some(parse_ms(v)?);
        match k.trim() {
            "ttft" => slo.ttft_ms = ms,
            "tpot" => slo.tpot_ms = ms,
            "e2e" => slo.e2e_ms = ms,
            other => return Err(format!("unknown SLO `{other}` (ttft, tpot, e2e)")),
        }
    }
    Ok(slo)
}

/// Parses `concurrency=1,4,16` or `rate=1,2,4` into load levels; rates keep the
/// arrival process and `max_concurrency` of `base`.
pub fn parse_sweep(
    s: &str,
    arrival: Arrival,
    max_concurrency: Option<usize>,
) -> Result<Vec<LoadSpec>> {
    let (k, v) = s
        .split_once('=')
        .context("--sweep takes concurrency=1,4,16 or rate=1,2,4")?;
    let values = v.split(',').map(str::trim).filter(|x| !x.is_empty());
    let loads: Vec<LoadSpec> = match k.trim() {
        "concurrency" | "c" => values
            .map(|x| {
                let n: usize = x.parse().with_context(|| format!("concurrency `{x}`"))?;
                if n == 0 {
                    return Err(BenchError::invalid("concurrency must be at least 1"));
                }
                Ok(LoadSpec::Closed { concurrency: n })
            })
            .collect::<Result<_>>()?,
        "rate" | "request-rate" | "r" => values
            .map(|x| {
                let rate = if x == "inf" {
                    f64::INFINITY
                } else {
                    x.parse().with_context(|| format!("rate `{x}`"))?
                };
                if rate <= 0.0 || rate.is_nan() {
                    return Err(BenchError::invalid("rates must be positive"));
                }
                Ok(LoadSpec::Open {
                    rate,
                    poisson: arrival == Arrival::Poisson,
                    max_concurrency,
                })
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(BenchError::invalid(format!(
                "--sweep `{other}`: sweep concurrency or rate"
            )))
        }
    };
    if loads.is_empty() {
        return Err(BenchError::invalid("--sweep lists no value"));
    }
    Ok(loads)
}

impl BenchArgs {
    /// The library configuration these arguments describe.
    pub fn to_config(&self) -> Result<BenchConfig> {
        let workload = match (&self.dataset, self.workload) {
            (Some(path), _) => WorkloadSpec::File {
                path: path.clone(),
                output_len: self.output_len,
            },
            (None, WorkloadKind::Mix) => WorkloadSpec::Mix,
            (None, WorkloadKind::Synthetic) => WorkloadSpec::Synthetic {
                input_len: self.input_len,
                output_len: self.output_len.unwrap_or(128),
                spread: self.len_spread,
            },
        };
        if !(0.0..=1.0).contains(&self.len_spread) {
            return Err(BenchError::invalid("--len-spread must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.stream_fraction) {
            return Err(BenchError::invalid(
                "--stream-fraction must be between 0 and 1",
            ));
        }
        let load = match (self.request_rate, self.concurrency) {
            (Some(_), Some(_)) => {
                return Err(BenchError::invalid(
                    "use either --concurrency or --request-rate",
                ))
            }
            (Some(rate), None) => {
                if rate <= 0.0 || rate.is_nan() {
                    return Err(BenchError::invalid("--request-rate must be positive"));
                }
                LoadSpec::Open {
                    rate,
                    poisson: self.arrival == Arrival::Poisson,
                    max_concurrency: self.max_concurrency,
                }
            }
            (None, c) => LoadSpec::Closed {
                concurrency: c.unwrap_or(1).max(1),
            },
        };
        let tokenizer = match self.tokenizer.as_str() {
            "auto" => TokenizerSource::Auto,
            "server" => TokenizerSource::Server,
            "none" | "approximate" => TokenizerSource::Approximate,
            path => TokenizerSource::Local(PathBuf::from(path)),
        };
        let cost = self.gpu_hour_price.map(|p| CostSpec {
            gpu_hour_price: p,
            gpus: self.gpus,
        });
        Ok(BenchConfig {
            model: self.model.clone(),
            api_key: self.api_key.clone(),
            endpoint: self.endpoint,
            workload,
            load,
            num_requests: self.num_requests,
            duration: self.duration,
            warmup: self.warmup,
            request_timeout: self.request_timeout,
            ttft_timeout: self.ttft_timeout,
            slo: self.slo.unwrap_or_default(),
            cost,
            seed: self.seed,
            stream_fraction: self.stream_fraction,
            ignore_eos: !self.no_ignore_eos,
            temperature: self.temperature,
            top_p: self.top_p,
            tokenizer,
            scrape_metrics: !self.no_server_metrics,
            progress: !self.no_progress,
            ..BenchConfig::new(self.url.clone())
        })
    }

    /// The sweep's load levels, or `None` without `--sweep`.
    pub fn sweep_loads(&self) -> Result<Option<Vec<LoadSpec>>> {
        self.sweep
            .as_deref()
            .map(|s| parse_sweep(s, self.arrival, self.max_concurrency))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_slos_and_sweeps_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5 parsecs").is_err() && parse_duration("").is_err());
        let slo = parse_slo("ttft=500ms,tpot=50,e2e=2s").unwrap();
        assert_eq!(
            (slo.ttft_ms, slo.tpot_ms, slo.e2e_ms),
            (Some(500.0), Some(50.0), Some(2000.0))
        );
        assert!(parse_slo("latency=3").is_err());
        let c = parse_sweep("concurrency=1,4,16", Arrival::Poisson, None).unwrap();
        assert_eq!(c[2], LoadSpec::Closed { concurrency: 16 });
        let r = parse_sweep("rate=0.5,2", Arrival::Constant, Some(8)).unwrap();
        assert_eq!(
            r[0],
            LoadSpec::Open {
                rate: 0.5,
                poisson: false,
                max_concurrency: Some(8)
            }
        );
        assert!(parse_sweep("concurrency=0", Arrival::Poisson, None).is_err());
        assert!(parse_sweep("speed=1", Arrival::Poisson, None).is_err());
    }

    #[test]
    fn cli_args_become_a_config() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let cli = Cli::try_parse_from([
            "wick",
            "--url",
            "http://h:9/v1",
            "--request-rate",
            "4",
            "--max-concurrency",
            "8",
            "--input-len",
            "64",
            "--output-len",
            "16",
            "--slo",
            "ttft=1s",
            "--gpu-hour-price",
            "2.10",
            "--gpus",
            "2",
            "--tokenizer",
            "none",
            "--no-ignore-eos",
            "--stream-fraction",
            "0.25",
        ])
        .unwrap();
        let c = cli.args.to_config().unwrap();
        assert_eq!(c.base_url(), "http://h:9");
        assert_eq!(
            c.load,
            LoadSpec::Open {
                rate: 4.0,
                poisson: true,
                max_concurrency: Some(8)
            }
        );
        assert_eq!(
            c.workload,
            WorkloadSpec::Synthetic {
                input_len: 64,
                output_len: 16,
                spread: 0.0
            }
        );
        assert_eq!(c.slo.ttft_ms, Some(1000.0));
        assert_eq!(
            c.cost,
            Some(CostSpec {
                gpu_hour_price: 2.1,
                gpus: 2.0
            })
        );
        assert_eq!(c.tokenizer, TokenizerSource::Approximate);
        assert!(!c.ignore_eos);
        assert_eq!(c.stream_fraction, 0.25);
        assert_eq!(
            Cli::try_parse_from(["wick"])
                .unwrap()
                .args
                .to_config()
                .unwrap()
                .stream_fraction,
            1.0
        );
        let over = Cli::try_parse_from(["wick", "--stream-fraction", "1.5"]).unwrap();
        assert!(over.args.to_config().is_err());
        let both =
            Cli::try_parse_from(["wick", "--concurrency", "2", "--request-rate", "1"]).unwrap();
        assert!(both.args.to_config().is_err());
    }
}

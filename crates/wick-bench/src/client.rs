//! The OpenAI-compatible HTTP client: model discovery, tokenize/detokenize (vLLM,
//! llama.cpp and llama-cpp-python dialects), `/metrics`, and one request, streamed or
//! whole, measured into a [`RequestRecord`].
//!
//! Invariants: [`Client::send`] never returns an error and never panics: whatever the
//! server does (error status, cut stream or body, garbage, silence) ends as a record
//! whose [`Outcome`] names the failure; it always returns by its deadline or on
//! cancellation. Whether a request is streamed is a pure function of the run's seed and
//! the request's index ([`stream_choice`]).

use std::time::{Duration, Instant};

use crate::error::{BenchError, Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use crate::cancel::CancelToken;
use crate::sse::{parse_chunk, Chunk, SseDecoder};
use crate::workload::{Prompt, WorkItem};

/// Why a request failed. `as_str` gives the stable name used in reports and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The server answered with a non-2xx status.
    Http(u16),
    /// The TCP connection could not be made.
    Connect,
    /// No first token before the time-to-first-token limit.
    FirstTokenTimeout,
    /// The request did not finish before the request timeout.
    Timeout,
    /// The stream ended or broke before `[DONE]`, or a whole response's body broke.
    DroppedStream,
    /// A `data:` payload (or a whole response) that is not valid JSON (or not an object),
    /// or a whole response without a choice.
    MalformedChunk,
    /// The server sent an error object inside the stream (or as a 2xx whole response).
    StreamError,
    /// Anything else reqwest reports (invalid URL, protocol error, ...).
    Other,
}

impl ErrorKind {
    /// Stable name: `http_429`, `dropped_stream`, ...
    pub fn as_str(&self) -> String {
        match self {
            ErrorKind::Http(code) => format!("http_{code}"),
            ErrorKind::Connect => "connect".into(),
            ErrorKind::FirstTokenTimeout => "first_token_timeout".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::DroppedStream => "dropped_stream".into(),
            ErrorKind::MalformedChunk => "malformed_chunk".into(),
            ErrorKind::StreamError => "stream_error".into(),
            ErrorKind::Other => "other".into(),
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Finished with `[DONE]` (or a finish reason before the stream closed).
    Ok,
    /// Failed; counted in the error rate.
    Failed {
        /// Kind.
        kind: ErrorKind,
        /// First words of the reason.
        message: String,
    },
    /// Stopped by Ctrl-C or the end of the run; neither success nor error.
    Cancelled,
}

/// The response header a wick replica names itself in.
pub const REPLICA_HEADER: &str = "x-wick-replica";

/// Measurements of one request. Times are seconds.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// Index in the workload.
    pub index: usize,
    /// Start, seconds since the run started.
    pub start_s: f64,
    /// How it ended.
    pub outcome: Outcome,
    /// Sent with `stream: true`.
    pub streamed: bool,
    /// Time to first (non-empty) token; `None` for a request that was not streamed (its
    /// tokens arrive all at once, at `e2e_s`).
    pub ttft_s: Option<f64>,
    /// Send to last byte.
    pub e2e_s: f64,
    /// Gaps between successive content chunks (none when not streamed).
    #[serde(skip)]
    pub itl_s: Vec<f64>,
    /// Prompt tokens: the server's usage when reported, else the workload's count.
    pub prompt_tokens: u64,
    /// Output tokens: the server's usage when reported, else content chunks (streamed)
    /// or words of the text (not streamed).
    pub output_tokens: u64,
    /// Whether the token counts came from the server's usage.
    pub usage_reported: bool,
    /// Output tokens requested.
    pub requested_output_tokens: u64,
    /// The replica that answered (its `x-wick-replica` header), when it names itself.
    pub replica: Option<String>,
}

impl RequestRecord {
    /// Time per output token after the first: `(e2e - ttft) / (output_tokens - 1)`.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft) / (self.output_tokens - 1) as f64)
    }

    /// True when the request succeeded.
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// The tokenize/detokenize dialects servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizeApi {
    /// vLLM, SGLang, wick: `POST /tokenize {"prompt"}`, `POST /detokenize` -> `prompt`.
    Vllm,
    /// llama.cpp's server: `POST /tokenize {"content"}`, `POST /detokenize` -> `content`.
    LlamaCpp,
    /// llama-cpp-python: `POST /extras/tokenize {"input"}`, `/extras/detokenize` -> `text`.
    Extras,
}

/// Request options shared by every request of a run.
#[derive(Debug, Clone)]
pub struct StreamOpts {
    /// Model name.
    pub model: String,
    /// Use `/v1/chat/completions` (else `/v1/completions`).
    pub chat: bool,
    /// Send `ignore_eos` and `min_tokens`.
    pub ignore_eos: bool,
    /// Sampling temperature.
    pub temperature: f64,
    /// `top_p`, sent when set.
    pub top_p: Option<f64>,
    /// Limit on the whole request.
    pub request_timeout: Duration,
    /// Limit on the first token (streamed requests only: a whole response's first token
    /// arrives with its last, under `request_timeout`).
    pub ttft_timeout: Option<Duration>,
    /// Share of requests sent streamed, 0..=1 (1: all).
    pub stream_fraction: f64,
    /// The run's seed: with the index, it decides which requests are streamed.
    pub seed: u64,
}

impl StreamOpts {
    /// Whether request `index` is streamed ([`stream_choice`]).
    pub fn streamed(&self, index: usize) -> bool {
        stream_choice(self.seed, index, self.stream_fraction)
    }
}

/// Whether request `index` of a run seeded `seed` is streamed, for a share `fraction` of
/// streamed requests: a uniform draw in [0, 1) from a hash of seed and index (the same
/// every run; independent of concurrency and timing) below `fraction`. A `fraction` of 1
/// or more streams every request, 0 or less (or NaN) none.
pub fn stream_choice(seed: u64, index: usize, fraction: f64) -> bool {
    // splitmix64 of the seed's stream of indices.
    let mut z = (seed ^ 0x5712_ea3f_0c4d_91b7)
        .wrapping_add((index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    u < fraction
}

/// An OpenAI-compatible endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// A client for `base` (no trailing slash, no `/v1`).
    pub fn new(base: &str, api_key: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.to_string(),
            api_key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => rb.bearer_auth(key),
            None => rb,
        }
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(BenchError::Endpoint(format!(
                "POST {}{path}: HTTP {status}: {text:.200}",
                self.base
            )));
        }
        resp.json()
            .await
            .with_context(|| format!("reading the JSON answer of {}{path}", self.base))
    }

    /// The first model of `GET /v1/models`.
    pub async fn first_model(&self) -> Result<String> {
        let resp = self
            .request(reqwest::Method::GET, "/v1/models")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("GET {}/v1/models", self.base))?
            .error_for_status()
            .with_context(|| format!("GET {}/v1/models", self.base))?;
        let v: Value = resp.json().await.context("reading /v1/models")?;
        v.get("data")
            .and_then(Value::as_array)
            .and_then(|d| d.first())
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BenchError::Endpoint("/v1/models lists no model; pass --model".into()))
    }

    /// Token ids of `text` by the server's tokenize endpoint in the `api` dialect.
    pub async fn tokenize(&self, api: TokenizeApi, model: &str, text: &str) -> Result<Vec<u32>> {
        let (path, body) = match api {
            TokenizeApi::Vllm => ("/tokenize", json!({"model": model, "prompt": text})),
            TokenizeApi::LlamaCpp => ("/tokenize", json!({"content": text, "add_special": true})),
            TokenizeApi::Extras => ("/extras/tokenize", json!({"model": model, "input": text})),
        };
        let v = self.post_json(path, &body).await?;
        let tokens = v
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| BenchError::Endpoint(format!("{path} answer has no `tokens` array")))?;
        tokens
            .iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| {
                        BenchError::Endpoint(format!("{path} returned a token that is not a u32"))
                    })
            })
            .collect()
    }

    /// Which tokenize dialect the server speaks: vLLM's (`/tokenize` with `prompt`),
    /// llama.cpp's (`/tokenize` with `content`) or llama-cpp-python's
    /// (`/extras/tokenize`); the first that answers with tokens.
    pub async fn probe_tokenize(&self, model: &str) -> Result<TokenizeApi> {
        let mut errors = Vec::new();
        for api in [
            TokenizeApi::Vllm,
            TokenizeApi::LlamaCpp,
            TokenizeApi::Extras,
        ] {
            match self.tokenize(api, model, "hello world").await {
                Ok(t) if !t.is_empty() => return Ok(api),
                Ok(_) => errors.push(format!("{api:?}: no tokens")),
                Err(e) => errors.push(format!("{api:?}: {}", e.chain())),
            }
        }
        Err(BenchError::Endpoint(format!(
            "no tokenize endpoint answered ({})",
            errors.join("; ")
        )))
    }

    /// Text of `tokens` by the server's detokenize endpoint in the `api` dialect.
    pub async fn detokenize(
        &self,
        api: TokenizeApi,
        model: &str,
        tokens: &[u32],
    ) -> Result<String> {
        let path = match api {
            TokenizeApi::Vllm | TokenizeApi::LlamaCpp => "/detokenize",
            TokenizeApi::Extras => "/extras/detokenize",
        };
        let v = self
            .post_json(path, &json!({"model": model, "tokens": tokens}))
            .await?;
        ["prompt", "content", "text"]
            .iter()
            .find_map(|k| v.get(*k).and_then(Value::as_str))
            .map(str::to_string)
            .ok_or_else(|| BenchError::Endpoint(format!("{path} answer has no text")))
    }

    /// The text of `GET /metrics`, or `None` when the server has none.
    pub async fn metrics_text(&self) -> Option<String> {
        let resp = self
            .request(reqwest::Method::GET, "/metrics")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.text().await.ok()
    }

    /// The JSON body of one request, streamed (with usage in the stream) or not.
    pub fn body(item: &WorkItem, opts: &StreamOpts, streamed: bool) -> Value {
        let mut body = json!({
            "model": opts.model,
            "max_tokens": item.output_len,
            "temperature": opts.temperature,
            "stream": streamed,
        });
        if let Some(p) = opts.top_p {
            body["top_p"] = json!(p);
        }
        if streamed {
            body["stream_options"] = json!({"include_usage": true});
        }
        match (&item.prompt, opts.chat) {
            (Prompt::Text(text), false) => body["prompt"] = json!(text),
            (Prompt::Text(text), true) => {
                body["messages"] = json!([{"role": "user", "content": text}])
            }
            (Prompt::Chat(messages), true) => body["messages"] = json!(messages),
            (Prompt::Chat(messages), false) => {
                let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                body["prompt"] = json!(text.join("\n"));
            }
        }
        if opts.ignore_eos {
            body["ignore_eos"] = json!(true);
            body["min_tokens"] = json!(item.output_len);
        }
        body
    }

    /// Sends one request, streamed or whole, and measures it. `run_start` is the run's
    /// time origin.
    pub async fn send(
        &self,
        index: usize,
        item: &WorkItem,
        opts: &StreamOpts,
        streamed: bool,
        run_start: Instant,
        cancel: &CancelToken,
    ) -> RequestRecord {
        let start = Instant::now();
        let mut rec = RequestRecord {
            index,
            start_s: start.duration_since(run_start).as_secs_f64(),
            outcome: Outcome::Ok,
            streamed,
            ttft_s: None,
            e2e_s: 0.0,
            itl_s: Vec::new(),
            prompt_tokens: item.prompt_tokens.unwrap_or(0) as u64,
            output_tokens: 0,
            usage_reported: false,
            requested_output_tokens: item.output_len as u64,
            replica: None,
        };
        let deadline = tokio::time::Instant::from_std(start + opts.request_timeout);
        let first_deadline = opts
            .ttft_timeout
            .map(|t| tokio::time::Instant::from_std(start + t))
            .filter(|d| *d < deadline && streamed);
        let outcome = tokio::select! {
            o = self.send_inner(item, opts, start, first_deadline, &mut rec) => o,
            _ = tokio::time::sleep_until(deadline) => failed(ErrorKind::Timeout, "request timeout"),
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        rec.outcome = outcome;
        rec.e2e_s = start.elapsed().as_secs_f64();
        rec
    }

    async fn send_inner(
        &self,
        item: &WorkItem,
        opts: &StreamOpts,
        start: Instant,
        first_deadline: Option<tokio::time::Instant>,
        rec: &mut RequestRecord,
    ) -> Outcome {
        let path = if opts.chat {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        let send = self
            .request(reqwest::Method::POST, path)
            .json(&Self::body(item, opts, rec.streamed))
            .send();
        let Some(sent) = until(first_deadline, send).await else {
            return failed(ErrorKind::FirstTokenTimeout, "no response headers in time");
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_connect() => return failed(ErrorKind::Connect, &e.to_string()),
            Err(e) if e.is_timeout() => return failed(ErrorKind::Timeout, &e.to_string()),
            Err(e) => return failed(ErrorKind::Other, &error_chain(&e)),
        };
        rec.replica = (resp.headers().get(REPLICA_HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return failed(ErrorKind::Http(status.as_u16()), &text);
        }
        if !rec.streamed {
            return whole(resp, rec).await;
        }
        let mut decoder = SseDecoder::default();
        let mut body = resp.bytes_stream();
        let mut last_token: Option<Instant> = None;
        let mut content_chunks = 0u64;
        let mut finished = false;
        loop {
            let limit = if rec.ttft_s.is_none() {
                first_deadline
            } else {
                None
            };
            let Some(next) = until(limit, body.next()).await else {
                return failed(ErrorKind::FirstTokenTimeout, "no first token in time");
            };
            let bytes = match next {
                Some(Ok(b)) => b,
                Some(Err(e)) => return failed(ErrorKind::DroppedStream, &error_chain(&e)),
                None => break,
            };
            for payload in decoder.push(&bytes) {
                match parse_chunk(&payload) {
                    Err(e) => return failed(ErrorKind::MalformedChunk, &e),
                    Ok(Chunk::Error(msg)) => return failed(ErrorKind::StreamError, &msg),
                    Ok(Chunk::Done) => {
                        finish_counts(rec, content_chunks);
                        return Outcome::Ok;
                    }
                    Ok(Chunk::Data {
                        text,
                        prompt_tokens,
                        completion_tokens,
                        finish_reason,
                    }) => {
                        let now = Instant::now();
                        if !text.is_empty() {
                            content_chunks += 1;
                            match last_token {
                                None => rec.ttft_s = Some((now - start).as_secs_f64()),
                                Some(prev) => rec.itl_s.push((now - prev).as_secs_f64()),
                            }
                            last_token = Some(now);
                        }
                        if let (Some(p), Some(c)) = (prompt_tokens, completion_tokens) {
                            rec.prompt_tokens = p;
                            rec.output_tokens = c;
                            rec.usage_reported = true;
                        }
                        finished |= finish_reason.is_some();
                    }
                }
            }
        }
        // The body closed without [DONE]: fine if the server had said it was finished.
        if finished && !decoder.has_partial() {
            finish_counts(rec, content_chunks);
            Outcome::Ok
        } else {
            failed(ErrorKind::DroppedStream, "stream closed before [DONE]")
        }
    }
}

/// Reads a whole (non-streamed) response into `rec`: usage, else the words of the text.
async fn whole(resp: reqwest::Response, rec: &mut RequestRecord) -> Outcome {
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return failed(ErrorKind::DroppedStream, &error_chain(&e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    match parse_chunk(&text) {
        Err(e) => failed(ErrorKind::MalformedChunk, &e),
        Ok(Chunk::Error(msg)) => failed(ErrorKind::StreamError, &msg),
        Ok(Chunk::Done) => failed(ErrorKind::MalformedChunk, "[DONE] instead of a response"),
        Ok(Chunk::Data {
            text,
            prompt_tokens,
            completion_tokens,
            finish_reason,
        }) => {
            if finish_reason.is_none() && text.is_empty() {
                return failed(ErrorKind::MalformedChunk, "a response without a choice");
            }
            if let (Some(p), Some(c)) = (prompt_tokens, completion_tokens) {
                rec.prompt_tokens = p;
                rec.output_tokens = c;
                rec.usage_reported = true;
            } else {
                rec.output_tokens = text.split_whitespace().count() as u64;
            }
            Outcome::Ok
        }
    }
}

fn finish_counts(rec: &mut RequestRecord, content_chunks: u64) {
    if !rec.usage_reported {
        rec.output_tokens = content_chunks;
    }
}

/// `fut`'s output, or `None` when `deadline` passes first.
async fn until<F: std::future::Future>(
    deadline: Option<tokio::time::Instant>,
    fut: F,
) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

fn failed(kind: ErrorKind, message: &str) -> Outcome {
    Outcome::Failed {
        kind,
        message: message.chars().take(200).collect(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_choice_is_seeded_and_streams_about_the_fraction() {
        let share = |seed, f| (0..10_000).filter(|&i| stream_choice(seed, i, f)).count();
        for f in [0.1, 0.5, 0.9] {
            let n = share(3, f) as f64 / 10_000.0;
            assert!((n - f).abs() < 0.02, "{n} for {f}");
        }
        assert_eq!((share(3, 0.0), share(3, 1.0)), (0, 10_000));
        assert_eq!(share(3, f64::NAN), 0);
        let pick = |seed| {
            (0..64)
                .map(|i| stream_choice(seed, i, 0.5))
                .collect::<Vec<_>>()
        };
        assert_eq!(pick(3), pick(3));
        assert_ne!(pick(3), pick(4));
    }
}

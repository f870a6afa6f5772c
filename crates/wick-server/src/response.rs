//! OpenAI's response shapes for chat and completions, whole or streamed as server-sent
//! events. A request's [`PromptRun`]s are read here: merged into one SSE stream (role
//! chunk, text deltas, a finish chunk per choice, a usage chunk when asked, `[DONE]`), or
//! collected into one JSON body.

use crate::error::ApiError;
use crate::generation::{ChoiceDelta, PromptRun, TokenOut};
use crate::state::{InFlight, Serving};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use wick_core::FinishReason;

/// Which API a response is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// /v1/chat/completions
    Chat,
    /// /v1/completions
    Completion,
}

/// Everything needed to shape one request's response.
pub struct Responder {
    /// Which API.
    pub endpoint: Endpoint,
    /// Response id.
    pub id: String,
    /// Unix time of the request.
    pub created: u64,
    /// Served model name.
    pub model: String,
    /// The model and its tokenizer.
    pub serving: Arc<Serving>,
    /// Whether to report logprobs.
    pub logprobs: bool,
    /// Alternatives per token.
    pub top_logprobs: usize,
    /// Text to put before each choice's completion (`echo`), by choice index.
    pub echo: Vec<String>,
    /// Number of choices.
    pub num_choices: usize,
}

/// Usage counts.
fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<TokenOut>,
    finish: Option<FinishReason>,
}

impl Responder {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.serving.fingerprint,
            "choices": choices,
        })
    }

    /// Logprobs of `tokens` in the endpoint's format; `offset` is the text offset of the
    /// first (completions' `text_offset`).
    fn logprobs(&self, tokens: &[TokenOut], offset: &mut usize) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let p = &self.serving.prompt;
        match self.endpoint {
            Endpoint::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .filter_map(|t| t.logprobs.as_ref().map(|lp| (t.id, lp)))
                    .map(|(id, lp)| {
                        let text = p.token_text(id);
                        let top: Vec<Value> = lp
                            .top
                            .iter()
                            .map(|&(tid, l)| {
                                let tt = p.token_text(tid);
                                json!({"token": tt, "logprob": l, "bytes": tt.as_bytes()})
                            })
                            .collect();
                        json!({"token": text, "logprob": lp.logprob, "bytes": text.as_bytes(), "top_logprobs": top})
                    })
                    .collect();
                json!({ "content": content })
            }
            Endpoint::Completion => {
                let (mut toks, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
                for t in tokens {
                    let Some(lp) = &t.logprobs else { continue };
                    let text = p.token_text(t.id);
                    offs.push(*offset);
                    *offset += text.len();
                    toks.push(text);
                    lps.push(lp.logprob);
                    let top: serde_json::Map<String, Value> = lp
                        .top
                        .iter()
                        .map(|&(tid, l)| (p.token_text(tid), json!(l)))
                        .collect();
                    tops.push(Value::Object(top));
                }
                json!({"tokens": toks, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
            }
        }
    }

    fn delta_choice(
        &self,
        index: usize,
        text: &str,
        logprobs: Value,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish = finish.map(|f| f.as_str());
        match self.endpoint {
            Endpoint::Chat => {
                let delta = if text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish})
            }
        }
    }

    /// Reads every run to the end and answers one JSON body.
    pub async fn collect(self, mut runs: Vec<PromptRun>) -> Result<Response, ApiError> {
        let mut choices: Vec<Collected> = (0..self.num_choices)
            .map(|_| Collected::default())
            .collect();
        for run in &mut runs {
            while let Some(delta) = run.next().await {
                let d = delta?;
                if let Some(c) = choices.get_mut(d.index) {
                    c.text.push_str(&d.text);
                    c.tokens.extend(d.tokens);
                    c.finish = d.finish_reason.or(c.finish);
                }
            }
        }
        let prompt_tokens: usize = runs.iter().map(|r| r.prompt_tokens()).sum();
        let completion_tokens: usize = runs.iter().map(|r| r.completion_tokens()).sum();
        let out: Vec<Value> = choices
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let echo = self.echo.get(i).map(String::as_str).unwrap_or("");
                let mut offset = echo.len();
                let logprobs = self.logprobs(&c.tokens, &mut offset);
                let finish = c.finish.unwrap_or(FinishReason::Stop).as_str();
                match self.endpoint {
                    Endpoint::Chat => json!({
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }),
                    Endpoint::Completion => json!({
                        "index": i,
                        "text": format!("{echo}{}", c.text),
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    }),
                }
            })
            .collect();
        let mut body = self.envelope(false, out);
        body["usage"] = usage(prompt_tokens, completion_tokens);
        Ok(axum::Json(body).into_response())
    }

    /// Streams the runs as server-sent events.
    pub fn stream(
        self,
        runs: Vec<PromptRun>,
        include_usage: bool,
        in_flight: InFlight,
    ) -> Response {
        let responder = Arc::new(self);
        let totals = Arc::new(std::sync::Mutex::new(Totals::default()));
        let prompt_tokens: usize = runs.iter().map(|r| r.prompt_tokens()).sum();
        let merged = stream::select_all(runs.into_iter().map(|run| {
            let totals = totals.clone();
            Box::pin(stream::unfold(Some(run), move |run| {
                let totals = totals.clone();
                async move {
                    let mut run = run?;
                    match run.next().await {
                        Some(item) => {
                            if let Ok(mut t) = totals.lock() {
                                t.set(run.first_index(), run.completion_tokens());
                            }
                            Some((item, Some(run)))
                        }
                        None => None,
                    }
                }
            }))
        }));
        let r = responder.clone();
        let head = stream::iter(r.opening_chunks());
        let r = responder.clone();
        let mut offsets = vec![0usize; responder.num_choices];
        for (i, e) in responder.echo.iter().enumerate() {
            if let Some(o) = offsets.get_mut(i) {
                *o = e.len();
            }
        }
        let body = merged.flat_map(move |item: Result<ChoiceDelta, ApiError>| {
            let events = match item {
                Ok(d) => r.delta_chunks(&d, &mut offsets),
                Err(e) => vec![e.body()],
            };
            stream::iter(events)
        });
        let r = responder.clone();
        let tail = stream::once(async move {
            let mut v = vec![];
            if include_usage {
                let completion = totals.lock().map(|t| t.sum()).unwrap_or(0);
                let mut u = r.envelope(true, vec![]);
                u["usage"] = usage(prompt_tokens, completion);
                v.push(u);
            }
            stream::iter(v)
        })
        .flatten();
        let events = head
            .chain(body)
            .chain(tail)
            .map(move |chunk| {
                let _ = &in_flight; // held until the stream ends or the client leaves
                Ok::<Event, Infallible>(Event::default().data(chunk.to_string()))
            })
            .chain(stream::once(async { Ok(Event::default().data("[DONE]")) }));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    /// Chat: a first chunk per choice with the role; completions with echo: the prompt.
    fn opening_chunks(&self) -> Vec<Value> {
        (0..self.num_choices)
            .filter_map(|i| match self.endpoint {
                Endpoint::Chat => Some(self.envelope(
                    true,
                    vec![json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})],
                )),
                Endpoint::Completion => {
                    let echo = self.echo.get(i).filter(|e| !e.is_empty())?;
                    Some(self.envelope(true, vec![self.delta_choice(i, echo, Value::Null, None)]))
                }
            })
            .collect()
    }

    /// A text delta (when there is text or logprobs) and, on the choice's end, a chunk
    /// with its finish reason.
    fn delta_chunks(&self, d: &ChoiceDelta, offsets: &mut [usize]) -> Vec<Value> {
        let mut out = vec![];
        let mut dummy = 0;
        let offset = offsets.get_mut(d.index).unwrap_or(&mut dummy);
        let logprobs = self.logprobs(&d.tokens, offset);
        if !d.text.is_empty() || !logprobs.is_null() {
            out.push(self.envelope(
                true,
                vec![self.delta_choice(d.index, &d.text, logprobs, None)],
            ));
        }
        if let Some(f) = d.finish_reason {
            out.push(self.envelope(
                true,
                vec![self.delta_choice(d.index, "", Value::Null, Some(f))],
            ));
        }
        out
    }
}

/// Completion tokens per run, summed for the usage chunk.
#[derive(Default)]
struct Totals(std::collections::HashMap<usize, usize>);

impl Totals {
    fn set(&mut self, key: usize, tokens: usize) {
        self.0.insert(key, tokens);
    }
    fn sum(&self) -> usize {
        self.0.values().sum()
    }
}

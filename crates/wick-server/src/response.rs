//! OpenAI's response shapes for chat and completions, whole or streamed as server-sent
//! events. A request's [`PromptRun`]s are read here: merged into one SSE stream (role
//! chunk, text deltas, a finish chunk per choice, a usage chunk when asked, `[DONE]`; an
//! error event instead ends the stream), or collected into one JSON body. The bodies are
//! the typed structs of [`crate::response_types`].

use crate::error::ApiError;
use crate::generation::{ChoiceDelta, PromptRun, TokenOut};
use crate::response_types::{
    AssistantMessage, ChatChoice, ChatDeltaChoice, ChatLogprobs, ChatTokenLogprob, Choice,
    CompletionLogprobs, Delta, FunctionCallBody, FunctionCallChunk, GenerationBody, Logprobs,
    TextChoice, ToolCallBody, ToolCallChunk, TopLogprob, Usage,
};
use crate::state::{InFlight, Serving};
use crate::tool_parser::{ToolCallDelta, ToolParser, ToolParserKind};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
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
    /// Chat: parse tool calls out of the output (the format and the most calls).
    pub tool_parser: Option<(ToolParserKind, Option<usize>)>,
}

/// `tool_calls` instead of `stop` when the choice made tool calls.
fn finish_with_calls(finish: FinishReason, calls: usize) -> &'static str {
    if calls > 0 && finish == FinishReason::Stop {
        "tool_calls"
    } else {
        finish.as_str()
    }
}

/// Streamed tool-call pieces in OpenAI's shape.
fn call_chunks(deltas: Vec<ToolCallDelta>) -> Vec<ToolCallChunk> {
    deltas
        .into_iter()
        .map(|d| ToolCallChunk {
            index: d.index,
            r#type: d.id.is_some().then_some("function"),
            id: d.id,
            function: FunctionCallChunk {
                name: d.name,
                arguments: d.arguments,
            },
        })
        .collect()
}

#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<TokenOut>,
    finish: Option<FinishReason>,
}

/// One SSE item of a streamed response.
enum Piece {
    /// A JSON chunk.
    Chunk(String),
    /// An error body; nothing follows it.
    Error(String),
    /// The last event: `[DONE]`.
    Done,
}

/// `value` as JSON text (our bodies always serialize; an impossible failure yields `{}`).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".into())
}

impl Responder {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    fn body(&self, chunk: bool, choices: Vec<Choice>, usage: Option<Usage>) -> GenerationBody<'_> {
        GenerationBody {
            id: &self.id,
            object: self.object(chunk),
            created: self.created,
            model: &self.model,
            system_fingerprint: &self.serving.fingerprint,
            choices,
            usage,
        }
    }

    fn chunk(&self, choices: Vec<Choice>, usage: Option<Usage>) -> Piece {
        Piece::Chunk(to_json(&self.body(true, choices, usage)))
    }

    /// Logprobs of `tokens` in the endpoint's format; `offset` is the text offset of the
    /// first (completions' `text_offset`).
    fn logprobs(&self, tokens: &[TokenOut], offset: &mut usize) -> Option<Logprobs> {
        if !self.logprobs {
            return None;
        }
        let p = &self.serving.prompt;
        let with_logprobs = tokens
            .iter()
            .filter_map(|t| t.logprobs.as_ref().map(|lp| (t.id, lp)));
        Some(match self.endpoint {
            Endpoint::Chat => Logprobs::Chat(ChatLogprobs {
                content: with_logprobs
                    .map(|(id, lp)| {
                        let token = p.token_text(id);
                        let top_logprobs = lp
                            .top
                            .iter()
                            .map(|&(tid, logprob)| {
                                let token = p.token_text(tid);
                                TopLogprob {
                                    bytes: token.as_bytes().to_vec(),
                                    token,
                                    logprob,
                                }
                            })
                            .collect();
                        ChatTokenLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob: lp.logprob,
                            top_logprobs,
                        }
                    })
                    .collect(),
            }),
            Endpoint::Completion => {
                let mut out = CompletionLogprobs::default();
                for (id, lp) in with_logprobs {
                    let text = p.token_text(id);
                    out.text_offset.push(*offset);
                    *offset += text.len();
                    out.tokens.push(text);
                    out.token_logprobs.push(lp.logprob);
                    out.top_logprobs.push(
                        lp.top
                            .iter()
                            .map(|&(tid, l)| (p.token_text(tid), serde_json::Value::from(l)))
                            .collect(),
                    );
                }
                Logprobs::Completion(out)
            }
        })
    }

    fn delta_choice(
        &self,
        index: usize,
        text: &str,
        logprobs: Option<Logprobs>,
        finish_reason: Option<&'static str>,
        tool_calls: Vec<ToolCallChunk>,
    ) -> Choice {
        match self.endpoint {
            Endpoint::Chat => Choice::ChatDelta(ChatDeltaChoice {
                index,
                delta: Delta {
                    role: None,
                    content: (!text.is_empty()).then(|| text.to_string()),
                    tool_calls,
                },
                logprobs,
                finish_reason,
            }),
            Endpoint::Completion => Choice::Text(TextChoice {
                index,
                text: text.to_string(),
                logprobs,
                finish_reason,
            }),
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
        let out: Vec<Choice> = choices
            .into_iter()
            .enumerate()
            .map(|(index, c)| {
                let echo = self.echo.get(index).map(String::as_str).unwrap_or("");
                let mut offset = echo.len();
                let logprobs = self.logprobs(&c.tokens, &mut offset);
                let finish = c.finish.unwrap_or(FinishReason::Stop);
                let finish_reason = finish.as_str();
                match self.endpoint {
                    Endpoint::Chat => {
                        let (content, calls) = match &self.tool_parser {
                            Some((kind, max)) => ToolParser::parse_all(kind.clone(), *max, &c.text),
                            None => (Some(c.text), vec![]),
                        };
                        let tool_calls: Vec<ToolCallBody> = calls
                            .into_iter()
                            .map(|t| ToolCallBody {
                                id: t.id,
                                r#type: "function",
                                function: FunctionCallBody {
                                    name: t.name,
                                    arguments: t.arguments,
                                },
                            })
                            .collect();
                        Choice::Chat(ChatChoice {
                            index,
                            message: AssistantMessage {
                                role: "assistant",
                                content: if tool_calls.is_empty() {
                                    Some(content.unwrap_or_default())
                                } else {
                                    content
                                },
                                tool_calls: tool_calls.clone(),
                            },
                            logprobs,
                            finish_reason: finish_with_calls(finish, tool_calls.len()),
                        })
                    }
                    Endpoint::Completion => Choice::Text(TextChoice {
                        index,
                        text: format!("{echo}{}", c.text),
                        logprobs,
                        finish_reason: Some(finish_reason),
                    }),
                }
            })
            .collect();
        let usage = Usage::new(prompt_tokens, completion_tokens);
        Ok(axum::Json(self.body(false, out, Some(usage))).into_response())
    }

    /// Streams the runs as server-sent events: the opening chunks, the deltas, a usage
    /// chunk when asked, `[DONE]`. An error (the request's or the engine's) is sent as
    /// an error event and ends the stream there, without `[DONE]`.
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
        let mut parsers: Vec<Option<ToolParser>> = (0..responder.num_choices)
            .map(|_| {
                let (kind, max) = responder.tool_parser.clone()?;
                (responder.endpoint == Endpoint::Chat).then(|| ToolParser::new(kind, max))
            })
            .collect();
        for (i, e) in responder.echo.iter().enumerate() {
            if let Some(o) = offsets.get_mut(i) {
                *o = e.len();
            }
        }
        let body = merged.flat_map(move |item: Result<ChoiceDelta, ApiError>| {
            let pieces = match item {
                Ok(d) => r.delta_chunks(&d, &mut offsets, &mut parsers),
                Err(e) => vec![Piece::Error(to_json(&e.body()))],
            };
            stream::iter(pieces)
        });
        let r = responder.clone();
        let tail = stream::once(async move {
            let completion = totals.lock().map(|t| t.sum()).unwrap_or(0);
            let usage = Usage::new(prompt_tokens, completion);
            let mut pieces = vec![];
            if include_usage {
                pieces.push(r.chunk(vec![], Some(usage)));
            }
            pieces.push(Piece::Done);
            stream::iter(pieces)
        })
        .flatten();
        // Everything after an error is dropped (the runs too, which aborts them).
        let mut failed = false;
        let events = head
            .chain(body)
            .chain(tail)
            .take_while(move |piece| {
                let go = !failed;
                failed |= matches!(piece, Piece::Error(_));
                std::future::ready(go)
            })
            .map(move |piece| {
                let _ = &in_flight; // held until the stream ends or the client leaves
                let data = match piece {
                    Piece::Chunk(data) | Piece::Error(data) => data,
                    Piece::Done => "[DONE]".into(),
                };
                Ok::<Event, Infallible>(Event::default().data(data))
            });
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    /// Chat: a first chunk per choice with the role; completions with echo: the prompt.
    fn opening_chunks(&self) -> Vec<Piece> {
        (0..self.num_choices)
            .filter_map(|index| match self.endpoint {
                Endpoint::Chat => Some(self.chunk(
                    vec![Choice::ChatDelta(ChatDeltaChoice {
                        index,
                        delta: Delta {
                            role: Some("assistant"),
                            content: Some(String::new()),
                            tool_calls: vec![],
                        },
                        logprobs: None,
                        finish_reason: None,
                    })],
                    None,
                )),
                Endpoint::Completion => {
                    let echo = self.echo.get(index).filter(|e| !e.is_empty())?;
                    let choice = self.delta_choice(index, echo, None, None, vec![]);
                    Some(self.chunk(vec![choice], None))
                }
            })
            .collect()
    }

    /// A delta (when there is text, a tool-call piece or logprobs) and, on the choice's
    /// end, a chunk with its finish reason. With a tool parser, the text goes through it
    /// first.
    fn delta_chunks(
        &self,
        d: &ChoiceDelta,
        offsets: &mut [usize],
        parsers: &mut [Option<ToolParser>],
    ) -> Vec<Piece> {
        let mut out = vec![];
        let mut dummy = 0;
        let offset = offsets.get_mut(d.index).unwrap_or(&mut dummy);
        let logprobs = self.logprobs(&d.tokens, offset);
        let parser = parsers.get_mut(d.index).and_then(Option::as_mut);
        let (text, calls, num_calls) = match parser {
            Some(p) => {
                let mut parsed = p.push(&d.text);
                if d.finish_reason.is_some() {
                    let rest = p.finish();
                    parsed.content.push_str(&rest.content);
                    parsed.tool_calls.extend(rest.tool_calls);
                }
                (parsed.content, call_chunks(parsed.tool_calls), p.calls())
            }
            None => (d.text.clone(), vec![], 0),
        };
        if !text.is_empty() || !calls.is_empty() || logprobs.is_some() {
            let choice = self.delta_choice(d.index, &text, logprobs, None, calls);
            out.push(self.chunk(vec![choice], None));
        }
        if let Some(f) = d.finish_reason {
            let reason = Some(finish_with_calls(f, num_calls));
            let choice = self.delta_choice(d.index, "", None, reason, vec![]);
            out.push(self.chunk(vec![choice], None));
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

//! POST /v1/chat/completions and /v1/completions: parse, validate, render and tokenize
//! (off the async runtime), submit one engine request per prompt, answer whole or as SSE.

use super::OpenAiJson;
use crate::compat::ToolChoice;
use crate::error::ApiError;
use crate::generation::PromptRun;
use crate::protocol::{
    flatten_messages, ChatCompletionRequest, CompletionRequest, PromptField, SamplingFields,
};
use crate::response::{Endpoint, Responder};
use crate::state::{AppState, InFlight, ModelChoice, Serving};
use crate::structured::{requested_constraint, tool_call_constraint, RequestedConstraint};
use crate::tool_parser::ToolParserKind;
use axum::extract::State;
use axum::response::Response;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use wick_core::WickError;
use wick_engine::{EngineRequest, LogitsProcessorFactory};

/// OpenAI's default for completions.
const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// A fresh random response id with `prefix`.
fn response_id(prefix: &str) -> String {
    let state = std::collections::hash_map::RandomState::new();
    let (mut a, mut b) = (state.build_hasher(), state.build_hasher());
    a.write_u8(1);
    b.write_u8(2);
    format!("{prefix}-{:016x}{:016x}", a.finish(), b.finish())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs CPU-heavy prompt work (templates, tokenization, grammars) off the async
/// runtime.
async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::from(WickError::internal(format!("prompt task: {e}"))))?
        .map_err(Into::into)
}

/// The processor factory of `constraint` (compiled off the runtime), if any.
async fn compile_constraint(
    serving: &Arc<Serving>,
    constraint: Option<RequestedConstraint>,
) -> Result<Option<Arc<dyn LogitsProcessorFactory>>, ApiError> {
    let Some(c) = constraint else {
        return Ok(None);
    };
    let s = serving.clone();
    Ok(Some(blocking(move || s.grammars.compile(&c)).await?))
}

/// The most tokens a prompt of `prompt_len` may still generate (chat's default
/// `max_tokens`); the engine's own context check decides, and words, the refusal.
fn remaining_context(serving: &Serving, prompt_len: usize) -> Result<usize, ApiError> {
    let info = serving.backend.info();
    info.check_context(prompt_len, 1)?;
    Ok(info.context_limit().saturating_sub(prompt_len))
}

/// A parsed request of either endpoint, ready to submit.
struct Prepared {
    endpoint: Endpoint,
    /// Token ids of each prompt.
    prompts: Vec<Vec<u32>>,
    /// Text put before each prompt's completions (`echo`); empty: none.
    echo: Vec<String>,
    /// `None`: the rest of the context.
    default_max_tokens: Option<usize>,
    logprobs: bool,
    top_logprobs: i64,
    /// The model (or LoRA adapter) it runs on.
    model: ModelChoice,
    /// Parse tool calls out of chat output: the format and the most calls.
    tool_parser: Option<(ToolParserKind, Option<usize>)>,
    /// Constrains every completion's output (structured output, forced tool calls).
    logits_processor: Option<Arc<dyn LogitsProcessorFactory>>,
}

/// Submits every prompt (any refusal drops, and so aborts, those already submitted) and
/// answers whole or streamed.
async fn respond(
    serving: Arc<Serving>,
    in_flight: InFlight,
    fields: &SamplingFields,
    p: Prepared,
) -> Result<Response, ApiError> {
    let stops = fields.stop_strings()?;
    let id = response_id(match p.endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    });
    let mut runs = Vec::with_capacity(p.prompts.len());
    let mut echo = vec![];
    let mut num_choices = 0;
    for (i, prompt) in p.prompts.into_iter().enumerate() {
        let default = match p.default_max_tokens {
            Some(n) => n,
            None => remaining_context(&serving, prompt.len())?,
        };
        let params = fields.to_params(default, p.logprobs, p.top_logprobs, &serving.defaults)?;
        let n = params.n;
        if let Some(text) = p.echo.get(i) {
            echo.extend(std::iter::repeat_n(text.clone(), n));
        }
        let request = EngineRequest {
            prompt_token_ids: prompt,
            params,
            lora: p.model.lora.clone(),
            logits_processor: p.logits_processor.clone(),
        };
        runs.push(PromptRun::submit(
            serving.clone(),
            &id,
            request,
            &stops,
            num_choices,
        )?);
        num_choices += n;
    }
    let responder = Responder {
        endpoint: p.endpoint,
        id,
        created: unix_now(),
        model: p.model.name.clone(),
        serving,
        logprobs: p.logprobs,
        top_logprobs: p.top_logprobs.max(0) as usize,
        echo,
        num_choices,
        tool_parser: p.tool_parser,
    };
    if fields.stream() {
        Ok(responder.stream(runs, fields.include_usage(), in_flight))
    } else {
        responder.collect(runs).await
    }
}

/// POST /v1/chat/completions.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let serving = state.serving()?;
    let model = state.resolve_model(req.sampling.model.as_deref(), &serving)?;
    let in_flight = state.track();
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = req.top_logprobs.unwrap_or(0);
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "needs `logprobs: true`",
        ));
    }
    crate::compat::check_other(&req.other)?;
    let tool_use = crate::compat::tool_use(&req)?;
    let max_calls = tool_use.max_calls;
    let (tool_parser, tool_constraint) = match &tool_use.choice {
        ToolChoice::None => (None, None),
        ToolChoice::Auto => match serving.tool_parser.clone() {
            Some(kind) => (Some((kind, max_calls)), None),
            // Explicitly asked for, but this server cannot parse calls: refused.
            None if req.tool_choice.is_some() => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "\"auto\" needs a tool-call parser: start wick with --tool-call-parser",
                ))
            }
            None => (None, None),
        },
        ToolChoice::Required => (
            Some((ToolParserKind::JsonArray, max_calls)),
            Some(tool_call_constraint(&tool_use.tools, None, max_calls)?),
        ),
        ToolChoice::Named(name) => (
            Some((ToolParserKind::Named(name.clone()), Some(1))),
            Some(tool_call_constraint(&tool_use.tools, Some(name), None)?),
        ),
    };
    let constraint = match (requested_constraint(&req.other)?, tool_constraint) {
        (Some(r), Some(_)) => {
            return Err(ApiError::invalid_param(
                &r.field,
                "cannot be combined with tool_choice \"required\" or a named function, \
                 which constrain the output themselves",
            ))
        }
        (r, t) => r.or(t),
    };
    let logits_processor = compile_constraint(&serving, constraint).await?;
    let messages = flatten_messages(&req.messages)?;
    let mut extra = req.chat_template_kwargs.clone().unwrap_or_default();
    if !tool_use.tools.is_empty() && !extra.contains_key("tools") {
        extra.insert("tools".into(), tool_use.tools.into());
    }
    let s = serving.clone();
    let prompt = blocking(move || s.prompt.encode_chat(&messages, extra)).await?;
    let prepared = Prepared {
        endpoint: Endpoint::Chat,
        prompts: vec![prompt],
        echo: vec![],
        default_max_tokens: None,
        logprobs,
        top_logprobs,
        model,
        tool_parser,
        logits_processor,
    };
    respond(serving, in_flight, &req.sampling, prepared).await
}

/// POST /v1/completions.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let serving = state.serving()?;
    let model = state.resolve_model(req.sampling.model.as_deref(), &serving)?;
    crate::compat::check_other(&req.other)?;
    let constraint = requested_constraint(&req.other)?;
    let logits_processor = compile_constraint(&serving, constraint).await?;
    let in_flight = state.track();
    let echo = req.echo.unwrap_or(false);
    let top_logprobs = req.logprobs.unwrap_or(0);
    let logprobs = req.logprobs.is_some();
    if echo && logprobs {
        return Err(ApiError::invalid_param(
            "echo",
            "echo with logprobs (prompt logprobs) is not supported",
        ));
    }
    let s = serving.clone();
    let prompt = req.prompt.clone();
    let prompts: Vec<(Vec<u32>, String)> = blocking(move || {
        let p = &s.prompt;
        let with_text = |ids: Vec<u32>| -> Result<(Vec<u32>, String), WickError> {
            let text = if echo {
                p.decode(&ids, false)?
            } else {
                String::new()
            };
            Ok((ids, text))
        };
        match prompt {
            PromptField::Text(t) => Ok(vec![(p.encode(&t, true)?, t)]),
            PromptField::Texts(ts) => ts
                .into_iter()
                .map(|t| Ok((p.encode(&t, true)?, t)))
                .collect(),
            PromptField::Ids(ids) => Ok(vec![with_text(ids)?]),
            PromptField::IdLists(lists) => lists.into_iter().map(with_text).collect(),
        }
    })
    .await?;
    if prompts.is_empty() {
        return Err(ApiError::invalid_param("prompt", "no prompt given"));
    }
    if prompts.iter().any(|(ids, _)| ids.is_empty()) {
        return Err(ApiError::invalid_param("prompt", "a prompt is empty"));
    }
    let (ids, texts): (Vec<Vec<u32>>, Vec<String>) = prompts.into_iter().unzip();
    let prepared = Prepared {
        endpoint: Endpoint::Completion,
        prompts: ids,
        echo: if echo { texts } else { vec![] },
        default_max_tokens: Some(DEFAULT_COMPLETION_MAX_TOKENS),
        logprobs,
        top_logprobs,
        model,
        tool_parser: None,
        logits_processor,
    };
    respond(serving, in_flight, &req.sampling, prepared).await
}

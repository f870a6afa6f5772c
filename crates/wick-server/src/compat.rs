//! API compatibility: which request fields wick applies, refuses or ignores. The rule:
//! a field that would change the output and that wick does not apply is a 400 naming it
//! (`param` set), never silence; a field that does not change the output
//! ([`IGNORED_FIELDS`]) is accepted; any other unknown field is accepted with a warning
//! in the log. The request structs of [`crate::protocol`] collect what they do not know
//! into `other`, and [`check_other`] judges it; [`tool_use`] judges chat's tool fields.

use crate::error::ApiError;
use crate::protocol::ChatCompletionRequest;
use serde_json::{Map, Value};

/// Fields accepted and ignored: they do not change the output.
pub const IGNORED_FIELDS: &[&str] = &[
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];

/// Fields refused whenever they are set (not `null`): they would change the output and
/// wick does not apply them.
pub const REFUSED_FIELDS: &[(&str, &str)] = &[
    ("audio", "audio output is not supported"),
    ("prediction", "predicted outputs are not supported"),
    ("suffix", "`suffix` (insertion) is not supported"),
    (
        "functions",
        "legacy `functions` are not supported; use `tools`",
    ),
    (
        "function_call",
        "legacy `function_call` is not supported; use `tool_choice`",
    ),
    ("web_search_options", "web search is not supported"),
];

/// Checks the fields a request struct did not know: refused ones are a 400, the rest
/// are accepted (unknown ones logged).
pub fn check_other(other: &Map<String, Value>) -> Result<(), ApiError> {
    let mut unknown = vec![];
    for (key, value) in other {
        if value.is_null() {
            continue;
        }
        if crate::structured::CONSTRAINT_FIELDS.contains(&key.as_str()) {
            continue; // judged by structured::requested_constraint
        }
        if let Some((name, why)) = REFUSED_FIELDS.iter().find(|(n, _)| n == key) {
            return Err(ApiError::invalid_param(name, why));
        }
        match key.as_str() {
            "modalities" => {
                if *value != serde_json::json!(["text"]) {
                    return Err(ApiError::invalid_param(
                        "modalities",
                        "only [\"text\"] is supported",
                    ));
                }
            }
            "best_of" => match value.as_i64() {
                Some(1) => {}
                _ => {
                    return Err(ApiError::invalid_param(
                        "best_of",
                        format!("{value} is not supported; only 1 is"),
                    ))
                }
            },
            k if IGNORED_FIELDS.contains(&k) => {}
            k => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(fields = %unknown.join(","), "unknown request fields ignored");
    }
    Ok(())
}

/// `tool_choice`, applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// No calls: the output is content (`none`, or no tools).
    #[default]
    None,
    /// The model may call tools; calls are parsed out of its output.
    Auto,
    /// The model must call one or more tools (constrained).
    Required,
    /// The model must call this function (constrained).
    Named(String),
}

/// How a chat request uses tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolUse {
    /// The tool definitions, for the chat template (`tools`); empty: none.
    pub tools: Vec<Value>,
    /// What `tool_choice` asks for.
    pub choice: ToolChoice,
    /// At most this many calls (`parallel_tool_calls: false`: 1).
    pub max_calls: Option<usize>,
}

/// Judges `tools`, `tool_choice` and `parallel_tool_calls`. `none` and `auto` (the
/// default with tools) leave the output free; `required` and a named function are
/// applied by constrained decoding (see [`crate::structured::tool_call_constraint`]).
pub fn tool_use(req: &ChatCompletionRequest) -> Result<ToolUse, ApiError> {
    let tools = match &req.tools {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(tools)) => tools.clone(),
        Some(_) => return Err(ApiError::invalid_param("tools", "must be a list")),
    };
    for (i, t) in tools.iter().enumerate() {
        let is_function = t.get("type").and_then(Value::as_str) == Some("function");
        let named = t
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !is_function || !named {
            return Err(ApiError::invalid_param(
                "tools",
                format!(
                    "tool {i} is not {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                ),
            ));
        }
    }
    let choice = match &req.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(v @ Value::Object(_)) => {
            let name = (v.get("type").and_then(Value::as_str) == Some("function"))
                .then(|| v.pointer("/function/name").and_then(Value::as_str))
                .flatten();
            let Some(name) = name else {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                ));
            };
            if tools.is_empty() {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "is only allowed when `tools` are given",
                ));
            }
            return Ok(ToolUse {
                choice: ToolChoice::Named(name.to_string()),
                max_calls: Some(1),
                tools,
            });
        }
        Some(v) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                format!("{v} is not none, auto, required or a function"),
            ))
        }
    };
    let choice = match choice {
        None if tools.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some("none") => ToolChoice::None,
        Some("auto" | "required") if tools.is_empty() => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "is only allowed when `tools` are given",
            ))
        }
        Some("auto") => ToolChoice::Auto,
        Some("required") => ToolChoice::Required,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                format!("{other:?} is not none, auto, required or a function"),
            ))
        }
    };
    let max_calls = match &req.parallel_tool_calls {
        None | Some(Value::Null) | Some(Value::Bool(true)) => None,
        Some(Value::Bool(false)) => Some(1),
        Some(_) => {
            return Err(ApiError::invalid_param(
                "parallel_tool_calls",
                "must be a boolean",
            ))
        }
    };
    Ok(ToolUse {
        tools,
        choice,
        max_calls,
    })
}

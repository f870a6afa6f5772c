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
    ("guided_json", "guided decoding is not supported yet"),
    ("guided_regex", "guided decoding is not supported yet"),
    ("guided_choice", "guided decoding is not supported yet"),
    ("guided_grammar", "guided decoding is not supported yet"),
    (
        "structured_outputs",
        "structured outputs are not supported yet",
    ),
];

/// Checks the fields a request struct did not know: refused ones are a 400, the rest
/// are accepted (unknown ones logged).
pub fn check_other(other: &Map<String, Value>) -> Result<(), ApiError> {
    let mut unknown = vec![];
    for (key, value) in other {
        if value.is_null() {
            continue;
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
            "response_format" => {
                let kind = value.get("type").and_then(Value::as_str);
                if kind != Some("text") {
                    return Err(ApiError::invalid_param(
                        "response_format",
                        format!(
                            "type {} is not supported yet; only \"text\" is",
                            kind.unwrap_or("(missing)")
                        ),
                    ));
                }
            }
            k if IGNORED_FIELDS.contains(&k) => {}
            k => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(fields = %unknown.join(","), "unknown request fields ignored");
    }
    Ok(())
}

/// How a chat request uses tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolUse {
    /// The tool definitions, for the chat template (`tools`); empty: none.
    pub tools: Vec<Value>,
    /// Whether to parse tool calls out of the output (`tool_choice` auto).
    pub parse: bool,
    /// At most this many calls (`parallel_tool_calls: false`: 1).
    pub max_calls: Option<usize>,
}

/// Judges `tools`, `tool_choice` and `parallel_tool_calls`: `tool_choice` `none` or
/// `auto` (the default with tools) are applied; `required` and a named function need
/// constrained decoding, which wick does not have yet, and are refused.
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
        Some(Value::Object(_)) => return Err(ApiError::invalid_param(
            "tool_choice",
            "a named function needs constrained decoding, which is not supported yet; use \"auto\"",
        )),
        Some(v) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                format!("{v} is not none, auto, required or a function"),
            ))
        }
    };
    let parse =
        match choice {
            None => !tools.is_empty(),
            Some("none") => false,
            Some("auto") if tools.is_empty() => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "is only allowed when `tools` are given",
                ))
            }
            Some("auto") => true,
            Some("required") => return Err(ApiError::invalid_param(
                "tool_choice",
                "\"required\" needs constrained decoding, which is not supported yet; use \"auto\"",
            )),
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
        parse,
        max_calls,
    })
}

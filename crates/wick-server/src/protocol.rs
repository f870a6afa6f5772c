//! OpenAI request bodies as we accept them. Fields a struct does not know are collected
//! in its `other` map and judged by [`crate::compat::check_other`] (refused when they
//! would change the output, else accepted); values are checked by
//! [`SamplingFields::to_params`] and the handlers, so a bad value is a 400 naming the
//! parameter (never serde's 422).

use crate::error::ApiError;
use serde::Deserialize;
use std::collections::HashMap;
use wick_core::SamplingParams;

/// Most stop strings a request may give (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// Sampling fields shared by chat and completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Served model name.
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<i64>,
    /// In [0, 2]; 0 is greedy.
    pub temperature: Option<f32>,
    /// In (0, 1].
    pub top_p: Option<f32>,
    /// 0 or -1 disables.
    pub top_k: Option<i64>,
    /// In [0, 1].
    pub min_p: Option<f32>,
    /// Completions per prompt.
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopField>,
    /// Token ids that stop generation.
    pub stop_token_ids: Option<Vec<u32>>,
    /// Seed.
    pub seed: Option<i64>,
    /// In [-2, 2].
    pub presence_penalty: Option<f32>,
    /// In [-2, 2].
    pub frequency_penalty: Option<f32>,
    /// > 0; 1 disables.
    pub repetition_penalty: Option<f32>,
    /// Token id (as a string) -> bias in [-100, 100].
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Stream as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Keep going past eos.
    pub ignore_eos: Option<bool>,
    /// Tokens before eos/stop may end generation.
    pub min_tokens: Option<i64>,
    /// End-user id (logged).
    pub user: Option<String>,
}

/// Sampling defaults from the model's generation_config.json, applied to what a request
/// leaves unset (never to what it sets), as vLLM's `--generation-config auto` does.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelDefaults {
    /// Default temperature.
    pub temperature: Option<f32>,
    /// Default top_p.
    pub top_p: Option<f32>,
    /// Default top_k (0: disabled).
    pub top_k: Option<usize>,
    /// Default repetition penalty.
    pub repetition_penalty: Option<f32>,
}

impl ModelDefaults {
    /// The defaults of `g`; a value a request could not set (out of its range) is left
    /// out with a warning, so that it never fails requests that do not mention it.
    pub fn from_generation_config(g: &wick_models::generation_config::GenerationConfig) -> Self {
        fn checked(name: &str, v: Option<f64>, ok: impl Fn(f64) -> bool) -> Option<f32> {
            let v = v?;
            if ok(v) {
                Some(v as f32)
            } else {
                tracing::warn!(
                    value = v,
                    "generation_config.json: {name} is out of range; ignored"
                );
                None
            }
        }
        Self {
            temperature: checked("temperature", g.temperature, |v| (0.0..=2.0).contains(&v)),
            top_p: checked("top_p", g.top_p, |v| v > 0.0 && v <= 1.0),
            // transformers and vLLM read 0 and negative values as "no top-k".
            top_k: g.top_k.map(|k| usize::try_from(k).unwrap_or(0)),
            repetition_penalty: checked("repetition_penalty", g.repetition_penalty, |v| {
                v > 0.0 && v.is_finite()
            }),
        }
    }

    /// Whether there is no default at all.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl SamplingFields {
    /// Whether to stream.
    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed response ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The stop strings, checked.
    pub fn stop_strings(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => vec![],
            Some(StopField::One(s)) => vec![s.clone()],
            Some(StopField::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "{} stop strings given; at most {MAX_STOP_STRINGS} are allowed",
                    stops.len()
                ),
            ));
        }
        Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
    }

    /// The sampling parameters, validated. `max_tokens` falls back to `default_max_tokens`
    /// (OpenAI: 16 for completions; the rest of the context for chat); `logprobs` and
    /// `top_logprobs` come from the endpoint's own fields.
    pub fn to_params(
        &self,
        default_max_tokens: usize,
        logprobs: bool,
        top_logprobs: i64,
        defaults: &ModelDefaults,
    ) -> Result<SamplingParams, ApiError> {
        let nonneg = |name: &str, v: i64| -> Result<usize, ApiError> {
            usize::try_from(v)
                .map_err(|_| ApiError::invalid_param(name, format!("{v} is negative")))
        };
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(v) if v < 1 => {
                let name = if self.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::invalid_param(name, format!("{v} is less than 1")));
            }
            Some(v) => nonneg("max_tokens", v)?,
            None => default_max_tokens,
        };
        let n = match self.n {
            Some(v) if v < 1 => {
                return Err(ApiError::invalid_param("n", format!("{v} is less than 1")))
            }
            Some(v) if v > 128 => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("{v} is more than 128"),
                ))
            }
            Some(v) => v as usize,
            None => 1,
        };
        let top_k = match self.top_k {
            Some(-1) | Some(0) => 0,
            Some(v) => nonneg("top_k", v)?,
            None => defaults.top_k.unwrap_or(0),
        };
        let mut logit_bias = HashMap::new();
        for (k, &v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::invalid_param("logit_bias", format!("key {k:?} is not a token id"))
            })?;
            logit_bias.insert(id, v);
        }
        let params = SamplingParams {
            temperature: self.temperature.or(defaults.temperature).unwrap_or(1.0),
            top_p: self.top_p.or(defaults.top_p).unwrap_or(1.0),
            top_k,
            min_p: self.min_p.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            repetition_penalty: self
                .repetition_penalty
                .or(defaults.repetition_penalty)
                .unwrap_or(1.0),
            logit_bias,
            seed: self.seed.map(|s| s as u64),
            logprobs,
            top_logprobs: nonneg("top_logprobs", top_logprobs)?,
            n,
            max_tokens,
            min_tokens: nonneg("min_tokens", self.min_tokens.unwrap_or(0))?,
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
        };
        params.validate()?;
        Ok(params)
    }
}

/// POST /v1/chat/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation: objects with `role` and `content` (a string, or text parts).
    pub messages: Vec<serde_json::Value>,
    /// Return logprobs of the chosen tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token (0..=20); needs `logprobs`.
    pub top_logprobs: Option<i64>,
    /// Extra variables for the chat template.
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Tool definitions (judged by [`crate::compat::tool_use`]).
    pub tools: Option<serde_json::Value>,
    /// `none`, `auto`, `required` or a named function.
    pub tool_choice: Option<serde_json::Value>,
    /// `false`: at most one tool call.
    pub parallel_tool_calls: Option<serde_json::Value>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Everything else (judged by [`crate::compat::check_other`]).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// `prompt` of /v1/completions: text or token ids, one or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// One text prompt.
    Text(String),
    /// Several text prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Ids(Vec<u32>),
    /// Several prompts as token ids.
    IdLists(Vec<Vec<u32>>),
}

/// POST /v1/completions.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt(s).
    pub prompt: PromptField,
    /// Prepend the prompt to the completion text.
    pub echo: Option<bool>,
    /// Number of alternatives per token to return (0..=20); present means "return
    /// logprobs".
    pub logprobs: Option<i64>,
    /// Sampling fields.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Everything else (judged by [`crate::compat::check_other`]).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// POST /tokenize: text, or chat messages.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// Served model name.
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// Or a chat to render and tokenize.
    pub messages: Option<Vec<serde_json::Value>>,
    /// Prepend bos when the model wants one (text only; default true).
    pub add_special_tokens: Option<bool>,
}

/// POST /detokenize.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Served model name.
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<u32>,
}

/// Turns OpenAI chat messages into what a chat template expects: every `content` a
/// string (text parts joined; other part types are refused), other fields kept
/// (`tool_calls`, `tool_call_id`, `name`); a tool call's `arguments` string is parsed to
/// the object templates expect (vLLM does the same).
pub fn flatten_messages(
    messages: &[serde_json::Value],
) -> Result<Vec<serde_json::Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param("messages", "must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m.as_object().ok_or_else(|| {
                ApiError::invalid_param("messages", format!("message {i} is not an object"))
            })?;
            if !obj.get("role").is_some_and(|r| r.is_string()) {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("message {i} has no string `role`"),
                ));
            }
            let mut out = obj.clone();
            let content = match obj.get("content") {
                None | Some(serde_json::Value::Null) => String::new(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.get("type").and_then(|t| t.as_str()), part.get("text")) {
                            (Some("text"), Some(serde_json::Value::String(t))) => text.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    "messages",
                                    format!(
                                        "message {i}: content parts of type {} are not supported; only text is",
                                        kind.unwrap_or("(missing)")
                                    ),
                                ))
                            }
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!("message {i}: `content` must be a string or a list of parts"),
                    ))
                }
            };
            out.insert("content".into(), content.into());
            if let Some(serde_json::Value::Array(calls)) = out.get_mut("tool_calls") {
                for call in calls.iter_mut() {
                    let Some(f) = call.get_mut("function") else {
                        continue;
                    };
                    let parsed = f
                        .get("arguments")
                        .and_then(|a| a.as_str())
                        .and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok());
                    if let (Some(args), Some(f)) = (parsed.filter(|a| a.is_object()), f.as_object_mut()) {
                        f.insert("arguments".into(), args);
                    }
                }
            }
            Ok(serde_json::Value::Object(out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_models::generation_config::GenerationConfig;

    fn params(body: serde_json::Value, defaults: &ModelDefaults) -> SamplingParams {
        let fields: SamplingFields = serde_json::from_value(body).unwrap();
        fields.to_params(16, false, 0, defaults).unwrap()
    }

    #[test]
    fn model_defaults_fill_only_what_the_request_leaves_unset() {
        let defaults = ModelDefaults::from_generation_config(&GenerationConfig {
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            repetition_penalty: Some(1.1),
            eos_token_ids: vec![2],
        });
        let p = params(serde_json::json!({}), &defaults);
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.repetition_penalty),
            (0.7, 0.9, 40, 1.1)
        );
        let p = params(
            serde_json::json!({"temperature": 0, "top_p": 1, "top_k": -1,
                "repetition_penalty": 1}),
            &defaults,
        );
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.repetition_penalty),
            (0.0, 1.0, 0, 1.0)
        );
        // Without defaults: OpenAI's.
        let p = params(serde_json::json!({}), &ModelDefaults::default());
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.repetition_penalty),
            (1.0, 1.0, 0, 1.0)
        );
    }

    #[test]
    fn out_of_range_model_defaults_are_dropped() {
        let d = ModelDefaults::from_generation_config(&GenerationConfig {
            temperature: Some(3.0),
            top_p: Some(0.0),
            top_k: Some(-1),
            repetition_penalty: Some(0.0),
            eos_token_ids: vec![],
        });
        assert_eq!(
            d,
            ModelDefaults {
                top_k: Some(0),
                ..ModelDefaults::default()
            }
        );
        assert!(ModelDefaults::from_generation_config(&GenerationConfig::default()).is_empty());
    }
}

//! Structured output: what a request asks its output to match (`response_format`, vLLM's
//! `structured_outputs` and older `guided_*` fields, or a forced `tool_choice`) becomes
//! a grammar, compiled once per request by llguidance. Each completion then gets a
//! [`GrammarProcessor`] on the engine's logits-processor hook: every step it hands the
//! sampler the grammar's token mask (computed while the forward pass runs), after each
//! token it names the tokens the grammar forces next, and it ends the sequence when the
//! grammar is complete.
//!
//! The token trie (every token's bytes) is built once per model, on first use, from the
//! tokenizer's own JSON; llguidance's tokenizers glue crate pins another `tokenizers`
//! version than ours, so it is not used.

use crate::error::ApiError;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokenizers::Tokenizer;
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use wick_core::WickError;
use wick_engine::{LogitsProcessor, LogitsProcessorFactory, SamplingConstraint, TokenBitset};

/// Request fields that ask for a constrained output (read by [`requested_constraint`];
/// [`crate::compat::check_other`] leaves them alone).
pub const CONSTRAINT_FIELDS: &[&str] = &[
    "response_format",
    "structured_outputs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_whitespace_pattern",
    "guided_decoding_backend",
];

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputConstraint {
    /// A JSON value valid against this JSON schema (`{"type": "object"}`: any object).
    JsonSchema(Value),
    /// A whole match of this regular expression.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A sentence of this Lark grammar (llguidance's dialect).
    Lark(String),
}

/// A constraint and the request field it came from (named in errors).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedConstraint {
    /// The field, e.g. `response_format` or `structured_outputs.regex`.
    pub field: String,
    /// What the output must match.
    pub constraint: OutputConstraint,
}

impl RequestedConstraint {
    fn new(field: impl Into<String>, constraint: OutputConstraint) -> Self {
        Self {
            field: field.into(),
            constraint,
        }
    }
}

/// The output constraint a request's fields ask for (`None`: free text). At most one
/// of `response_format`, `structured_outputs` and the `guided_*` fields may constrain.
pub fn requested_constraint(
    other: &Map<String, Value>,
) -> Result<Option<RequestedConstraint>, ApiError> {
    let set = |k: &str| other.get(k).filter(|v| !v.is_null());
    if let Some(v) = set("guided_whitespace_pattern") {
        return Err(ApiError::invalid_param(
            "guided_whitespace_pattern",
            format!("{v} is not supported: JSON is written with single spaces after , and :"),
        ));
    }
    let mut found = vec![];
    if let Some(v) = set("response_format") {
        found.extend(response_format(v)?);
    }
    if let Some(v) = set("structured_outputs") {
        found.push(structured_outputs(v)?);
    }
    for key in [
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
    ] {
        if let Some(v) = set(key) {
            found.push(guided(key, v)?);
        }
    }
    if found.len() > 1 {
        let fields: Vec<&str> = found.iter().map(|c| c.field.as_str()).collect();
        return Err(ApiError::invalid_param(
            &found[1].field,
            format!(
                "only one output constraint may be given; got {}",
                fields.join(", ")
            ),
        ));
    }
    Ok(found.pop())
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> Result<Option<RequestedConstraint>, ApiError> {
    let field = "response_format";
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(RequestedConstraint::new(
            field,
            OutputConstraint::JsonSchema(json!({"type": "object"})),
        ))),
        Some("json_schema") => {
            let Some(spec) = v.get("json_schema").filter(|s| s.is_object()) else {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema",
                    "must be an object {\"name\", \"schema\", \"strict\"}",
                ));
            };
            let schema = match spec.get("schema") {
                None | Some(Value::Null) => json!({"type": "object"}),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid_param(
                        "response_format.json_schema.schema",
                        "must be a JSON schema object",
                    ))
                }
            };
            Ok(Some(RequestedConstraint::new(
                "response_format.json_schema.schema",
                OutputConstraint::JsonSchema(schema),
            )))
        }
        _ => Err(ApiError::invalid_param(
            "response_format.type",
            format!(
                "{} is not one of \"text\", \"json_object\", \"json_schema\"",
                v.get("type").unwrap_or(&Value::Null)
            ),
        )),
    }
}

/// vLLM's `structured_outputs`: exactly one of `json`, `regex`, `choice`, `grammar`,
/// `json_object`.
fn structured_outputs(v: &Value) -> Result<RequestedConstraint, ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::invalid_param(
            "structured_outputs",
            "must be an object",
        ));
    };
    let mut found = vec![];
    for (key, value) in obj.iter().filter(|(_, v)| !v.is_null()) {
        let field = format!("structured_outputs.{key}");
        match key.as_str() {
            "json" => found.push(RequestedConstraint::new(
                &field,
                json_schema(&field, value)?,
            )),
            "regex" => found.push(RequestedConstraint::new(
                &field,
                OutputConstraint::Regex(string(&field, value)?),
            )),
            "choice" => found.push(RequestedConstraint::new(&field, choice(&field, value)?)),
            "grammar" => found.push(RequestedConstraint::new(
                &field,
                OutputConstraint::Lark(string(&field, value)?),
            )),
            "json_object" => match value {
                Value::Bool(true) => found.push(RequestedConstraint::new(
                    &field,
                    OutputConstraint::JsonSchema(json!({"type": "object"})),
                )),
                Value::Bool(false) => {}
                _ => return Err(ApiError::invalid_param(&field, "must be a boolean")),
            },
            // Which engine applies it: there is one.
            "backend" => {}
            _ => {
                return Err(ApiError::invalid_param(
                    &field,
                    "is not supported (supported: json, regex, choice, grammar, json_object)",
                ))
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(ApiError::invalid_param(
            "structured_outputs",
            "needs one of json, regex, choice, grammar, json_object",
        )),
        _ => Err(ApiError::invalid_param(
            "structured_outputs",
            "only one of json, regex, choice, grammar, json_object may be given",
        )),
    }
}

/// vLLM's older `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`.
fn guided(key: &str, v: &Value) -> Result<RequestedConstraint, ApiError> {
    let constraint = match key {
        "guided_json" => json_schema(key, v)?,
        "guided_regex" => OutputConstraint::Regex(string(key, v)?),
        "guided_choice" => choice(key, v)?,
        _ => OutputConstraint::Lark(string(key, v)?),
    };
    Ok(RequestedConstraint::new(key, constraint))
}

/// A JSON schema given as an object or as its JSON text.
fn json_schema(field: &str, v: &Value) -> Result<OutputConstraint, ApiError> {
    let schema = match v {
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::invalid_param(field, format!("is not JSON: {e}")))?,
        v => v.clone(),
    };
    if !(schema.is_object() || schema.is_boolean()) {
        return Err(ApiError::invalid_param(
            field,
            "must be a JSON schema object",
        ));
    }
    Ok(OutputConstraint::JsonSchema(schema))
}

fn string(field: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| ApiError::invalid_param(field, "must be a string"))
}

fn choice(field: &str, v: &Value) -> Result<OutputConstraint, ApiError> {
    let choices: Option<Vec<String>> = v
        .as_array()
        .and_then(|a| a.iter().map(|c| c.as_str().map(str::to_string)).collect());
    match choices {
        Some(c) if !c.is_empty() => Ok(OutputConstraint::Choice(c)),
        _ => Err(ApiError::invalid_param(
            field,
            "must be a non-empty list of strings",
        )),
    }
}

/// A function tool's name.
fn name_of(tool: &Value) -> Option<&str> {
    tool.pointer("/function/name").and_then(Value::as_str)
}

/// The constraint of a forced tool choice, over `tools` (OpenAI function tools):
/// `named` makes the output that function's arguments object; otherwise
/// (`tool_choice: "required"`) a JSON array of one or more (at most `max_calls`)
/// `{"name": .., "parameters": {..}}` calls of the given tools.
pub fn tool_call_constraint(
    tools: &[Value],
    named: Option<&str>,
    max_calls: Option<usize>,
) -> Result<RequestedConstraint, ApiError> {
    let parameters = |tool: &Value| -> Value {
        match tool.pointer("/function/parameters") {
            Some(p) if p.is_object() => p.clone(),
            _ => json!({"type": "object", "properties": {}}),
        }
    };
    if let Some(name) = named {
        let Some(tool) = tools.iter().find(|t| name_of(t) == Some(name)) else {
            return Err(ApiError::invalid_param(
                "tool_choice",
                format!("function {name:?} is not among `tools`"),
            ));
        };
        return Ok(RequestedConstraint::new(
            "tools",
            OutputConstraint::JsonSchema(parameters(tool)),
        ));
    }
    let calls: Vec<Value> = tools
        .iter()
        .filter_map(|t| {
            Some(json!({
                "type": "object",
                "properties": {
                    "name": {"const": name_of(t)?},
                    "parameters": parameters(t),
                },
                "required": ["name", "parameters"],
                "additionalProperties": false,
            }))
        })
        .collect();
    let mut schema = json!({"type": "array", "minItems": 1, "items": {"anyOf": calls}});
    if let Some(max) = max_calls {
        schema["maxItems"] = max.into();
    }
    Ok(RequestedConstraint::new(
        "tools",
        OutputConstraint::JsonSchema(schema),
    ))
}

impl OutputConstraint {
    /// The llguidance grammar.
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(schema) => TopLevelGrammar::from_json_schema(with_layout(schema)),
            Self::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Self::Choice(choices) => {
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).unwrap_or_default())
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Self::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

/// The schema with a fixed JSON layout (one space after `,` and `:`, no other
/// whitespace) unless it sets its own (`x-guidance`): free whitespace lets a sampled
/// model wander into endless newlines instead of closing the value.
fn with_layout(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(
            || json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// One model's grammar compiler: its token trie and llguidance's parser factory, built
/// on first use.
pub struct Grammars {
    tokenizer: Tokenizer,
    vocab_size: usize,
    eos_token_ids: Vec<u32>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab_size", &self.vocab_size)
            .field("built", &self.factory.get().is_some())
            .finish()
    }
}

impl Grammars {
    /// The compiler for a model with `tokenizer`, `vocab_size` logits per row and
    /// `eos_token_ids`; nothing is built until the first grammar.
    pub fn new(tokenizer: Tokenizer, vocab_size: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            tokenizer,
            vocab_size,
            eos_token_ids,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&ParserFactory, WickError> {
        let built = self.factory.get_or_init(|| {
            let start = Instant::now();
            let env = token_env(&self.tokenizer, self.vocab_size, &self.eos_token_ids)
                .map_err(|e| format!("cannot build the token trie: {e}"))?;
            let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
            factory.quiet();
            tracing::info!(
                vocab = self.vocab_size,
                ms = start.elapsed().as_millis() as u64,
                "grammar compiler ready"
            );
            Ok(factory)
        });
        built.as_ref().map_err(|e| {
            WickError::new(
                wick_core::ErrorKind::InvalidRequest,
                format!("structured output is unavailable for this model: {e}"),
            )
        })
    }

    /// Compiles `requested` (a 400 naming its field if llguidance refuses it, e.g. a
    /// JSON schema keyword it does not support) into the factory of one processor per
    /// completion.
    pub fn compile(
        &self,
        requested: &RequestedConstraint,
    ) -> Result<Arc<dyn LogitsProcessorFactory>, ApiError> {
        let factory = self.factory()?;
        let parser = factory
            .create_parser(requested.constraint.grammar())
            .map_err(|e| ApiError::invalid_param(&requested.field, format!("{e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ApiError::invalid_param(&requested.field, e));
        }
        let template = Mutex::new(matcher);
        let eos = self.eos_token_ids.clone();
        let vocab_size = self.vocab_size;
        let make = move |_index: usize, _prompt: &[u32]| {
            let matcher = template
                .lock()
                .map_err(|_| WickError::internal("grammar template poisoned"))?
                .deep_clone();
            let processor: Box<dyn LogitsProcessor> = Box::new(GrammarProcessor {
                matcher,
                eos: eos.clone(),
                vocab_size,
                dead: None,
            });
            Ok(processor)
        };
        Ok(Arc::new(make))
    }
}

/// The token environment llguidance works in: every token's bytes (special tokens
/// marked as llguidance expects) and the tokenizer, for forced text.
fn token_env(tokenizer: &Tokenizer, vocab_size: usize, eos: &[u32]) -> anyhow::Result<TokEnv> {
    let json: Value =
        serde_json::from_str(&tokenizer.to_string(false).map_err(anyhow::Error::msg)?)?;
    let byte_level = tokenizer_is_byte_level(&json);
    let mut words = llguidance::token_bytes_from_tokenizer_json(&json)?;
    words.resize(words.len().max(vocab_size), vec![]);
    let first_eos = eos.first().copied().unwrap_or(0);
    let info = TokRxInfo::new(words.len() as u32, first_eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
    Ok(Arc::new(WickTokEnv {
        trie,
        tokenizer: tokenizer.clone(),
        canonical: byte_level,
    }))
}

/// Byte-level BPE tokenizers encode any text the same wherever it sits; sentencepiece
/// ones (a prefix space, byte fallback) may not, so forced text is not tokenized with
/// them.
fn tokenizer_is_byte_level(json: &Value) -> bool {
    json.pointer("/decoder/type").and_then(Value::as_str) == Some("ByteLevel")
}

struct WickTokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
    canonical: bool,
}

impl TokenizerEnv for WickTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        let encoded = std::str::from_utf8(s)
            .ok()
            .and_then(|text| self.tokenizer.encode_fast(text, false).ok());
        match encoded {
            Some(e) => e.get_ids().to_vec(),
            None => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        self.canonical
    }
}

/// One completion's grammar state on the engine's logits-processor hook.
pub struct GrammarProcessor {
    matcher: Matcher,
    eos: Vec<u32>,
    vocab_size: usize,
    /// Why the grammar cannot continue (it then allows only eos), once it cannot.
    dead: Option<String>,
}

impl GrammarProcessor {
    fn only_eos(&mut self, why: String) -> SamplingConstraint {
        tracing::warn!(reason = %why, "grammar cannot continue; ending the sequence");
        self.dead = Some(why);
        SamplingConstraint {
            allowed: Some(TokenBitset::from_tokens(
                self.vocab_size,
                self.eos.iter().copied(),
            )),
            bias: vec![],
        }
    }
}

impl LogitsProcessor for GrammarProcessor {
    fn constraint(&mut self, _generated: &[u32]) -> SamplingConstraint {
        match self.matcher.compute_mask_or_eos() {
            Ok(mask) if mask.is_zero() => self.only_eos("the grammar allows no token".into()),
            Ok(mask) => SamplingConstraint {
                allowed: Some(TokenBitset::from_words(mask.as_slice().to_vec())),
                bias: vec![],
            },
            Err(e) => self.only_eos(format!("grammar error: {e}")),
        }
    }

    fn accept(&mut self, token: u32) {
        if let Err(e) = self.matcher.consume_token(token) {
            self.dead
                .get_or_insert_with(|| format!("grammar refused token {token}: {e}"));
        }
    }

    fn forced(&mut self) -> Vec<u32> {
        if self.matcher.is_stopped() {
            return vec![];
        }
        self.matcher.consume_ff_tokens()
    }

    fn ended(&self) -> Option<String> {
        if let Some(why) = &self.dead {
            return Some(why.clone());
        }
        self.matcher
            .is_stopped()
            .then(|| format!("grammar complete ({:?})", self.matcher.stop_reason()))
    }
}

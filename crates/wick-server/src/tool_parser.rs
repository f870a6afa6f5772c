//! Tool calls parsed out of a model's text, incrementally: text pieces go in as the
//! detokenizer releases them, content deltas and tool-call deltas come out.
//!
//! `tool_choice: "auto"` has two formats: `hermes` (Qwen2.5/Qwen3: `<tool_call>{"name":
//! .., "arguments": {..}}</tool_call>`, several allowed, text around them is content) and
//! `llama3_json` (the whole output is `{"name": .., "parameters"|"arguments": {..}}`,
//! optionally after `<|python_tag|>`). There a call is reported once it is complete (its
//! closing tag, or the end of the output), as a delta with id and name and then its
//! arguments (a JSON string); anything malformed is given back as content, never a panic;
//! whitespace-only content next to tool calls is dropped.
//!
//! Grammar-constrained output has two more kinds, which stream: `JsonArray`
//! (`tool_choice: "required"`: `[{"name": .., "parameters": {..}}, ..]`) and `Named`
//! (a named tool choice: the output is the arguments object alone). A call is reported
//! as soon as its name is known, then its arguments as they arrive (see
//! [`ToolParserKind`]); they never give content, and never panic on any text.
//!
//! Invariant of all kinds: markup never reaches content, and feeding a text whole or
//! split anywhere gives the same content and calls.

use std::hash::{BuildHasher, Hasher};

use json::{JsonState, Sink};

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// `--tool-call-parser`: how tool calls are read from model output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallParserArg {
    /// hermes when the chat template mentions `<tool_call>`, else none.
    #[default]
    Auto,
    /// `<tool_call>{...}</tool_call>` (Qwen2.5, Qwen3, Hermes).
    Hermes,
    /// The whole output is one JSON call (Llama 3.1+).
    #[value(name = "llama3_json")]
    Llama3Json,
    /// Never parse tool calls: output is content.
    None,
}

impl ToolCallParserArg {
    /// The parser to use with a chat template of source `template` (for `auto`).
    pub fn resolve(self, template: Option<&str>) -> Option<ToolParserKind> {
        match self {
            Self::Auto => template
                .is_some_and(|t| t.contains(HERMES_OPEN))
                .then_some(ToolParserKind::Hermes),
            Self::Hermes => Some(ToolParserKind::Hermes),
            Self::Llama3Json => Some(ToolParserKind::Llama3Json),
            Self::None => None,
        }
    }
}

/// A tool-call output format.
///
/// For the streaming kinds (`JsonArray`, `Named`) a call's `arguments` is the JSON text
/// of its arguments value as the model wrote it, less the whitespace outside strings
/// (strings, escapes, key order and numbers untouched): `{ "a" : [1, 2] }` gives
/// `{"a":[1,2]}`, whether the output is fed whole or in pieces. A call whose name was
/// read but whose arguments never started (cut short, or no `parameters` key) gets `{}`;
/// one cut inside its arguments keeps the text so far, which is then not valid JSON (the
/// finish reason says `length`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolParserKind {
    /// `<tool_call>{...}</tool_call>`.
    Hermes,
    /// One JSON object, optionally after `<|python_tag|>`.
    Llama3Json,
    /// `tool_choice: "required"`: `[{"name": "f", "parameters": {..}}, ..]`. A call is
    /// reported when its `"name"` string is complete, then its `parameters` (or
    /// `arguments`) value streams. Leniently: keys in any order (arguments read before
    /// the name are held until it comes), other keys and non-object elements skipped, a
    /// bare object without the array read as one call, text outside the array ignored,
    /// an object without a non-empty string name dropped.
    JsonArray,
    /// A named tool choice: the whole output is the arguments of this function, reported
    /// with the first non-whitespace text; text after the value is ignored.
    Named(String),
}

/// A piece of one tool call: the first carries `id` and `name`, later ones argument
/// text; concatenating the `arguments` of a call gives its JSON arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// The call's position among the choice's calls.
    pub index: usize,
    /// `call_<random>`, on the first piece.
    pub id: Option<String>,
    /// The function name, on the first piece.
    pub name: Option<String>,
    /// A fragment of the arguments (JSON text).
    pub arguments: String,
}

/// What one piece of text turned into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedDelta {
    /// New content.
    pub content: String,
    /// New tool-call pieces.
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A complete tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// `call_<random>`.
    pub id: String,
    /// Function name.
    pub name: String,
    /// Arguments, as a JSON string.
    pub arguments: String,
}

/// The incremental parser of one choice.
#[derive(Debug)]
pub struct ToolParser {
    kind: ToolParserKind,
    /// Text not yet decided on.
    buf: String,
    /// Inside `<tool_call>` (hermes) / buffering a JSON call (llama3_json).
    in_call: bool,
    /// llama3_json: the output was judged plain content.
    plain: bool,
    /// Whitespace content held until we know whether a call follows.
    pending_ws: String,
    calls: usize,
    max_calls: Option<usize>,
    /// `JsonArray` / `Named`: where the scanner is.
    json: JsonState,
}

/// A fresh `call_<random>` id.
pub fn call_id() -> String {
    let state = std::collections::hash_map::RandomState::new();
    let mut h = state.build_hasher();
    h.write_u8(7);
    format!("call_{:016x}", h.finish())
}

/// `{"name": .., "arguments"|"parameters": {..}}` as (name, arguments JSON).
fn parse_call(json: &str) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    if name.is_empty() {
        return None;
    }
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        // Some models put the arguments in a string already.
        Some(serde_json::Value::String(s)) => serde_json::from_str(s).ok()?,
        Some(a) => a.clone(),
    };
    if !args.is_object() {
        return None;
    }
    Some((name, args.to_string()))
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_tag_len(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

impl ToolParser {
    /// A parser of `kind`; `max_calls` (from `parallel_tool_calls: false`) keeps the
    /// first calls only and drops the rest.
    pub fn new(kind: ToolParserKind, max_calls: Option<usize>) -> Self {
        Self {
            kind,
            buf: String::new(),
            in_call: false,
            plain: false,
            pending_ws: String::new(),
            calls: 0,
            max_calls,
            json: JsonState::default(),
        }
    }

    /// Tool calls found so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds the next piece of text.
    pub fn push(&mut self, text: &str) -> ParsedDelta {
        let mut out = ParsedDelta::default();
        match self.kind {
            ToolParserKind::Hermes => {
                self.buf.push_str(text);
                self.hermes(&mut out, false);
            }
            ToolParserKind::Llama3Json => {
                self.buf.push_str(text);
                self.llama3(&mut out, false);
            }
            ToolParserKind::JsonArray | ToolParserKind::Named(_) => {
                let mut sink = Sink::new(&mut out, &mut self.calls, self.max_calls);
                self.json.push(text, &self.kind, &mut sink);
            }
        }
        out
    }

    /// Ends the output: whatever is held is decided on.
    pub fn finish(&mut self) -> ParsedDelta {
        let mut out = ParsedDelta::default();
        match self.kind {
            ToolParserKind::Hermes => self.hermes(&mut out, true),
            ToolParserKind::Llama3Json => self.llama3(&mut out, true),
            ToolParserKind::JsonArray | ToolParserKind::Named(_) => {
                let mut sink = Sink::new(&mut out, &mut self.calls, self.max_calls);
                self.json.finish(&mut sink);
            }
        }
        if self.calls == 0 {
            out.content.push_str(&std::mem::take(&mut self.pending_ws));
        }
        out
    }

    /// Parses a whole output: its content (`None` when empty) and its calls.
    pub fn parse_all(
        kind: ToolParserKind,
        max_calls: Option<usize>,
        text: &str,
    ) -> (Option<String>, Vec<ToolCall>) {
        let mut p = Self::new(kind, max_calls);
        let mut a = p.push(text);
        let b = p.finish();
        a.content.push_str(&b.content);
        a.tool_calls.extend(b.tool_calls);
        let calls = collect_calls(&a.tool_calls);
        ((!a.content.is_empty()).then_some(a.content), calls)
    }

    fn content(&mut self, out: &mut ParsedDelta, text: &str) {
        if text.is_empty() {
            return;
        }
        // Trailing whitespace is held: a call may follow it.
        self.pending_ws.push_str(text);
        let end = self.pending_ws.trim_end().len();
        out.content.extend(self.pending_ws.drain(..end));
    }

    fn call(&mut self, out: &mut ParsedDelta, name: String, arguments: String) {
        self.pending_ws.clear();
        if self.max_calls.is_some_and(|m| self.calls >= m) {
            return;
        }
        let index = self.calls;
        self.calls += 1;
        out.tool_calls.push(ToolCallDelta {
            index,
            id: Some(call_id()),
            name: Some(name),
            arguments: String::new(),
        });
        out.tool_calls.push(ToolCallDelta {
            index,
            id: None,
            name: None,
            arguments,
        });
    }

    fn hermes(&mut self, out: &mut ParsedDelta, end: bool) {
        loop {
            if self.in_call {
                if let Some(i) = self.buf.find(HERMES_CLOSE) {
                    let body: String = self.buf[..i].to_string();
                    self.buf.drain(..i + HERMES_CLOSE.len());
                    self.in_call = false;
                    match parse_call(&body) {
                        Some((name, args)) => self.call(out, name, args),
                        None => {
                            let raw = format!("{HERMES_OPEN}{body}{HERMES_CLOSE}");
                            self.content(out, &raw);
                        }
                    }
                    continue;
                }
                if end {
                    // An unclosed call: a call if its body parses, else content.
                    let body = std::mem::take(&mut self.buf);
                    self.in_call = false;
                    match parse_call(&body) {
                        Some((name, args)) => self.call(out, name, args),
                        None => self.content(out, &format!("{HERMES_OPEN}{body}")),
                    }
                }
                return;
            }
            if let Some(i) = self.buf.find(HERMES_OPEN) {
                let before: String = self.buf[..i].to_string();
                self.content(out, &before);
                self.buf.drain(..i + HERMES_OPEN.len());
                self.in_call = true;
                self.pending_ws.clear();
                continue;
            }
            let keep = if end {
                0
            } else {
                partial_tag_len(&self.buf, HERMES_OPEN)
            };
            let text: String = self.buf.drain(..self.buf.len() - keep).collect();
            self.content(out, &text);
            return;
        }
    }

    fn llama3(&mut self, out: &mut ParsedDelta, end: bool) {
        if self.plain {
            let text = std::mem::take(&mut self.buf);
            self.content(out, &text);
            return;
        }
        if !self.in_call {
            let start = self.buf.trim_start();
            if start.is_empty() && !end {
                return;
            }
            let could_be_call = start.starts_with('{')
                || start.starts_with(PYTHON_TAG)
                || (!start.is_empty() && PYTHON_TAG.starts_with(start));
            if could_be_call {
                self.in_call = true;
            } else {
                self.plain = true;
                let text = std::mem::take(&mut self.buf);
                self.content(out, &text);
                return;
            }
        }
        if !end {
            return;
        }
        let text = std::mem::take(&mut self.buf);
        self.in_call = false;
        let body = text.trim_start();
        let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
        match parse_call(body) {
            Some((name, args)) => self.call(out, name, args),
            None => self.content(out, &text),
        }
    }
}

/// The complete calls of a sequence of deltas (pieces of one index joined).
pub fn collect_calls(deltas: &[ToolCallDelta]) -> Vec<ToolCall> {
    let mut calls: Vec<ToolCall> = vec![];
    for d in deltas {
        if d.index >= calls.len() {
            calls.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        if let Some(c) = calls.get_mut(d.index) {
            if let Some(id) = &d.id {
                c.id.clone_from(id);
            }
            if let Some(name) = &d.name {
                c.name.clone_from(name);
            }
            c.arguments.push_str(&d.arguments);
        }
    }
    calls
}

#[path = "tool_parser_json.rs"]
mod json;

#[cfg(test)]
#[path = "tool_parser_tests.rs"]
mod tests;

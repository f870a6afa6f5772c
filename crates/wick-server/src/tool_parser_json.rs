//! The incremental JSON scanner of the streaming tool-call kinds (`JsonArray`, `Named`;
//! see [`ToolParserKind`]): a character at a time, with string, escape and nesting
//! state, so a text fed whole or split anywhere gives the same deltas once joined.
//!
//! Invariants: no content ever; a call's first delta carries id and name, the following
//! ones argument text (the value's JSON text less whitespace outside strings); every
//! character is accepted (garbage is skipped), never a panic.

use super::{call_id, ParsedDelta, ToolCallDelta, ToolParserKind};

/// Where the streaming kinds' deltas go: numbers the calls, keeps `max_calls`.
pub(super) struct Sink<'a> {
    out: &'a mut ParsedDelta,
    calls: &'a mut usize,
    max_calls: Option<usize>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(
        out: &'a mut ParsedDelta,
        calls: &'a mut usize,
        max_calls: Option<usize>,
    ) -> Self {
        Self {
            out,
            calls,
            max_calls,
        }
    }

    /// Reports a new call: its index, or `None` when past `max_calls` (dropped).
    fn open(&mut self, name: String) -> Option<usize> {
        if self.max_calls.is_some_and(|m| *self.calls >= m) {
            return None;
        }
        let index = *self.calls;
        *self.calls += 1;
        self.out.tool_calls.push(ToolCallDelta {
            index,
            id: Some(call_id()),
            name: Some(name),
            arguments: String::new(),
        });
        Some(index)
    }

    /// Argument text of call `index`, joined to the previous fragment of this push.
    fn args(&mut self, index: usize, text: &str) {
        match self.out.tool_calls.last_mut() {
            Some(d) if d.index == index && d.id.is_none() => d.arguments.push_str(text),
            _ => self.out.tool_calls.push(ToolCallDelta {
                index,
                id: None,
                name: None,
                arguments: text.to_string(),
            }),
        }
    }
}

/// JSON whitespace.
fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// What a character is to the JSON value being scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Part of it (whitespace outside strings): dropped from the text.
    Skip,
    /// Part of its text.
    Keep,
    /// Its last character.
    End,
    /// Not part of it: the value ended before (a scalar) or never started.
    Reject,
}

/// One JSON value read a character at a time: string and escape state, nesting depth
/// (brackets and braces counted alike: a mismatch is garbage, not a panic).
#[derive(Debug, Default)]
struct Scan {
    depth: usize,
    in_str: bool,
    esc: bool,
    /// Inside a number or literal, which ends at whitespace or punctuation.
    scalar: bool,
}

impl Scan {
    fn feed(&mut self, c: char) -> Step {
        if self.in_str {
            if self.esc {
                self.esc = false;
            } else if c == '\\' {
                self.esc = true;
            } else if c == '"' {
                self.in_str = false;
                if self.depth == 0 {
                    return Step::End;
                }
            }
            return Step::Keep;
        }
        let punct = matches!(c, ',' | ':' | '{' | '}' | '[' | ']' | '"');
        if self.scalar {
            return if is_ws(c) || punct {
                Step::Reject
            } else {
                Step::Keep
            };
        }
        match c {
            c if is_ws(c) => Step::Skip,
            '"' => {
                self.in_str = true;
                Step::Keep
            }
            '{' | '[' => {
                self.depth += 1;
                Step::Keep
            }
            '}' | ']' | ',' | ':' if self.depth == 0 => Step::Reject,
            '}' | ']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    Step::End
                } else {
                    Step::Keep
                }
            }
            _ => {
                self.scalar = self.depth == 0;
                Step::Keep
            }
        }
    }
}

/// What a value in a call object is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Name,
    Args,
    Skip,
}

/// Where a call object's reading is.
#[derive(Debug)]
enum Field {
    /// Before a key (or the closing brace); commas and stray characters skipped.
    Key,
    /// Inside a key string: its raw text.
    InKey { raw: String, esc: bool },
    /// After a key, before its colon.
    Colon(Target),
    /// Inside a value.
    Value(Target, Scan),
}

/// One call: a `{"name": .., "parameters": ..}` object, or (`Named`) the arguments alone.
#[derive(Debug)]
struct CallObj {
    field: Field,
    /// The name value's JSON text while it is read.
    name_raw: String,
    name: Option<String>,
    /// Its index once reported.
    index: Option<usize>,
    /// A `parameters`/`arguments` key was taken (later ones are skipped).
    args_claimed: bool,
    /// Argument text read before the name: held until it is reported.
    held: String,
    /// Some argument text was read.
    args_any: bool,
    /// The object is the arguments value itself (`Named`): it ends with the value.
    whole: bool,
}

impl CallObj {
    fn object() -> Self {
        Self {
            field: Field::Key,
            name_raw: String::new(),
            name: None,
            index: None,
            args_claimed: false,
            held: String::new(),
            args_any: false,
            whole: false,
        }
    }

    /// The arguments of the function `name`, reported now.
    fn arguments(name: &str, sink: &mut Sink) -> Self {
        Self {
            field: Field::Value(Target::Args, Scan::default()),
            name: Some(name.to_string()),
            index: sink.open(name.to_string()),
            args_claimed: true,
            whole: true,
            ..Self::object()
        }
    }

    /// Reads `c`; true once the object has ended.
    fn feed(&mut self, c: char, sink: &mut Sink) -> bool {
        loop {
            match &mut self.field {
                Field::Key => match c {
                    '"' => {
                        self.field = Field::InKey {
                            raw: String::new(),
                            esc: false,
                        }
                    }
                    '}' => {
                        self.close(sink);
                        return true;
                    }
                    _ => {}
                },
                Field::InKey { raw, esc } => {
                    if c == '"' && !*esc {
                        let key = serde_json::from_str::<String>(&format!("\"{raw}\"")).ok();
                        let target = match key.as_deref() {
                            Some("name") if self.name.is_none() => Target::Name,
                            Some("parameters" | "arguments") if !self.args_claimed => {
                                self.args_claimed = true;
                                Target::Args
                            }
                            _ => Target::Skip,
                        };
                        self.field = Field::Colon(target);
                    } else {
                        *esc = !*esc && c == '\\';
                        raw.push(c);
                    }
                }
                Field::Colon(target) => {
                    let target = *target;
                    if c == ':' || !is_ws(c) {
                        self.field = Field::Value(target, Scan::default());
                        if c != ':' {
                            continue;
                        }
                    }
                }
                Field::Value(target, scan) => {
                    let (target, step) = (*target, scan.feed(c));
                    if matches!(step, Step::Keep | Step::End) {
                        match target {
                            Target::Name => self.name_raw.push(c),
                            Target::Args => self.args(c.encode_utf8(&mut [0; 4]), sink),
                            Target::Skip => {}
                        }
                    }
                    if matches!(step, Step::End | Step::Reject) {
                        if self.whole {
                            self.close(sink);
                            return true;
                        }
                        if target == Target::Name {
                            self.name_done(sink);
                        }
                        self.field = Field::Key;
                        if step == Step::Reject {
                            continue;
                        }
                    }
                }
            }
            return false;
        }
    }

    fn args(&mut self, text: &str, sink: &mut Sink) {
        self.args_any = true;
        match self.index {
            Some(i) => sink.args(i, text),
            None if self.name.is_none() => self.held.push_str(text),
            None => {}
        }
    }

    /// The name value is read: a non-empty string reports the call (and held arguments).
    fn name_done(&mut self, sink: &mut Sink) {
        let raw = std::mem::take(&mut self.name_raw);
        let Ok(name) = serde_json::from_str::<String>(&raw) else {
            return;
        };
        if name.is_empty() {
            return;
        }
        self.name = Some(name.clone());
        self.index = sink.open(name);
        let held = std::mem::take(&mut self.held);
        if let (Some(i), false) = (self.index, held.is_empty()) {
            sink.args(i, &held);
        }
    }

    /// The object ended (or the output did): a reported call without arguments gets `{}`.
    fn close(&mut self, sink: &mut Sink) {
        if let (Some(i), false) = (self.index, self.args_any) {
            sink.args(i, "{}");
            self.args_any = true;
        }
    }
}

/// Where the streaming kinds are in the output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Outer {
    /// Before the array (`JsonArray`) or the value (`Named`).
    #[default]
    Before,
    /// Inside the array, between or inside elements.
    Array,
    /// Inside a call object not in an array, or the `Named` value.
    Bare,
    /// Past the end: the rest is ignored.
    Done,
}

/// The scanner of the streaming kinds.
#[derive(Debug, Default)]
pub(super) struct JsonState {
    outer: Outer,
    /// The call being read.
    obj: Option<CallObj>,
    /// A non-object array element being skipped.
    skip: Option<Scan>,
}

impl JsonState {
    /// Reads the next piece of the output.
    pub(super) fn push(&mut self, text: &str, kind: &ToolParserKind, sink: &mut Sink) {
        for c in text.chars() {
            self.feed(c, kind, sink);
        }
    }

    /// The output ended: a call being read is closed as it is.
    pub(super) fn finish(&mut self, sink: &mut Sink) {
        if let Some(mut obj) = self.obj.take() {
            obj.close(sink);
        }
        self.outer = Outer::Done;
    }

    fn feed(&mut self, c: char, kind: &ToolParserKind, sink: &mut Sink) {
        loop {
            match self.outer {
                Outer::Before if is_ws(c) => {}
                Outer::Before => match (kind, c) {
                    (ToolParserKind::Named(name), _) => {
                        self.obj = Some(CallObj::arguments(name, sink));
                        self.outer = Outer::Bare;
                        continue;
                    }
                    (_, '[') => self.outer = Outer::Array,
                    (_, '{') => {
                        self.obj = Some(CallObj::object());
                        self.outer = Outer::Bare;
                    }
                    _ => {}
                },
                Outer::Array => {
                    if let Some(scan) = &mut self.skip {
                        let step = scan.feed(c);
                        if matches!(step, Step::End | Step::Reject) {
                            self.skip = None;
                        }
                        if step == Step::Reject {
                            continue;
                        }
                    } else if let Some(obj) = &mut self.obj {
                        if obj.feed(c, sink) {
                            self.obj = None;
                        }
                    } else {
                        match c {
                            '{' => self.obj = Some(CallObj::object()),
                            ']' => self.outer = Outer::Done,
                            c if is_ws(c) || c == ',' => {}
                            _ => {
                                let mut scan = Scan::default();
                                if scan.feed(c) == Step::Keep {
                                    self.skip = Some(scan);
                                }
                            }
                        }
                    }
                }
                Outer::Bare => {
                    if let Some(obj) = &mut self.obj {
                        if obj.feed(c, sink) {
                            self.obj = None;
                            self.outer = Outer::Done;
                        }
                    }
                }
                Outer::Done => {}
            }
            return;
        }
    }
}

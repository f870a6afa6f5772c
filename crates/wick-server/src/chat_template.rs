//! Chat templates: a Hugging Face / GGUF Jinja chat template compiled once with
//! minijinja and rendered per request.
//!
//! The environment mirrors what `transformers` sets up for `apply_chat_template`:
//! `trim_blocks` and `lstrip_blocks` on, no trailing newline kept, loop controls
//! (`break`/`continue`), Python string/dict methods (`.strip()`, `.items()`, ...), the
//! `raise_exception(msg)` and `strftime_now(format)` globals, and a `tojson` filter that
//! formats like Python's `json.dumps(x, ensure_ascii=False)` (not HTML-escaped).
//!
//! Invariants: a [`ChatTemplate`] always holds a template that parsed; rendering never
//! panics on request data, every failure is a [`ChatTemplateError`] whose message names
//! the cause (the server answers it with HTTP 400).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

/// The name the template is registered under in its environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template does not parse.
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// The template called `raise_exception(message)`; typically the messages break a
    /// rule of the model (e.g. roles must alternate).
    #[error("chat template rejected the messages: {0}")]
    Raised(String),
    /// Rendering failed for another reason (wrong types, unknown filter, ...).
    #[error("chat template rendering failed: {0}")]
    Render(String),
}

/// One chat message with plain string content.
///
/// [`ChatTemplate::render`] takes any serializable message, so `serde_json::Value`
/// messages (tool calls, array content) can be passed as well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Everything a template sees besides `messages`.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Whether to end with the header of an assistant turn.
    pub add_generation_prompt: bool,
    /// `bos_token` variable; undefined (renders empty) when `None`.
    pub bos_token: Option<String>,
    /// `eos_token` variable; undefined (renders empty) when `None`.
    pub eos_token: Option<String>,
    /// Further variables (`tools`, `documents`, `chat_template_kwargs`, ...). The fields
    /// above and `messages` take precedence over entries of the same name.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, not at render time.
    pub fn new(source: impl Into<String>) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.into())
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        Ok(Self { env })
    }

    /// Renders `messages` (any serializable sequence of `{role, content, ...}` objects)
    /// with `options`.
    pub fn render<M: Serialize>(
        &self,
        messages: &[M],
        options: &RenderOptions,
    ) -> Result<String, ChatTemplateError> {
        let mut context: BTreeMap<String, Value> = options
            .extra
            .iter()
            .map(|(key, value)| (key.clone(), Value::from_serialize(value)))
            .collect();
        context.insert("messages".into(), Value::from_serialize(messages));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(options.add_generation_prompt),
        );
        for (key, token) in [
            ("bos_token", &options.bos_token),
            ("eos_token", &options.eos_token),
        ] {
            match token {
                Some(token) => context.insert(key.into(), Value::from(token.as_str())),
                None => context.remove(key),
            };
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        template.render(context).map_err(render_error)
    }
}

/// Maps a render failure, surfacing `raise_exception` messages as such.
fn render_error(error: Error) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(raised) = current.downcast_ref::<RaisedException>() {
            return ChatTemplateError::Raised(raised.0.clone());
        }
        source = current.source();
    }
    ChatTemplateError::Render(error.to_string())
}

/// The message of a template's `raise_exception` call, carried as an error source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct RaisedException(String);

/// `raise_exception(message)`: aborts rendering with `message`.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

/// `strftime_now(format)`: the current UTC time formatted like Python's `strftime`.
fn strftime_now(format: String) -> Result<String, Error> {
    strftime(&format, chrono::Utc::now())
}

/// Formats `time` with Python's (C's) `strftime` directives, through chrono; an unknown
/// directive or a dangling `%` is an error, never a panic.
fn strftime(format: &str, time: chrono::DateTime<chrono::Utc>) -> Result<String, Error> {
    let items = chrono::format::StrftimeItems::new(format)
        .parse()
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("unsupported strftime format {format:?}: {e}"),
            )
        })?;
    let mut out = String::with_capacity(format.len() + 16);
    write!(out, "{}", time.format_with_items(items.iter())).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("cannot format the date with {format:?}"),
        )
    })?;
    Ok(out)
}

/// `tojson(indent=None, sort_keys=False, ensure_ascii=False, separators=None)`, formatted
/// like `transformers`' filter (Python's `json.dumps`).
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ))
            }
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let json = serde_json::to_value(&value).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value is not serializable",
        )
        .with_source(e)
    })?;
    let style = PyJsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// The formatting options of Python's `json.dumps`.
struct PyJsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJsonStyle {
    fn write(&self, value: &serde_json::Value, level: usize, out: &mut String) {
        use serde_json::Value as J;
        match value {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => {
                    let _ = write!(out, "{i}");
                }
                (None, Some(u), _) => {
                    let _ = write!(out, "{u}");
                }
                (None, None, Some(f)) => out.push_str(&py_float_repr(f)),
                _ => out.push_str(&n.to_string()),
            },
            J::String(s) => self.write_str(s, out),
            J::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            J::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<_> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (key, item)) in entries.into_iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.write_str(key, out);
                    out.push_str(&self.key_sep);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }

    /// Item separator (after the first item) and indentation before item `index`.
    fn separate(&self, index: usize, level: usize, out: &mut String) {
        if index > 0 {
            out.push_str(&self.item_sep);
        }
        self.newline(level, out);
    }

    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside
/// `1e-4 <= |x| < 1e16`.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{fraction}e{exp_sign}{:02}", exponent.abs());
    }
    let n = digits.len() as i32;
    let body = if exponent < 0 {
        format!("0.{}{digits}", "0".repeat((-exponent - 1) as usize))
    } else if n - 1 <= exponent {
        format!("{digits}{}.0", "0".repeat((exponent - (n - 1)) as usize))
    } else {
        let (int, frac) = digits.split_at(exponent as usize + 1);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(source)?.render(messages, &RenderOptions::default())
    }

    #[test]
    fn syntax_error_is_reported_at_load() {
        let err = ChatTemplate::new("{% for m in messages %}").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Syntax(_)), "{err}");
    }

    #[test]
    fn raise_exception_surfaces_its_message() {
        let err = render(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
            &[ChatMessage::new("assistant", "hi")],
        )
        .unwrap_err();
        match err {
            ChatTemplateError::Raised(message) => assert_eq!(message, "first must be user"),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn python_methods_loop_controls_and_whitespace() {
        let source = "{% for m in messages %}\n  {% if loop.index > 2 %}{% break %}{% endif %}\n{{ m.content.strip().upper() }}|{% endfor %}\n";
        let messages = [
            ChatMessage::new("user", "  a "),
            ChatMessage::new("user", "b"),
            ChatMessage::new("user", "c"),
        ];
        assert_eq!(render(source, &messages).unwrap(), "A|B|");
    }

    #[test]
    fn variables_and_extra_kwargs() {
        let template = ChatTemplate::new(
            "{{ bos_token }}{{ messages | length }}{{ flag }}{% if add_generation_prompt %}>{% endif %}",
        )
        .unwrap();
        let mut options = RenderOptions {
            add_generation_prompt: true,
            bos_token: Some("<s>".into()),
            ..RenderOptions::default()
        };
        options.extra.insert("flag".into(), serde_json::json!("!"));
        let messages = [serde_json::json!({"role": "user", "content": [{"type": "text"}]})];
        assert_eq!(template.render(&messages, &options).unwrap(), "<s>1!>");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let template = ChatTemplate::new(
            "{{ tools | tojson }}\n{{ tools[0] | tojson(indent=2) }}\n{{ tools[0] | tojson(sort_keys=true, separators=[',', ':']) }}",
        )
        .unwrap();
        let mut options = RenderOptions::default();
        options.extra.insert(
            "tools".into(),
            serde_json::json!([{"name": "f<é>", "z": 1.5e-5, "a": [1, 2.0, null, true], "o": {}}]),
        );
        let out = template
            .render::<ChatMessage>(&[], &options)
            .expect("renders");
        assert_eq!(
            out,
            "[{\"name\": \"f<é>\", \"z\": 1.5e-05, \"a\": [1, 2.0, null, true], \"o\": {}}]\n\
             {\n  \"name\": \"f<é>\",\n  \"z\": 1.5e-05,\n  \"a\": [\n    1,\n    2.0,\n    null,\n    true\n  ],\n  \"o\": {}\n}\n\
             {\"a\":[1,2.0,null,true],\"name\":\"f<é>\",\"o\":{},\"z\":1.5e-05}"
        );
    }

    #[test]
    fn python_float_repr() {
        for (f, repr) in [
            (0.0, "0.0"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(py_float_repr(f), repr, "{f}");
        }
    }

    #[test]
    fn strftime_formats_utc() {
        let at = |secs| chrono::DateTime::from_timestamp(secs, 0).unwrap();
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = at(1_709_211_909);
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %y %e %%", t).unwrap(),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 24 29 %"
        );
        assert_eq!(strftime("%d %b %Y", at(0)).unwrap(), "01 Jan 1970");
        assert_eq!(strftime("%Y-%m-%d", t).unwrap(), "2024-02-29");
        assert_eq!(
            strftime("%F %T %Z %z %h", t).unwrap(),
            "2024-02-29 13:05:09 UTC +0000 Feb"
        );
        // Single-digit day space-padded by %e, zero-padded by %d; midnight is 12AM.
        let t = at(1_704_067_200 + 4 * 86_400); // 2024-01-05 00:00:00, a Friday.
        assert_eq!(strftime("%e|%d|%I %p|%A", t).unwrap(), " 5|05|12 AM|Friday");
        assert!(strftime("%Q", at(0)).is_err());
        assert!(strftime("100%", at(0)).is_err());
    }

    #[test]
    fn strftime_now_in_a_template() {
        let year = || chrono::Utc::now().format("%Y").to_string();
        let before = year();
        let out = render("{{ strftime_now('%Y') }}", &[]).unwrap();
        assert!(out == before || out == year(), "{out}");
        assert!(render("{{ strftime_now('%Q') }}", &[]).is_err());
    }
}

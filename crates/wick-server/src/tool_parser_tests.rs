//! Unit tests of [`super`]: both formats on whole outputs, the same outputs fed split at
//! every byte, and malformed outputs (content, never a panic).

use super::*;

/// (content, [(name, arguments)]) of a whole parse.
fn whole(kind: ToolParserKind, text: &str) -> (Option<String>, Vec<(String, String)>) {
    let (content, calls) = ToolParser::parse_all(kind, None, text);
    (
        content,
        calls.into_iter().map(|c| (c.name, c.arguments)).collect(),
    )
}

/// The same, fed in two pieces split at byte `at` (a char boundary), then in pieces of
/// one char each.
fn split(kind: ToolParserKind, text: &str, at: usize) -> (Option<String>, Vec<(String, String)>) {
    let mut p = ToolParser::new(kind, None);
    let mut content = String::new();
    let mut deltas = vec![];
    for piece in [&text[..at], &text[at..]] {
        let d = p.push(piece);
        content.push_str(&d.content);
        deltas.extend(d.tool_calls);
    }
    let d = p.finish();
    content.push_str(&d.content);
    deltas.extend(d.tool_calls);
    // Each call: the first piece has id and name, the arguments follow.
    for d in &deltas {
        assert_eq!(d.id.is_some(), d.name.is_some());
        if d.id.is_some() {
            assert!(d.arguments.is_empty());
        }
    }
    let calls = collect_calls(&deltas);
    assert!(calls.iter().all(|c| c.id.starts_with("call_")));
    (
        (!content.is_empty()).then_some(content),
        calls.into_iter().map(|c| (c.name, c.arguments)).collect(),
    )
}

fn check_every_split(kind: ToolParserKind, text: &str) -> (Option<String>, Vec<(String, String)>) {
    let want = whole(kind, text);
    for at in 0..=text.len() {
        if text.is_char_boundary(at) {
            assert_eq!(split(kind, text, at), want, "split at {at} of {text:?}");
        }
    }
    let mut p = ToolParser::new(kind, None);
    let (mut content, mut deltas) = (String::new(), vec![]);
    for ch in text.chars() {
        let d = p.push(ch.encode_utf8(&mut [0; 4]));
        content.push_str(&d.content);
        deltas.extend(d.tool_calls);
    }
    let d = p.finish();
    content.push_str(&d.content);
    deltas.extend(d.tool_calls);
    let calls: Vec<_> = collect_calls(&deltas)
        .into_iter()
        .map(|c| (c.name, c.arguments))
        .collect();
    assert_eq!(((!content.is_empty()).then_some(content), calls), want);
    want
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.into(), args.into())
}

#[test]
fn hermes_calls_with_content_before() {
    let text = "Let me look that up.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"CET\"}}\n</tool_call>";
    let got = check_every_split(ToolParserKind::Hermes, text);
    assert_eq!(
        got,
        (
            Some("Let me look that up.".into()),
            vec![
                call("get_weather", r#"{"city":"Paris","unit":"c"}"#),
                call("get_time", r#"{"tz":"CET"}"#)
            ]
        )
    );
}

#[test]
fn hermes_only_calls_have_no_content() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n";
    assert_eq!(
        check_every_split(ToolParserKind::Hermes, text),
        (None, vec![call("f", "{}")])
    );
    // Unclosed at the end but complete JSON: still a call.
    let text = "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": \"é<\"}}";
    assert_eq!(
        check_every_split(ToolParserKind::Hermes, text),
        (None, vec![call("f", r#"{"a":"é<"}"#)])
    );
}

#[test]
fn hermes_plain_text_passes_through() {
    let text = "No tools needed: 1 < 2, and <tool is a word. ";
    assert_eq!(
        check_every_split(ToolParserKind::Hermes, text),
        (Some(text.into()), vec![])
    );
    assert_eq!(
        check_every_split(ToolParserKind::Hermes, ""),
        (None, vec![])
    );
}

#[test]
fn hermes_malformed_calls_degrade_to_content() {
    for text in [
        "<tool_call>{\"name\": \"f\", \"arguments\": {</tool_call>",
        "<tool_call>not json</tool_call> after",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{\"name\": \"f\"",
        "<tool_call>",
        "<tool_cal",
        "</tool_call>",
    ] {
        let (content, calls) = check_every_split(ToolParserKind::Hermes, text);
        assert!(calls.is_empty(), "{text:?}");
        assert_eq!(content.as_deref(), Some(text), "{text:?}");
    }
}

#[test]
fn hermes_max_calls_keeps_the_first() {
    let text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>";
    let (content, calls) = ToolParser::parse_all(ToolParserKind::Hermes, Some(1), text);
    assert_eq!(content, None);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "a");
}

#[test]
fn llama3_json_calls() {
    let k = ToolParserKind::Llama3Json;
    let want = (None, vec![call("get_weather", r#"{"city":"Oslo"}"#)]);
    for text in [
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
        "<|python_tag|>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}",
        "  {\"name\": \"get_weather\", \"parameters\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}\n",
    ] {
        assert_eq!(check_every_split(k, text), want, "{text:?}");
    }
}

#[test]
fn llama3_json_plain_and_malformed_are_content() {
    let k = ToolParserKind::Llama3Json;
    for text in [
        "The weather is fine.",
        "{\"name\": \"f\", \"parameters\": ",
        "{not json}",
        "{\"name\": \"f\", \"parameters\": {}} trailing",
        "<|python_tag|>",
        "<|pyth",
        "  ",
    ] {
        let (content, calls) = check_every_split(k, text);
        assert!(calls.is_empty(), "{text:?}");
        assert_eq!(content.as_deref(), Some(text), "{text:?}");
    }
}

#[test]
fn auto_picks_from_the_template() {
    let a = ToolCallParserArg::Auto;
    assert_eq!(
        a.resolve(Some("{{ '<tool_call>' }}")),
        Some(ToolParserKind::Hermes)
    );
    assert_eq!(a.resolve(Some("{{ messages }}")), None);
    assert_eq!(a.resolve(None), None);
    assert_eq!(ToolCallParserArg::None.resolve(Some("<tool_call>")), None);
    assert_eq!(
        ToolCallParserArg::Llama3Json.resolve(None),
        Some(ToolParserKind::Llama3Json)
    );
}

//! Unit tests of [`super`]: the `auto` formats on whole outputs, the same outputs fed
//! split at every byte, and malformed outputs (content, never a panic); the streaming
//! (constrained) kinds with the name reported early, arguments joined across any split
//! equal to the whole parse, truncated, garbage and random outputs.

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
    let want = whole(kind.clone(), text);
    for at in 0..=text.len() {
        if text.is_char_boundary(at) {
            assert_eq!(
                split(kind.clone(), text, at),
                want,
                "split at {at} of {text:?}"
            );
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
        assert_eq!(check_every_split(k.clone(), text), want, "{text:?}");
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
        let (content, calls) = check_every_split(k.clone(), text);
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

/// A small deterministic generator (xorshift64), for random splits and texts.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A streaming kind's calls from `pieces`, checking on the way: never content; calls
/// numbered in order, each first reported with id and name and no arguments, then only
/// argument pieces of the latest call; `calls()` counts them.
fn stream(kind: &ToolParserKind, max: Option<usize>, pieces: &[&str]) -> Vec<(String, String)> {
    let mut p = ToolParser::new(kind.clone(), max);
    let mut deltas = vec![];
    for piece in pieces {
        let d = p.push(piece);
        assert!(d.content.is_empty(), "{pieces:?}");
        deltas.extend(d.tool_calls);
    }
    let d = p.finish();
    assert!(d.content.is_empty(), "{pieces:?}");
    deltas.extend(d.tool_calls);
    let mut seen = 0;
    for d in &deltas {
        assert_eq!(d.id.is_some(), d.name.is_some());
        if d.id.is_some() {
            assert_eq!((d.index, d.arguments.as_str()), (seen, ""), "{pieces:?}");
            seen += 1;
        } else {
            assert_eq!(d.index + 1, seen, "{pieces:?}");
        }
    }
    assert_eq!(p.calls(), seen);
    let calls = collect_calls(&deltas);
    assert!(calls.iter().all(|c| c.id.starts_with("call_")));
    calls.into_iter().map(|c| (c.name, c.arguments)).collect()
}

/// The whole parse of `text` (no content), after checking that the same text fed in two
/// pieces at every char boundary, a char at a time, and cut at random places gives the
/// same calls.
fn check_streaming(kind: &ToolParserKind, max: Option<usize>, text: &str) -> Vec<(String, String)> {
    let (content, calls) = ToolParser::parse_all(kind.clone(), max, text);
    assert_eq!(content, None, "{text:?}");
    let want: Vec<_> = calls.into_iter().map(|c| (c.name, c.arguments)).collect();
    let bounds: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    for &at in &bounds {
        let got = stream(kind, max, &[&text[..at], &text[at..]]);
        assert_eq!(got, want, "split at {at} of {text:?}");
    }
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let chars: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(stream(kind, max, &chars), want, "{text:?} char by char");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ text.len() as u64);
    for _ in 0..20 {
        let mut cuts: Vec<usize> = (0..1 + rng.below(8))
            .map(|_| bounds[rng.below(bounds.len())])
            .collect();
        cuts.extend([0, text.len()]);
        cuts.sort_unstable();
        let pieces: Vec<&str> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        assert_eq!(stream(kind, max, &pieces), want, "{text:?} cut at {cuts:?}");
    }
    want
}

fn named(name: &str) -> ToolParserKind {
    ToolParserKind::Named(name.into())
}

#[test]
fn required_calls_are_the_same_whole_and_split() {
    let text = "\n[\n  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": [1, 2.5e3, -3], \"unit\": null, \"ok\": true}},\n  {\"name\":\"get_time\",\"parameters\":{}}\n]\n";
    assert_eq!(
        check_streaming(&ToolParserKind::JsonArray, None, text),
        vec![
            call(
                "get_weather",
                r#"{"city":"Paris","days":[1,2.5e3,-3],"unit":null,"ok":true}"#
            ),
            call("get_time", "{}"),
        ]
    );
}

#[test]
fn required_reports_the_name_then_streams_the_arguments() {
    let mut p = ToolParser::new(ToolParserKind::JsonArray, None);
    let mut push = |text: &str| -> Vec<(usize, Option<String>, String)> {
        let d = p.push(text);
        assert!(d.content.is_empty());
        d.tool_calls
            .into_iter()
            .map(|t| (t.index, t.name, t.arguments))
            .collect()
    };
    let head = |i, name: &str| (i, Some(name.to_string()), String::new());
    let args = |i, a: &str| (i, None, a.to_string());
    assert_eq!(push("  [{\"na"), vec![]);
    assert_eq!(push("me\": \"get_"), vec![]);
    assert_eq!(push("weather\", \"param"), vec![head(0, "get_weather")]);
    assert_eq!(push("eters\": {\"ci"), vec![args(0, "{\"ci")]);
    assert_eq!(push("ty\": \"Pa"), vec![args(0, "ty\":\"Pa")]);
    assert_eq!(
        push("ris\"}}, {\"name\": \"f\""),
        vec![args(0, "ris\"}"), head(1, "f")]
    );
    assert_eq!(push("}]"), vec![args(1, "{}")]);
    assert_eq!(push(" [{\"name\": \"g\"}]"), vec![]);
    assert_eq!(p.finish(), ParsedDelta::default());
    assert_eq!(p.calls(), 2);
}

#[test]
fn required_holds_arguments_read_before_the_name() {
    let k = ToolParserKind::JsonArray;
    let text = "[{\"parameters\": {\"q\": \"x y\"}, \"name\": \"search\"}]";
    assert_eq!(
        check_streaming(&k, None, text),
        vec![call("search", r#"{"q":"x y"}"#)]
    );
    let mut p = ToolParser::new(k, None);
    assert_eq!(p.push(&text[..30]), ParsedDelta::default());
    let d = p.push(&text[30..]);
    assert_eq!(d.tool_calls.len(), 2);
    assert_eq!(d.tool_calls[0].name.as_deref(), Some("search"));
    assert_eq!(d.tool_calls[1].arguments, r#"{"q":"x y"}"#);
}

#[test]
fn required_skips_other_keys_and_reads_escapes() {
    let k = ToolParserKind::JsonArray;
    // Extra keys whose values hold brackets and quotes; `arguments` as the alias; the
    // first name and the first arguments win.
    let text = r#"[{"id": {"n": "}\"]{"}, "name": "f", "type": ["]", {}], "arguments": {"a": "[{\"}"}, "parameters": {"b": 2}, "name": "g"}]"#;
    assert_eq!(
        check_streaming(&k, None, text),
        vec![call("f", r#"{"a":"[{\"}"}"#)]
    );
    // Escapes in the name are decoded; in the arguments kept as written.
    let text = "[{\"name\": \"m\\u00e9t\\\"eo\", \"parameters\": {\"ville\": \"Zürich 🌧 \", \"e\": \"\\u00e9\\n\\\\\"}}]";
    assert_eq!(
        check_streaming(&k, None, text),
        vec![call(
            "mét\"eo",
            "{\"ville\":\"Zürich 🌧 \",\"e\":\"\\u00e9\\n\\\\\"}"
        )]
    );
}

#[test]
fn required_truncated_output_keeps_what_was_read() {
    let k = ToolParserKind::JsonArray;
    for (text, want) in [
        (
            "[{\"name\": \"f\", \"parameters\": {\"city\": \"Par",
            vec![call("f", r#"{"city":"Par"#)],
        ),
        ("[{\"name\": \"f\"", vec![call("f", "{}")]),
        ("[{\"name\": \"f\", \"param", vec![call("f", "{}")]),
        ("[{\"name\": \"f\", \"parameters\": 12", vec![call("f", "12")]),
        (
            "[{\"name\": \"f\", \"parameters\": {\"a\": 1}}, {\"name\": \"g\", \"parameters\": {\"b\": [",
            vec![call("f", r#"{"a":1}"#), call("g", r#"{"b":["#)],
        ),
        ("[{\"name\": \"f", vec![]),
        ("[{\"parameters\": {\"a\": 1}", vec![]),
        ("[", vec![]),
    ] {
        assert_eq!(check_streaming(&k, None, text), want, "{text:?}");
    }
}

#[test]
fn required_garbage_and_empty_give_no_calls() {
    let k = ToolParserKind::JsonArray;
    for text in [
        "",
        "  \n",
        "hello",
        "]}{[",
        "[1, \"x{\", [{\"name\": \"no\"}], true]",
        "[{\"name\": 3, \"parameters\": {}}, {\"name\": \"\"}, {\"name\": null}, {}]",
        "[{name: f}]",
    ] {
        assert_eq!(check_streaming(&k, None, text), vec![], "{text:?}");
    }
    // Around the garbage, calls are still read.
    for text in [
        "[1, \"x{\", [{\"name\": \"no\"}], {\"name\": \"f\", \"parameters\": {}}]",
        "{\"name\": \"f\", \"parameters\": {}}",
        "<|python_tag|>[{\"name\": \"f\", \"parameters\": {}}] then [{\"name\": \"g\"}]",
    ] {
        assert_eq!(
            check_streaming(&k, None, text),
            vec![call("f", "{}")],
            "{text:?}"
        );
    }
    let text = "[{\"name\": \"f\", \"parameters\": {]]]}}]";
    assert_eq!(check_streaming(&k, None, text)[0].0, "f");
}

#[test]
fn required_max_calls_keeps_the_first() {
    let k = ToolParserKind::JsonArray;
    for text in [
        "[{\"name\": \"a\", \"parameters\": {\"x\": 1}}, {\"name\": \"b\", \"parameters\": {}}]",
        "[{\"parameters\": {\"x\": 1}, \"name\": \"a\"}, {\"parameters\": {\"y\": 2}, \"name\": \"b\"}]",
    ] {
        assert_eq!(
            check_streaming(&k, Some(1), text),
            vec![call("a", r#"{"x":1}"#)],
            "{text:?}"
        );
    }
}

#[test]
fn named_streams_the_whole_output_as_arguments() {
    let k = named("get_weather");
    let text = "\n { \"q\" : [1, {\"b\": \"x\\\"}]{\"}], \"s\": \"a b\" } \n";
    assert_eq!(
        check_streaming(&k, None, text),
        vec![call("get_weather", r#"{"q":[1,{"b":"x\"}]{"}],"s":"a b"}"#)]
    );
    let mut p = ToolParser::new(k, None);
    assert_eq!(p.push("  \n"), ParsedDelta::default());
    let d = p.push("{");
    assert_eq!(d.content, "");
    assert_eq!(d.tool_calls.len(), 2);
    assert_eq!(d.tool_calls[0].name.as_deref(), Some("get_weather"));
    assert_eq!(d.tool_calls[1].arguments, "{");
    assert_eq!(p.push(" \"city\" :").tool_calls[0].arguments, "\"city\":");
    assert_eq!(
        p.push(" \"Oslo\" } \n").tool_calls[0].arguments,
        "\"Oslo\"}"
    );
    assert_eq!(p.push("junk {"), ParsedDelta::default());
    assert_eq!(p.finish(), ParsedDelta::default());
    assert_eq!(p.calls(), 1);
}

#[test]
fn named_truncated_empty_and_garbage() {
    let k = named("f");
    for (text, want) in [
        ("{\"a\": \"x", vec![call("f", r#"{"a":"x"#)]),
        ("{\"a\": [1, ", vec![call("f", r#"{"a":[1,"#)]),
        ("{\"a\": 1} {\"b\": 2}", vec![call("f", r#"{"a":1}"#)]),
        ("", vec![]),
        (" \n\t", vec![]),
        ("}", vec![call("f", "{}")]),
        ("hello world", vec![call("f", "hello")]),
    ] {
        assert_eq!(check_streaming(&k, None, text), want, "{text:?}");
    }
}

#[test]
fn streaming_kinds_survive_random_text() {
    // Single characters, and pieces of calls so that many texts hold some.
    let tokens: Vec<&str> = [
        "[|]|{|}|\"|:|,|\\| |\n|a|1|é|🌧|\"name\"|\"parameters\"|\"arguments\"|\"f\"|true",
        "[{\"name\": \"f\"|{\"name\":\"g\",|, \"parameters\": {|\"arguments\":|\"a\": [1, \"]}\\\"\"",
        "}}|}, |}]|\"\\u00e9\"",
    ]
    .iter()
    .flat_map(|t| t.split('|'))
    .collect();
    let mut rng = Rng(42);
    let mut with_calls = 0;
    for _ in 0..300 {
        let text: String = (0..rng.below(30))
            .map(|_| tokens[rng.below(tokens.len())])
            .collect();
        for kind in [ToolParserKind::JsonArray, named("f")] {
            let calls = check_streaming(&kind, None, &text);
            with_calls += usize::from(kind == ToolParserKind::JsonArray && !calls.is_empty());
            assert!(check_streaming(&kind, Some(1), &text).len() <= 1);
        }
    }
    // Many of the texts hold calls (114 of 300 for JsonArray), not only garbage.
    assert!(with_calls > 80, "{with_calls}");
}

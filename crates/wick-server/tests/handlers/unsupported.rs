//! API compatibility: each field that would change the output and that wick does not
//! apply is a 400 naming it (and never reaches the backend); fields that do not change
//! the output, and unknown ones, are accepted.

use crate::{assert_error, Harness};
use serde_json::{json, Value};

fn with(base: Value, extra: Value) -> Value {
    let mut body = base;
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn chat(extra: Value) -> Value {
    with(
        json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        extra,
    )
}

fn completion(extra: Value) -> Value {
    with(
        json!({"model": "fake", "prompt": "hi", "max_tokens": 4}),
        extra,
    )
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// Posts `body` to `path` and checks it is a 400 with `param`.
async fn refused(h: &Harness, path: &str, body: Value, param: &str) {
    let (status, v) = h.post(path, &body).await;
    let e = assert_error(status, &v, 400);
    assert_eq!(e["param"], param, "{body} -> {v}");
    assert!(
        h.backend.submitted().is_empty(),
        "{body} reached the backend"
    );
}

#[tokio::test]
async fn audio_is_refused() {
    let h = Harness::start().await;
    let body = chat(json!({"audio": {"voice": "alloy", "format": "wav"}}));
    refused(&h, "/v1/chat/completions", body, "audio").await;
}

#[tokio::test]
async fn modalities_other_than_text_are_refused() {
    let h = Harness::start().await;
    let body = chat(json!({"modalities": ["text", "audio"]}));
    refused(&h, "/v1/chat/completions", body, "modalities").await;
}

#[tokio::test]
async fn prediction_is_refused() {
    let h = Harness::start().await;
    let body = chat(json!({"prediction": {"type": "content", "content": "x"}}));
    refused(&h, "/v1/chat/completions", body, "prediction").await;
}

#[tokio::test]
async fn best_of_above_one_is_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "/v1/completions",
        completion(json!({"best_of": 2})),
        "best_of",
    )
    .await;
}

#[tokio::test]
async fn suffix_is_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "/v1/completions",
        completion(json!({"suffix": "!"})),
        "suffix",
    )
    .await;
}

#[tokio::test]
async fn non_text_content_parts_are_refused() {
    let h = Harness::start().await;
    for part in [
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}),
        json!({"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}),
        json!({"type": "file", "file": {"file_id": "f"}}),
    ] {
        let body = chat(json!({"messages": [{"role": "user", "content": [part]}]}));
        refused(&h, "/v1/chat/completions", body, "messages").await;
    }
}

/// The fake model's word-level tokenizer has no byte-level or byte-fallback decoder, so
/// no token trie can be built: every constrained request is a 400 saying so (the
/// constraint is never ignored), and nothing reaches the backend.
#[tokio::test]
async fn constraints_are_refused_where_the_tokenizer_cannot_be_constrained() {
    let h = Harness::start().await;
    for (field, value) in [
        ("response_format", json!({"type": "json_object"})),
        (
            "response_format",
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ),
        ("guided_json", json!({"type": "object"})),
        ("guided_regex", json!("[a-z]+")),
        ("guided_choice", json!(["a", "b"])),
        ("guided_grammar", json!("start: \"a\"")),
        ("structured_outputs", json!({"choice": ["a", "b"]})),
    ] {
        for (path, body) in [
            ("/v1/chat/completions", chat(json!({field: value}))),
            ("/v1/completions", completion(json!({field: value}))),
        ] {
            let (status, v) = h.post(path, &body).await;
            let e = assert_error(status, &v, 400);
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains("structured output is unavailable"), "{v}");
            assert!(
                h.backend.submitted().is_empty(),
                "{body} reached the backend"
            );
        }
    }
    // A forced tool choice is a constraint too.
    let body = chat(json!({"tools": weather_tool(), "tool_choice": "required"}));
    let (status, v) = h.post("/v1/chat/completions", &body).await;
    assert_error(status, &v, 400);
    // `text` constrains nothing and is served.
    let body = chat(json!({"response_format": {"type": "text"}}));
    let (status, v) = h.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn malformed_or_conflicting_constraints_are_refused_by_name() {
    let h = Harness::start().await;
    let cases = [
        (
            chat(json!({"response_format": {"type": "xml"}})),
            "response_format.type",
        ),
        (
            chat(json!({"response_format": {"type": "json_schema"}})),
            "response_format.json_schema",
        ),
        (
            chat(json!({"response_format": {"type": "json_object"}, "guided_regex": "a"})),
            "guided_regex",
        ),
        (
            completion(json!({"structured_outputs": {"structural_tag": "x"}})),
            "structured_outputs.structural_tag",
        ),
        (completion(json!({"guided_choice": []})), "guided_choice"),
        (
            chat(json!({"guided_whitespace_pattern": " "})),
            "guided_whitespace_pattern",
        ),
        (
            chat(json!({"tools": weather_tool(), "tool_choice": "required",
                "response_format": {"type": "json_object"}})),
            "response_format",
        ),
        (
            chat(json!({"tools": weather_tool(),
                "tool_choice": {"type": "function", "function": {"name": "nope"}}})),
            "tool_choice",
        ),
        (
            chat(json!({"tool_choice": {"type": "function", "function": {"name": "x"}}})),
            "tool_choice",
        ),
        (chat(json!({"tool_choice": "required"})), "tool_choice"),
    ];
    for (body, param) in cases {
        let path = if body.get("messages").is_some() {
            "/v1/chat/completions"
        } else {
            "/v1/completions"
        };
        refused(&h, path, body, param).await;
    }
}

#[tokio::test]
async fn tool_choice_auto_without_tools_or_parser_is_refused() {
    let h = Harness::start().await;
    refused(
        &h,
        "/v1/chat/completions",
        chat(json!({"tool_choice": "auto"})),
        "tool_choice",
    )
    .await;
    let h = Harness::with(crate::Options {
        tool_parser: Some(wick_server::tool_parser::ToolCallParserArg::None),
        ..Default::default()
    })
    .await;
    let body = chat(json!({"tools": weather_tool(), "tool_choice": "auto"}));
    refused(&h, "/v1/chat/completions", body, "tool_choice").await;
}

#[tokio::test]
async fn malformed_tools_are_refused() {
    let h = Harness::start().await;
    let body = chat(json!({"tools": [{"type": "custom", "custom": {"name": "x"}}]}));
    refused(&h, "/v1/chat/completions", body, "tools").await;
}

#[tokio::test]
async fn legacy_functions_are_refused() {
    let h = Harness::start().await;
    let body = chat(json!({"functions": [{"name": "f", "parameters": {}}]}));
    refused(&h, "/v1/chat/completions", body, "functions").await;
    let body = chat(json!({"function_call": "auto"}));
    refused(&h, "/v1/chat/completions", body, "function_call").await;
}

#[tokio::test]
async fn fields_that_do_not_change_the_output_are_accepted() {
    let h = Harness::start().await;
    let extra = json!({
        "user": "u1", "metadata": {"k": "v"}, "store": false, "service_tier": "auto",
        "safety_identifier": "s", "prompt_cache_key": "p", "modalities": ["text"],
        "response_format": {"type": "text"}, "audio": null, "some_future_field": 1,
        "parallel_tool_calls": true, "tool_choice": "none", "logit_bias": {"3": 1},
    });
    let (status, v) = h.post("/v1/chat/completions", &chat(extra)).await;
    assert_eq!(status, 200, "{v}");
    let extra = json!({"best_of": 1, "user": "u1", "metadata": {"k": "v"}});
    let (status, v) = h.post("/v1/completions", &completion(extra)).await;
    assert_eq!(status, 200, "{v}");
    // logit_bias is applied: it reaches the engine.
    let submitted = h.backend.submitted();
    assert_eq!(submitted[0].params.logit_bias.get(&3), Some(&1.0));
}

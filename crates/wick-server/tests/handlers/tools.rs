//! Tool calling with `tool_choice` auto: the fake model emits hermes `<tool_call>` text;
//! responses carry `tool_calls` (whole and streamed, the same calls), `finish_reason`
//! `tool_calls`, no markup in content; a tool result renders through a tool-aware
//! template.

use crate::fake_backend::{completion, Script};
use crate::{ids, Harness, Options, EOS};
use serde_json::{json, Value};
use wick_core::FinishReason;

const CALL: &str =
    "<tool_call> {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}} </tool_call>";

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

/// Scripts the fake model to say `words` then eos.
fn say(h: &Harness, words: &str) {
    let mut tokens = ids(words);
    tokens.push(EOS);
    h.backend
        .script(Script::Events(completion(&tokens, FinishReason::Stop)));
}

fn request(stream: bool) -> Value {
    json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 30, "tools": weather_tool(), "stream": stream})
}

/// (content, [(id, name, arguments)], finish_reason) of a streamed answer, reassembled.
async fn streamed(h: &Harness, body: &Value) -> (String, Vec<(String, String, String)>, String) {
    let payloads = h.stream("/v1/chat/completions", body).await;
    let (mut content, mut calls, mut finish) = (String::new(), vec![], String::new());
    for p in payloads.iter().filter(|p| *p != "[DONE]") {
        let v: Value = serde_json::from_str(p).unwrap();
        let choice = &v["choices"][0];
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_string();
        }
        let delta = &choice["delta"];
        content.push_str(delta["content"].as_str().unwrap_or(""));
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                // The first piece of a call: id, type and name.
                assert_eq!(c["type"], "function", "{p}");
                calls.push((
                    c["id"].as_str().unwrap().to_string(),
                    c["function"]["name"].as_str().unwrap().to_string(),
                    String::new(),
                ));
            } else {
                assert!(c.get("id").is_none(), "{p}");
            }
            calls[i]
                .2
                .push_str(c["function"]["arguments"].as_str().unwrap());
        }
    }
    (content, calls, finish)
}

#[tokio::test]
async fn hermes_tool_calls_are_parsed_whole_and_streamed_alike() {
    let h = Harness::start().await;
    say(&h, &format!("Hello {CALL}"));
    let (status, v) = h.post("/v1/chat/completions", &request(false)).await;
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    // The fake tokenizer's decoding puts a space before each word.
    assert_eq!(choice["message"]["content"], " Hello");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = calls[0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(args).unwrap(),
        json!({"city": "Paris"})
    );

    say(&h, &format!("Hello {CALL}"));
    let (content, streamed_calls, finish) = streamed(&h, &request(true)).await;
    assert_eq!(finish, "tool_calls");
    assert_eq!(content, " Hello");
    assert_eq!(streamed_calls.len(), 1);
    assert!(streamed_calls[0].0.starts_with("call_"));
    assert_eq!(
        (streamed_calls[0].1.as_str(), streamed_calls[0].2.as_str()),
        ("get_weather", args)
    );
}

#[tokio::test]
async fn only_tool_calls_give_null_content_and_several_calls_keep_their_order() {
    let h = Harness::start().await;
    say(&h, &format!("{CALL} {CALL}"));
    let (_, v) = h.post("/v1/chat/completions", &request(false)).await;
    let message = &v["choices"][0]["message"];
    assert!(message["content"].is_null(), "{v}");
    assert_eq!(message["tool_calls"].as_array().unwrap().len(), 2);
    say(&h, &format!("{CALL} {CALL}"));
    let (content, calls, finish) = streamed(&h, &request(true)).await;
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("", 2, "tool_calls")
    );
    // parallel_tool_calls: false keeps the first call.
    say(&h, &format!("{CALL} {CALL}"));
    let mut body = request(false);
    body["parallel_tool_calls"] = json!(false);
    let (_, v) = h.post("/v1/chat/completions", &body).await;
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn without_tools_or_with_tool_choice_none_the_markup_is_content() {
    let h = Harness::start().await;
    for extra in [json!({"tools": null}), json!({"tool_choice": "none"})] {
        say(&h, CALL);
        let mut body = request(false);
        for (k, val) in extra.as_object().unwrap() {
            body[k] = val.clone();
        }
        let (_, v) = h.post("/v1/chat/completions", &body).await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["message"]["content"], format!(" {CALL}"));
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }
}

/// A tool-aware template in the fake model's words: tools, an assistant's tool calls
/// (arguments as an object), and tool results.
const TOOL_TEMPLATE: &str = "{% for m in messages %}\
{% if m.role == 'tool' %}tool: {{ m.content }} {% if m.tool_call_id %}end {% endif %}\
{% elif m.tool_calls %}assistant: {% for c in m.tool_calls %}<tool_call> {{ c.function.arguments.city }} </tool_call> {% endfor %}\
{% else %}{{ m.role }}: {{ m.content }} {% endif %}{% endfor %}\
{% if tools %}system: {{ tools[0].function.name }} {% endif %}assistant:";

#[tokio::test]
async fn a_tool_result_round_trips_through_a_tool_aware_template() {
    let h = Harness::with(Options {
        template: Some(TOOL_TEMPLATE),
        // auto: the template mentions <tool_call>, so hermes.
        tool_parser: Some(wick_server::tool_parser::ToolCallParserArg::Auto),
        ..Default::default()
    })
    .await;
    say(&h, CALL);
    let (_, v) = h.post("/v1/chat/completions", &request(false)).await;
    let assistant = v["choices"][0]["message"].clone();
    let call_id = assistant["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(assistant["content"].is_null());
    say(&h, "the end");
    let body = json!({"model": "fake", "max_tokens": 30, "tools": weather_tool(),
    "messages": [
        {"role": "user", "content": "hi"},
        assistant,
        {"role": "tool", "tool_call_id": call_id, "content": "story"},
    ]});
    let (status, v) = h.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], " the end");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let prompt = &h.backend.submitted()[1].prompt_token_ids;
    let unk = 0;
    let words: Vec<u32> = ids(
        "user: hi assistant: <tool_call> Paris </tool_call> tool: story end system: assistant:",
    );
    // get_weather is not a word of the fake vocabulary: <unk> where the tool name goes.
    let mut want = words[..10].to_vec();
    want.push(unk);
    want.extend(&words[10..]);
    assert_eq!(prompt, &want);
}

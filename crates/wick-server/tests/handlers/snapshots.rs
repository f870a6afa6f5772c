//! Every response shape pinned by an insta snapshot (tests/handlers/snapshots/): chat and
//! completion bodies (with logprobs), their streamed chunks (role, delta, finish and
//! usage chunks), the error body, the model list, tokenize/detokenize, health and ready.
//! Response ids and `created` are redacted ([`redact`]); everything else is
//! deterministic here.

use crate::fake_backend::{finished, Script};
use crate::{ids, Harness};
use insta::assert_json_snapshot;
use serde_json::{json, Value};
use wick_core::{FinishReason, TokenEvent, TokenLogprobs};
use wick_engine::EngineHealth;
use wick_test_support::sse_chunks;

/// Tokens of completion 0 with logprobs (the next id as the runner-up), then `Finished`.
fn with_logprobs(words: &str, finish: FinishReason) -> Script {
    let ids = ids(words);
    let mut events: Vec<TokenEvent> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| TokenEvent::Token {
            index: 0,
            id,
            logprobs: Some(TokenLogprobs {
                logprob: -0.25 * (i + 1) as f32,
                top: vec![(id, -0.25 * (i + 1) as f32), (id + 1, -2.5)],
            }),
            finish_reason: (i + 1 == ids.len()).then_some(finish),
        })
        .collect();
    events.push(finished(ids.len()));
    Script::Events(events)
}

/// `v` (an object or a list of them) with `id` and `created` replaced by placeholders.
fn redact(v: impl Into<Value>) -> Value {
    let mut v = v.into();
    let mut one = |o: &mut Value| {
        for (key, placeholder) in [("id", "[id]"), ("created", "[created]")] {
            if let Some(field) = o.get_mut(key) {
                *field = json!(placeholder);
            }
        }
    };
    match &mut v {
        Value::Array(items) => items.iter_mut().for_each(&mut one),
        o => one(o),
    }
    v
}

#[tokio::test]
async fn chat_shapes() {
    let h = Harness::start().await;
    h.backend
        .script(with_logprobs("Hello world", FinishReason::Stop));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 2});
    let (s, v) = h.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200);
    assert_json_snapshot!("chat_completion", redact(v));

    h.backend
        .script(with_logprobs("Hello world", FinishReason::Length));
    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = sse_chunks(&h.stream("/v1/chat/completions", &body).await);
    assert_json_snapshot!("chat_completion_chunks", redact(chunks));
}

#[tokio::test]
async fn completion_shapes() {
    let h = Harness::start().await;
    h.backend
        .script(with_logprobs("world the", FinishReason::Length));
    let body = json!({"prompt": "Hello", "max_tokens": 2, "logprobs": 2});
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_eq!(s, 200);
    assert_json_snapshot!("completion", redact(v));

    h.backend
        .script(with_logprobs("world the", FinishReason::Length));
    let body = json!({"prompt": "Hello", "max_tokens": 2, "stream": true,
        "stream_options": {"include_usage": true}});
    let chunks = sse_chunks(&h.stream("/v1/completions", &body).await);
    assert_json_snapshot!("completion_chunks", redact(chunks));

    // Echo: the prompt first, whole and streamed.
    let body = json!({"prompt": "Hello", "max_tokens": 1, "echo": true});
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_eq!(s, 200);
    assert_json_snapshot!("completion_echo", redact(v));
}

#[tokio::test]
async fn other_shapes() {
    let h = Harness::start().await;
    let (_, v) = h.get("/v1/models").await;
    assert_json_snapshot!("models", v);
    let (_, v) = h.post("/tokenize", &json!({"prompt": "Hello world"})).await;
    assert_json_snapshot!("tokenize", v);
    let (_, v) = h
        .post(
            "/tokenize",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_json_snapshot!("tokenize_chat", v);
    let (_, v) = h.post("/detokenize", &json!({"tokens": [3, 4]})).await;
    assert_json_snapshot!("detokenize", v);
    let (_, v) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [], "model": "fake"}),
        )
        .await;
    assert_json_snapshot!("error", v);
    let (_, v) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "model": "nope"}),
        )
        .await;
    assert_json_snapshot!("error_model_not_found", v);
    let (_, v) = h.get("/health").await;
    assert_json_snapshot!("health_ok", v);
    let (_, v) = h.get("/ready").await;
    assert_json_snapshot!("ready_ok", v);
    h.backend.set_health(EngineHealth::Stalled { secs: 61.0 });
    let (_, v) = h.get("/ready").await;
    assert_json_snapshot!("ready_stalled", v);
    h.backend.set_health(EngineHealth::Healthy);
    h.state.start_draining();
    let (_, v) = h.get("/health").await;
    assert_json_snapshot!("health_draining", v);
    let (_, v) = h.get("/ready").await;
    assert_json_snapshot!("ready_draining", v);
}

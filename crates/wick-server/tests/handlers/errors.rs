//! Every error status in OpenAI's shape: 400 (bad parameter, bad JSON, context too long),
//! 401, 404 (model, route), 405, 413 (declared and streamed bodies), 429 and 503 from the
//! backend, 503 while loading or draining, and 500 when the engine fails mid-request.

use crate::fake_backend::{choice_tokens, Script};
use crate::{assert_error, ids, Harness, Options};
use serde_json::json;
use wick_core::{ErrorKind, FinishReason, TokenEvent, WickError};

fn chat(extra: serde_json::Value) -> serde_json::Value {
    let mut body =
        json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn bad_requests_are_400_404_405_and_never_reach_the_backend() {
    let h = Harness::start().await;
    let cases = [
        (chat(json!({"temperature": 2.5})), 400, Some("temperature")),
        (chat(json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (chat(json!({"n": 0})), 400, Some("n")),
        (
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            Some("stop"),
        ),
        (chat(json!({"messages": []})), 400, Some("messages")),
        (chat(json!({"top_logprobs": 2})), 400, Some("top_logprobs")),
        (chat(json!({"temperature": "hot"})), 400, None),
        (chat(json!({"model": "gpt-4"})), 404, Some("model")),
    ];
    for (body, want, param) in cases {
        let (status, v) = h.post("/v1/chat/completions", &body).await;
        let e = assert_error(status, &v, want);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{body} -> {v}");
        }
    }
    let r = h
        .client
        .post(h.url("/v1/completions"))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_error(r.status().as_u16(), &r.json().await.unwrap(), 400);
    let (s, v) = h.get("/v1/nothing").await;
    assert_error(s, &v, 404);
    let (s, v) = h.get("/v1/chat/completions").await;
    assert_error(s, &v, 405);
    assert!(h.backend.submitted().is_empty());
}

#[tokio::test]
async fn the_context_limit_is_the_engines_check() {
    let h = Harness::start().await;
    // Given max_tokens: the backend refuses (EngineInfo::check_context) with its message.
    let (s, v) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello world", "max_tokens": 1000}),
        )
        .await;
    let e = assert_error(s, &v, 400);
    assert_eq!(e["code"], "context_length_exceeded");
    let message = e["message"].as_str().unwrap().to_string();
    // No max_tokens on chat: the rest of the context, refused by the same check when
    // the prompt fills it.
    let long = vec!["hi"; crate::MAX_MODEL_LEN].join(" ");
    let (s, v) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}]}),
        )
        .await;
    let e = assert_error(s, &v, 400);
    assert_eq!(e["code"], "context_length_exceeded");
    let prefix = |m: &str| m.split(';').next().unwrap().to_string();
    assert_eq!(prefix(e["message"].as_str().unwrap()), prefix(&message));
    // A chat without max_tokens gets the rest of the context.
    let (s, _) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(s, 200);
    let submitted = h.backend.submitted();
    let last = submitted.last().unwrap();
    assert_eq!(
        last.params.max_tokens + last.prompt_token_ids.len(),
        crate::MAX_MODEL_LEN
    );
}

#[tokio::test]
async fn api_keys_are_checked_401() {
    let h = Harness::with(Options {
        api_keys: vec!["sk-one".into()],
        ..Options::default()
    })
    .await;
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    for auth in [None, Some("Bearer sk-two"), Some("sk-one")] {
        let mut req = h.client.post(h.url("/v1/completions")).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        let e = assert_error(r.status().as_u16(), &r.json().await.unwrap(), 401);
        assert_eq!(e["code"], "invalid_api_key");
    }
    let r = h
        .client
        .post(h.url("/v1/completions"))
        .bearer_auth("sk-one")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Probes stay open.
    assert_eq!(h.get("/health").await.0, 200);
    assert_eq!(h.get("/ready").await.0, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let h = Harness::with(Options {
        max_body_bytes: Some(1024),
        ..Options::default()
    })
    .await;
    let big = json!({"prompt": "hi ".repeat(1000), "max_tokens": 1});
    let (s, v) = h.post("/v1/completions", &big).await;
    assert_error(s, &v, 413);
    // No content length: cut while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let sent = h
        .client
        .post(h.url("/v1/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = sent {
        assert_error(r.status().as_u16(), &r.json().await.unwrap(), 413);
    }
    assert!(h.backend.submitted().is_empty());
}

#[tokio::test]
async fn backend_refusals_are_429_and_503() {
    let h = Harness::start().await;
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    h.backend.script(Script::Refuse(WickError::new(
        ErrorKind::Overloaded,
        "busy",
    )));
    let (s, v) = h.post("/v1/completions", &body).await;
    let e = assert_error(s, &v, 429);
    assert_eq!(e["type"], "rate_limit_error");
    h.backend.script(Script::Refuse(WickError::new(
        ErrorKind::Unavailable,
        "stopped",
    )));
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_error(s, &v, 503);
}

#[tokio::test]
async fn loading_and_draining_are_503() {
    let h = Harness::with(Options {
        loading: true,
        ..Options::default()
    })
    .await;
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_error(s, &v, 503);
    let (s, v) = h.get("/v1/models").await;
    assert_error(s, &v, 503);
    h.finish_loading();
    assert_eq!(h.post("/v1/completions", &body).await.0, 200);
    h.state.start_draining();
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_error(s, &v, 503);
    assert_eq!(h.backend.submitted().len(), 1);
}

#[tokio::test]
async fn an_engine_failure_mid_request_is_a_500_or_an_ending_error_event() {
    let h = Harness::start().await;
    let failing = || {
        let mut events = choice_tokens(0, &ids("Hello world"), FinishReason::Length);
        events.truncate(1);
        events.push(TokenEvent::Error(WickError::internal(
            "the engine stopped: panicked at step 7",
        )));
        Script::Events(events)
    };
    h.backend.script(failing());
    let (s, v) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 5}),
        )
        .await;
    let e = assert_error(s, &v, 500);
    assert_eq!(e["type"], "internal_error");
    assert!(e["message"].as_str().unwrap().contains("panicked"), "{v}");

    // Streaming: the text so far, then the error event, then the end (no [DONE]).
    h.backend.script(failing());
    let payloads = h
        .stream(
            "/v1/chat/completions",
            &chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    let last: serde_json::Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_error(500, &last, 500);
    assert!(!payloads.iter().any(|p| p == "[DONE]"), "{payloads:?}");
    assert!(payloads[1].contains("Hello"), "{payloads:?}");

    // A stream that ends without its last event (the engine went away) is a 500 too.
    h.backend.script(Script::Events(choice_tokens(
        0,
        &ids("Hello"),
        FinishReason::Length,
    )));
    let (s, v) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 5}),
        )
        .await;
    assert_error(s, &v, 500);
}

//! SSE framing (role chunk, deltas, finish chunk, usage chunk, `[DONE]`), usage
//! accounting whole and streamed, stop strings ending a completion in the backend, and a
//! client that leaves mid-stream dropping the backend's stream.

use crate::fake_backend::{choice_tokens, completion, finished, tokens, Script};
use crate::{ids, Harness};
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use wick_core::FinishReason;
use wick_test_support::sse_chunks;

#[tokio::test]
async fn chat_stream_framing_with_usage() {
    let h = Harness::start().await;
    h.backend.script(Script::Events(completion(
        &ids("Hello world the end"),
        FinishReason::Length,
    )));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "stream": true, "stream_options": {"include_usage": true}});
    let chunks = sse_chunks(&h.stream("/v1/chat/completions", &body).await);
    // Role chunk, one delta per token, the finish chunk, the usage chunk.
    assert_eq!(chunks.len(), 1 + 4 + 1 + 1, "{chunks:#?}");
    let id = &chunks[0]["id"];
    assert!(chunks
        .iter()
        .all(|c| &c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    // Word-level decoding joins words with spaces: the first has one too (the prompt
    // came before it).
    assert_eq!(text, " Hello world the end");
    assert!(chunks[..5]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    assert!(chunks[..6].iter().all(|c| c.get("usage").is_none()));
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[6]["choices"], json!([]));
    // "user: hi\nassistant:" is 3 tokens.
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
    // Without include_usage: no usage chunk.
    h.backend.script(Script::Events(completion(
        &ids("Hello"),
        FinishReason::Stop,
    )));
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "stream": true});
    let chunks = sse_chunks(&h.stream("/v1/chat/completions", &body).await);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:#?}"
    );
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn usage_counts_every_prompt_and_choice() {
    let h = Harness::start().await;
    // Two prompts, n = 2 each: each submit answers its two choices.
    for _ in 0..2 {
        let mut events = choice_tokens(0, &ids("Hello world"), FinishReason::Length);
        events.extend(choice_tokens(1, &ids("the"), FinishReason::Stop));
        events.push(finished(3));
        h.backend.script(Script::Events(events));
    }
    let body = json!({"prompt": ["Hello", "hi a story"], "n": 2, "max_tokens": 2});
    let (s, v) = h.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10})
    );
    let texts: Vec<&str> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, [" Hello world", " the", " Hello world", " the"]);
    let submitted = h.backend.submitted();
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[1].prompt_token_ids, ids("hi a story"));
    assert_eq!(submitted[1].params.n, 2);

    // The same streamed: the usage chunk agrees.
    for _ in 0..2 {
        let mut events = choice_tokens(0, &ids("Hello world"), FinishReason::Length);
        events.extend(choice_tokens(1, &ids("the"), FinishReason::Stop));
        events.push(finished(3));
        h.backend.script(Script::Events(events));
    }
    let mut body = body;
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let chunks = sse_chunks(&h.stream("/v1/completions", &body).await);
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10})
    );
    let finishes = chunks
        .iter()
        .filter(|c| {
            c["choices"]
                .get(0)
                .is_some_and(|ch| !ch["finish_reason"].is_null())
        })
        .count();
    assert_eq!(finishes, 4);
}

#[tokio::test]
async fn a_stop_string_ends_the_completion_in_the_backend() {
    let h = Harness::start().await;
    h.backend
        .script(Script::Endless(tokens(0, &ids("Hello world STOP the")), 5));
    let (s, v) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 30, "stop": ["STOP"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap().trim(),
        "Hello world"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(h.backend.finished_completions().len(), 1);
    assert_eq!(h.backend.live_streams(), 0);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_drops_the_backend_stream() {
    let h = Harness::start().await;
    h.backend
        .script(Script::Endless(tokens(0, &ids("Hello")), 4));
    let r = h
        .client
        .post(h.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 50, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut bytes = r.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        let chunk = bytes.next().await.unwrap().unwrap();
        seen += wick_test_support::sse_payloads(std::str::from_utf8(&chunk).unwrap()).len();
    }
    assert_eq!(h.backend.live_streams(), 1);
    assert_eq!(h.state.in_flight(), 1);
    drop(bytes);
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.backend.dropped_streams() < 1 {
        assert!(
            Instant::now() < deadline,
            "the backend stream was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.backend.live_streams(), 0);
    // And the request no longer counts as in flight.
    while h.state.in_flight() > 0 {
        assert!(Instant::now() < deadline, "still in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

//! An engine that fails, through the test-only `--fault-inject` flag (the binary the
//! tests build has the `fault-injection` feature; release builds do not): a panic ends
//! in-flight requests with errors instead of hanging, turns `/health` and `/ready` 503,
//! and the process exits non-zero; a stall turns them 503 with a reason saying so.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Polls `path` until it answers 503; returns the body.
async fn wait_503(server: &Server, path: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = server.client.get(server.url(path)).send().await {
            if r.status() == 503 {
                return r.json().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "{path} never went 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_requests_turns_probes_503_and_exits_non_zero() {
    let mut server = Server::start(&["--fault-inject", "panic-at-step:12"]).await;
    let body = json!({"prompt": "Count: one two three", "max_tokens": 200, "ignore_eos": true});
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    // Two requests in flight when the engine panics: one streamed, one whole.
    let stream = server.send_json("/v1/completions", &streamed).await;
    assert_eq!(stream.status(), 200);
    let whole = server.send_json("/v1/completions", &body);
    let read_stream = async {
        let mut text = String::new();
        let mut bytes = stream.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            match chunk {
                Ok(c) => text.push_str(std::str::from_utf8(&c).unwrap()),
                Err(_) => break,
            }
        }
        text
    };
    let (whole, text) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(whole, read_stream)
    })
    .await
    .expect("in-flight requests hung after the engine panicked");

    // Whole: a 500 in OpenAI's shape naming the panic (or, had it arrived after the
    // panic, a 503 refusal).
    let status = whole.status().as_u16();
    let v: Value = whole.json().await.unwrap();
    assert!(status == 500 || status == 503, "{status} {v}");
    assert_error(status, &v, status);
    // Streamed: an error event ends it, without [DONE].
    let payloads = sse_payloads(&text);
    assert!(!payloads.iter().any(|p| p == "[DONE]"), "{payloads:?}");
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_error(500, &last, 500);
    assert!(
        last["error"]["message"].as_str().unwrap().contains("panic"),
        "{last}"
    );

    // Both probes 503 with the reason, until the process exits non-zero.
    for path in ["/health", "/ready"] {
        let v = wait_503(&server, path, Duration::from_secs(5)).await;
        assert_eq!(v["status"], "dead", "{v}");
        assert!(v["reason"].as_str().unwrap().contains("panic"), "{v}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(code) = server.try_wait() {
            break code;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}");
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains("the engine has died"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_engine_turns_probes_503() {
    let server = Server::start(&[
        "--fault-inject",
        "stall-at-step:3",
        "--engine-stall-timeout",
        "1",
    ])
    .await;
    let body = json!({"prompt": "Count:", "max_tokens": 50, "ignore_eos": true, "stream": true});
    let held = server.send_json("/v1/completions", &body).await;
    assert_eq!(held.status(), 200);
    for path in ["/health", "/ready"] {
        let v = wait_503(&server, path, Duration::from_secs(30)).await;
        assert_eq!(v["status"], "stalled", "{v}");
        assert!(v["reason"].as_str().unwrap().contains("no progress"), "{v}");
    }
    drop(held);
}

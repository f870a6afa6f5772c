//! Clients that leave, many clients at once, and shutdown: a dropped stream or request
//! frees its blocks (seen in /metrics); 64 concurrent streams each equal their solo
//! result; SIGTERM drains in-flight requests (meanwhile /ready and new requests answer
//! 503, /health stays 200) and exits 0.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use wick_test_support::golden_cases;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnects_free_blocks_and_64_concurrent_streams_match_solo() {
    let server = Server::start(&[]).await;
    // Mid-stream disconnect.
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": true, "stream": true});
    let r = server.send_json("/v1/completions", &body).await;
    let mut bytes = r.bytes_stream();
    let mut seen = 0;
    while seen < 3 {
        let chunk = bytes.next().await.unwrap().unwrap();
        seen += sse_payloads(std::str::from_utf8(&chunk).unwrap()).len();
    }
    assert!(server.metric("wick:kv_cache_used_blocks").await > 0.0);
    drop(bytes);
    server.wait_idle().await;
    // A non-streaming request whose client times out.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = json!({"prompt": "Tell me a long story.", "max_tokens": 400, "ignore_eos": true});
    assert!(quick
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .is_err());
    server.wait_idle().await;
    let m = server.metrics().await;
    assert_eq!(metric_value(&m, "wick:kv_cache_used_blocks"), 0.0);

    // 64 concurrent streams: every one equals its solo (greedy) result.
    let cases = golden_cases();
    let request = |i: usize| {
        let c = &cases[i % cases.len()];
        let mut b = match &c.prompt {
            Some(p) => json!({"prompt": p}),
            None => json!({"messages": c.messages}),
        };
        b["max_tokens"] = json!(12);
        b["temperature"] = json!(0);
        b["stream"] = json!(true);
        let path = if c.prompt.is_some() {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        (path, b)
    };
    let mut solo = vec![];
    for i in 0..cases.len() {
        let (path, b) = request(i);
        solo.push(streamed_text(
            &sse_chunks(&server.stream(path, &b).await),
            0,
        ));
    }
    let all = futures_util::future::join_all((0..64).map(|i| {
        let (path, b) = request(i);
        let server = &server;
        async move { streamed_text(&sse_chunks(&server.stream(path, &b).await), 0) }
    }))
    .await;
    assert_eq!(all.len(), 64);
    for (i, text) in all.iter().enumerate() {
        assert_eq!(text, &solo[i % cases.len()], "request {i}");
    }
    server.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    sigterm_drains_then_exits_0(Server::start(&["--drain-timeout", "300"]).await).await;
}

/// SIGTERM with a stream in flight: /ready and new requests 503, /health 200, the stream
/// completes, exit 0. `server` serves SmolLM2 with a long --drain-timeout (over HTTP or
/// HTTPS: tls.rs runs this too).
pub async fn sigterm_drains_then_exits_0(mut server: Server) {
    let body =
        json!({"prompt": "Count slowly:", "max_tokens": 128, "ignore_eos": true, "stream": true});
    let r = server.send_json("/v1/completions", &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let mut text = String::from_utf8(first.to_vec()).unwrap();

    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // While draining: not ready (503), still alive (health 200), new requests get 503
    // (the listener stays open).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.get("/ready").await;
        if r.status() == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["status"], "draining", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "ready never went 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = server.get("/health").await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "draining", "{v}");
    let (s, v) = server
        .post("/v1/completions", &json!({"prompt": "hi", "max_tokens": 2}))
        .await;
    assert_error(s, &v, 503);
    // The in-flight request completes in full.
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let chunks = sse_chunks(&sse_payloads(&text));
    let finish: Vec<_> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "length");
    // And the process exits with 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = server.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, Some(0));
}

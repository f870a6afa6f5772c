//! Bad input gets OpenAI's error JSON with the right status and never disturbs the
//! server: 400s, 401, 404, 405, 413, 429.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_openai_errors() {
    let server = Server::start(&["--max-body-size", "64KiB"]).await;
    let chat = |extra: serde_json::Value| {
        let mut body = json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (chat(json!({"max_tokens": 0})), 400, Some("max_tokens")),
        (
            chat(json!({"max_completion_tokens": -3})),
            400,
            Some("max_completion_tokens"),
        ),
        (chat(json!({"temperature": 2.5})), 400, Some("temperature")),
        (chat(json!({"temperature": -0.1})), 400, Some("temperature")),
        (chat(json!({"top_p": 0})), 400, Some("top_p")),
        (chat(json!({"top_p": 1.01})), 400, Some("top_p")),
        (chat(json!({"n": 0})), 400, Some("n")),
        (
            chat(json!({"stop": ["a", "b", "c", "d", "e"]})),
            400,
            Some("stop"),
        ),
        (
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            Some("top_logprobs"),
        ),
        (chat(json!({"max_tokens": 100000})), 400, None),
        (chat(json!({"temperature": "hot"})), 400, None),
        (chat(json!({"messages": "hi"})), 400, None),
        (chat(json!({"messages": []})), 400, Some("messages")),
        (
            chat(json!({"messages": [{"content": "no role"}]})),
            400,
            Some("messages"),
        ),
        (
            chat(json!({"logit_bias": {"abc": 1}})),
            400,
            Some("logit_bias"),
        ),
        (chat(json!({"model": "gpt-4"})), 404, Some("model")),
    ];
    for (body, want, param) in cases {
        let (status, v) = server.post("/v1/chat/completions", &body).await;
        assert_error(status, &v, want);
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{body} -> {v}");
        }
    }
    let (s, v) = server
        .post("/v1/chat/completions", &chat(json!({"max_tokens": 100000})))
        .await;
    assert_error(s, &v, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");

    // Completions: out-of-vocabulary ids, empty prompt, wrong prompt type.
    for body in [
        json!({"prompt": [1, 2, 999999], "max_tokens": 2}),
        json!({"prompt": "", "max_tokens": 2}),
        json!({"prompt": {"text": "x"}, "max_tokens": 2}),
        json!({"prompt": [], "max_tokens": 2}),
    ] {
        let (s, v) = server.post("/v1/completions", &body).await;
        assert_error(s, &v, 400);
    }

    // Malformed JSON, non-JSON, empty body.
    for raw in ["{\"messages\": [", "not json", ""] {
        let r = server
            .client
            .post(server.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 400);
    }

    // Unknown route and wrong method.
    let r = server.get("/v1/nothing").await;
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 404);
    let r = server.get("/v1/chat/completions").await;
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 405);

    // Over the body limit, with and without a content length.
    // The server closes a connection whose body it did not read: send these on
    // connections of their own, so the shared client never reuses a closed one.
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let big = json!({"prompt": "x".repeat(70 * 1024), "max_tokens": 1});
    let r = unpooled
        .post(server.url("/v1/completions"))
        .json(&big)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 413);
    // Without a content length the limit is hit while reading; the server answers 413
    // at once and closes, which the client may see as a cut connection instead.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b' '; 1024])).collect();
    let sent = unpooled
        .post(server.url("/v1/completions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    if let Ok(r) = sent {
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 413);
    }
    let m = server.metrics().await;
    assert!(m.contains("status=\"413\""), "{m}");

    // Unknown fields are ignored; the server still answers normally after all that.
    let (s, v) = server
        .post(
            "/v1/chat/completions",
            &chat(json!({"frobnicate": {"x": 1}, "tools": [], "user": "u1"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let m = server.metrics().await;
    assert!(m.contains("status=\"400\""), "{m}");
    // Nothing the bad requests did stays behind in the engine.
    server.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_and_flags_come_from_a_config_file() {
    // Keys (and a chat template override) given through --config.
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
    )
    .unwrap();
    let config = dir.path().join("wick.toml");
    std::fs::write(
        &config,
        format!(
            "api-key = [\"sk-one\", \"sk-two\"]\nchat_template = {:?}\n",
            template.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]).await;
    let body = json!({"prompt": "Hello", "max_tokens": 2});
    let url = server.url("/v1/completions");
    for auth in [
        None,
        Some("Bearer sk-wrong"),
        Some("Bearer sk-on"),
        Some("sk-one"),
    ] {
        let mut req = server.client.post(&url).json(&body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 401);
    }
    for key in ["sk-one", "sk-two"] {
        let r = server
            .client
            .post(&url)
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = server.get("/v1/models").await;
    assert_eq!(r.status(), 401);
    for open in ["/health", "/ready", "/metrics"] {
        let r = server.get(open).await;
        assert_eq!(r.status(), 200, "{open}");
    }
    // The --chat-template file replaced the model's template.
    let r = server
        .client
        .post(server.url("/tokenize"))
        .bearer_auth("sk-two")
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let ids: Vec<u32> =
        serde_json::from_value(r.json::<serde_json::Value>().await.unwrap()["tokens"].clone())
            .unwrap();
    let r = server
        .client
        .post(server.url("/detokenize"))
        .bearer_auth("sk-two")
        .json(&json!({ "tokens": ids }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["prompt"],
        "[user] hi\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiting_queue_answers_429_and_keeps_serving() {
    let server = Server::start(&["--max-num-seqs", "1", "--max-waiting", "2"]).await;
    let long = json!({"prompt": "Count: one two three", "max_tokens": 200, "ignore_eos": true, "stream": true});
    // One runs, two wait; further requests are refused at once (how many of the six
    // get in depends on whether the first has started when the others arrive).
    let mut held = vec![];
    let mut refused = 0;
    for _ in 0..6 {
        let r = server.send_json("/v1/completions", &long).await;
        match r.status().as_u16() {
            200 => held.push(r),
            429 => {
                refused += 1;
                assert_error(429, &r.json().await.unwrap(), 429);
            }
            s => panic!("status {s}"),
        }
    }
    assert!(
        held.len() >= 2 && held.len() <= 3,
        "{} accepted",
        held.len()
    );
    assert_eq!(held.len() + refused, 6);
    drop(held);
    // Once the engine has seen the dropped streams (within a step), requests get in again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = server
            .post(
                "/v1/completions",
                &json!({"prompt": "Hello", "max_tokens": 2}),
            )
            .await;
        if s == 200 {
            break;
        }
        assert_error(s, &v, 429);
        assert!(std::time::Instant::now() < deadline, "still refused: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.wait_idle().await;
}

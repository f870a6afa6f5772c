//! Every endpoint against a real server: golden greedy outputs through chat and
//! completions (whole and streamed), usage, stop strings across token boundaries,
//! multi-byte text in streams, n=2, logprobs, seeds, tokenize/detokenize, models, health.

use crate::support::*;
use serde_json::{json, Value};
use wick_test_support::{comparable_len, golden_cases, Case};

/// What the golden case's greedy output must look like as text: exact when there is no
/// near tie, else a prefix (decoded through the server).
async fn expected_text(server: &Server, case: &Case) -> (String, bool) {
    let k = comparable_len(case);
    let exact = k == case.output_token_ids.len();
    let ids: Vec<u32> = case.output_token_ids[..k]
        .iter()
        .copied()
        .filter(|&t| t != 2)
        .collect();
    (server.detokenize(&ids).await, exact)
}

fn request_for(case: &Case, stream: bool) -> (&'static str, Value) {
    let mut body = match (&case.prompt, &case.messages) {
        (Some(p), _) => json!({"model": "smollm2", "prompt": p}),
        (None, Some(m)) => json!({"model": "smollm2", "messages": m}),
        _ => panic!("case {} has no prompt", case.id),
    };
    body["max_tokens"] = json!(case.max_tokens);
    body["temperature"] = json!(0);
    body["stream"] = json!(stream);
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    let path = if case.prompt.is_some() {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    };
    (path, body)
}

fn check_text(case: &Case, got: &str, expected: &(String, bool)) {
    if expected.1 {
        assert_eq!(got, expected.0, "{}", case.id);
    } else {
        assert!(
            got.starts_with(&expected.0),
            "{}: {got:?} vs {:?}",
            case.id,
            expected.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_api_end_to_end() {
    let server = Server::start(&[]).await;
    golden_through_chat_and_completions(&server).await;
    token_id_prompts_and_echo(&server).await;
    stop_strings_across_token_boundaries(&server).await;
    multibyte_text_streams_whole(&server).await;
    n2_logprobs_and_seeds(&server).await;
    tokenize_models_health_metrics(&server).await;
    server.wait_idle().await;
}

async fn golden_through_chat_and_completions(server: &Server) {
    for case in golden_cases() {
        let expected = expected_text(server, &case).await;
        // Whole response.
        let (path, body) = request_for(&case, false);
        let (status, v) = server.post(path, &body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .or(choice["text"].as_str())
            .unwrap();
        check_text(&case, text, &expected);
        assert_eq!(
            v["usage"]["prompt_tokens"],
            case.prompt_token_ids.len(),
            "{}",
            case.id
        );
        if expected.1 {
            assert_eq!(
                v["usage"]["completion_tokens"],
                case.output_token_ids.len(),
                "{}",
                case.id
            );
            let finish = if case.output_token_ids.len() == case.max_tokens {
                "length"
            } else {
                "stop"
            };
            assert_eq!(choice["finish_reason"], finish, "{}", case.id);
        }
        assert_eq!(
            v["usage"]["total_tokens"].as_u64(),
            Some(
                v["usage"]["prompt_tokens"].as_u64().unwrap()
                    + v["usage"]["completion_tokens"].as_u64().unwrap()
            )
        );
        assert_eq!(v["model"], "smollm2");
        assert!(v["system_fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("fp_")));
        let object = if case.prompt.is_some() {
            "text_completion"
        } else {
            "chat.completion"
        };
        assert_eq!(v["object"], object);

        // Streamed: role chunk (chat), deltas, finish chunk, usage chunk, [DONE].
        let (path, body) = request_for(&case, true);
        let chunks = sse_chunks(&server.stream(path, &body).await);
        check_text(&case, &streamed_text(&chunks, 0), &expected);
        if case.messages.is_some() {
            assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
            assert_eq!(chunks[0]["object"], "chat.completion.chunk");
        }
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], v["usage"], "{}", case.id);
        let finishes: Vec<&Value> = chunks
            .iter()
            .flat_map(|c| c["choices"].as_array().unwrap())
            .filter(|c| !c["finish_reason"].is_null())
            .collect();
        assert_eq!(finishes.len(), 1, "{}", case.id);
        assert_eq!(finishes[0]["finish_reason"], choice["finish_reason"]);
    }
}

async fn token_id_prompts_and_echo(server: &Server) {
    let cases: Vec<Case> = golden_cases()
        .into_iter()
        .filter(|c| c.prompt.is_some())
        .collect();
    let ids: Vec<&Vec<u32>> = cases.iter().map(|c| &c.prompt_token_ids).collect();
    let (status, v) = server
        .post(
            "/v1/completions",
            &json!({"prompt": ids, "max_tokens": 5, "temperature": 0, "echo": true}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), cases.len());
    for (i, (c, case)) in choices.iter().zip(&cases).enumerate() {
        assert_eq!(c["index"], i);
        let text = c["text"].as_str().unwrap();
        let want = server
            .detokenize(&case.output_token_ids[..5.min(comparable_len(case))])
            .await;
        assert!(
            text.starts_with(case.prompt.as_deref().unwrap()),
            "{text:?}"
        );
        assert!(
            text[case.prompt.as_deref().unwrap().len()..].starts_with(&want),
            "{text:?}"
        );
    }
    let total: usize = cases.iter().map(|c| c.prompt_token_ids.len()).sum();
    assert_eq!(v["usage"]["prompt_tokens"], total);
}

async fn stop_strings_across_token_boundaries(server: &Server) {
    let case = golden_cases()
        .into_iter()
        .find(|c| c.prompt.is_some() && comparable_len(c) >= 8)
        .expect("a raw case with 8 sure tokens");
    let a = server.detokenize(&case.output_token_ids[..4]).await;
    let b = server.detokenize(&case.output_token_ids[..6]).await;
    // A stop string that starts inside token 4's text and ends inside token 5's.
    let boundary = a.len();
    let start = a[..boundary]
        .char_indices()
        .rev()
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    let end = b[boundary..]
        .char_indices()
        .nth(2)
        .map(|(i, _)| boundary + i)
        .unwrap_or(b.len());
    let stop = &b[start..end];
    assert!(
        !stop.is_empty() && start < boundary && end > boundary,
        "{a:?} {b:?}"
    );
    let want = &b[..b.find(stop).unwrap()];
    for stream in [false, true] {
        let body = json!({"prompt": case.prompt, "max_tokens": case.max_tokens, "temperature": 0,
                          "stop": ["never-appears", stop], "stream": stream});
        let (text, finish) = if stream {
            let chunks = sse_chunks(&server.stream("/v1/completions", &body).await);
            let finish = chunks
                .iter()
                .flat_map(|c| c["choices"].as_array().unwrap().clone())
                .find(|c| !c["finish_reason"].is_null())
                .unwrap()["finish_reason"]
                .clone();
            (streamed_text(&chunks, 0), finish)
        } else {
            let (s, v) = server.post("/v1/completions", &body).await;
            assert_eq!(s, 200, "{v}");
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(text, want, "stop {stop:?}, stream {stream}");
        assert_eq!(finish, "stop");
    }
}

async fn multibyte_text_streams_whole(server: &Server) {
    // Repeating CJK and accented text: the greedy continuation repeats it.
    let prompt =
        "日本語のテキスト。日本語のテキスト。日本語のテキスト。café crème ☕ café crème ☕";
    let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
    let (s, v) = server.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let whole = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        whole.chars().any(|c| c.len_utf8() > 1),
        "no multi-byte output: {whole:?}"
    );
    assert!(!whole.contains('\u{FFFD}'), "{whole:?}");
    let mut body = body.clone();
    body["stream"] = json!(true);
    let chunks = sse_chunks(&server.stream("/v1/completions", &body).await);
    assert_eq!(streamed_text(&chunks, 0), whole);
    for c in &chunks {
        let t = c["choices"][0]["text"].as_str().unwrap_or("");
        assert!(!t.contains('\u{FFFD}'), "split character in {t:?}");
    }
}

async fn n2_logprobs_and_seeds(server: &Server) {
    let case = golden_cases()
        .into_iter()
        .find(|c| c.messages.is_some())
        .unwrap();
    let k = comparable_len(&case).min(case.output_token_ids.len());
    // n=2 greedy with logprobs: both choices follow the golden tokens and logprobs.
    let body = json!({"messages": case.messages, "max_tokens": k, "temperature": 0, "n": 2,
                      "logprobs": true, "top_logprobs": 3});
    let (s, v) = server.post("/v1/chat/completions", &body).await;
    assert_eq!(s, 200, "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["message"], choices[1]["message"]);
    for c in choices {
        let content = c["logprobs"]["content"].as_array().unwrap();
        assert_eq!(content.len(), k);
        for (entry, step) in content.iter().zip(&case.steps) {
            let lp = entry["logprob"].as_f64().unwrap();
            assert!((lp - step.logprob).abs() < 2e-3, "{lp} vs {}", step.logprob);
            let top = entry["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 3);
            assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
            assert!(entry["bytes"].is_array());
        }
    }
    assert_eq!(v["usage"]["completion_tokens"], 2 * k);

    // Completions logprobs in the legacy shape.
    let (s, v) = server
        .post(
            "/v1/completions",
            &json!({"prompt": "The capital of France is", "max_tokens": 4,
                                         "temperature": 0, "logprobs": 2}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);

    // Seeds: same seed, same text; the other seed differs; n=2 sampled copies differ.
    let sample = |seed: u64| {
        json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 1.0,
                                    "seed": seed, "n": 2, "ignore_eos": true})
    };
    let (_, a) = server.post("/v1/completions", &sample(7)).await;
    let (_, b) = server.post("/v1/completions", &sample(7)).await;
    let (_, c) = server.post("/v1/completions", &sample(8)).await;
    assert_eq!(a["choices"], b["choices"]);
    assert_ne!(a["choices"][0]["text"], c["choices"][0]["text"]);
    assert_ne!(a["choices"][0]["text"], a["choices"][1]["text"]);
    assert_eq!(a["usage"]["completion_tokens"], 48);
}

async fn tokenize_models_health_metrics(server: &Server) {
    let case = golden_cases()
        .into_iter()
        .find(|c| c.messages.is_some())
        .unwrap();
    let (s, v) = server
        .post("/tokenize", &json!({"messages": case.messages}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tokens"], json!(case.prompt_token_ids));
    assert_eq!(v["count"], case.prompt_token_ids.len());
    let raw = golden_cases()
        .into_iter()
        .find(|c| c.prompt.is_some())
        .unwrap();
    let (_, v) = server
        .post("/tokenize", &json!({"prompt": raw.prompt}))
        .await;
    assert_eq!(v["tokens"], json!(raw.prompt_token_ids));
    assert_eq!(
        server.detokenize(&raw.prompt_token_ids).await,
        raw.prompt.unwrap()
    );

    let r = server.get("/v1/models").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "smollm2");
    assert_eq!(v["data"][0]["object"], "model");

    let r = server.get("/health").await;
    assert_eq!(r.status(), 200);

    let m = server.metrics().await;
    assert!(metric_value(&m, "wick:generation_tokens_total") > 0.0);
    assert!(metric_value(&m, "wick:prompt_tokens_total") > 0.0);
    assert!(metric_value(&m, "wick:time_to_first_token_seconds_count") > 0.0);
    assert!(
        metric_value(&m, "wick:prefix_cache_hits_total") > 0.0,
        "{m}"
    );
    assert!(m.contains("wick:http_requests_total{route=\"/v1/completions\",status=\"200\"}"));
    for name in [
        "wick:inter_token_latency_seconds_bucket",
        "wick:e2e_request_latency_seconds_sum",
        "wick:request_queue_time_seconds_count",
        "wick:num_preemptions_total",
        "wick:prefix_cache_queries_total",
        "wick:kv_cache_usage_perc",
        "wick:request_success_total",
    ] {
        metric_value(&m, name);
    }
    assert!(server
        .logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("request finished") && l.contains("ttft_s")));
}

//! LoRA adapters over HTTP, with the tiny fixtures (../shared/fixtures/tiny): every base
//! and adapter case of every model through /v1/completions at once (greedy text and
//! logprobs as transformers + PEFT computed them); /v1/models lists adapters with their
//! parent; adapters loaded and unloaded at run time under concurrent load (no request
//! lost, a stream in flight on an unloaded adapter completes, the next request gets 404);
//! malformed adapters and paths outside --lora-root get 400 and the server keeps serving;
//! the runtime API sits behind the API key.

use crate::support::*;
use futures_util::future::join_all;
use serde_json::{json, Value};
use std::path::Path;
use wick_test_support::tiny::{TinyGolden, TinyModel, MAX_TOKENS};
use wick_test_support::{comparable_len, Case};

/// `--lora-modules name=dir ...` for every adapter of `m`.
pub(crate) fn lora_flags(m: &TinyModel) -> Vec<String> {
    let mut flags = vec!["--lora-modules".to_string()];
    for a in &m.adapters {
        flags.push(format!("{}={}", a.name, m.adapter_dir(&a.name).display()));
    }
    flags
}

async fn start(m: &TinyModel, extra: &[&str]) -> Server {
    let mut flags: Vec<String> = lora_flags(m);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Server::start_model(&m.dir(), "base", &flags).await
}

/// One case through /v1/completions (prompt as ids, greedy, logprobs): up to the first
/// near tie, each token (its text, as /detokenize gives an id's) and its logprob as the
/// reference has them.
async fn check_case(server: &Server, case: &Case, model: &str) {
    let body = json!({"model": model, "prompt": case.prompt_token_ids, "max_tokens": MAX_TOKENS,
                      "temperature": 0, "logprobs": 1});
    let (s, v) = server.post("/v1/completions", &body).await;
    assert_eq!(s, 200, "{}: {v}", case.id);
    assert_eq!(v["model"], model, "{}", case.id);
    let lp = &v["choices"][0]["logprobs"];
    let (tokens, lps) = (
        lp["tokens"].as_array().unwrap(),
        lp["token_logprobs"].as_array().unwrap(),
    );
    let k = comparable_len(case);
    assert!(tokens.len() >= k, "{}: {v}", case.id);
    for (i, step) in case.steps.iter().take(k).enumerate() {
        let want = server.detokenize(&[step.token]).await;
        assert_eq!(tokens[i], want.as_str(), "{} step {i}", case.id);
        let lp = lps[i].as_f64().unwrap();
        assert!(
            (lp - step.logprob).abs() < 2e-3,
            "{} step {i}: {lp} vs {}",
            case.id,
            step.logprob
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_every_model_through_http_with_adapters_picked_by_model() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let server = start(m, &["--max-loras", "2"]).await;
        let (s, v) = server
            .post("/v1/completions", &json!({"model": "nope", "prompt": "a"}))
            .await;
        assert_eq!(s, 404, "{v}");
        let models = server.get_json("/v1/models").await;
        let cards = models["data"].as_array().unwrap();
        assert_eq!(cards.len(), 1 + m.adapters.len(), "{models}");
        assert_eq!(cards[0]["id"], "base");
        assert!(cards[0]["parent"].is_null());
        for a in &m.adapters {
            let card = cards.iter().find(|c| c["id"] == a.name.as_str()).unwrap();
            assert_eq!(card["parent"], "base", "{card}");
        }
        let checks = m.cases.iter().map(|c| {
            let case = c.as_case(m);
            let model = c.adapter.clone().unwrap_or_else(|| "base".into());
            let server = &server;
            async move { check_case(server, &case, &model).await }
        });
        join_all(checks).await;
        server.wait_idle().await;
        let logs = server.logs.lock().unwrap().join("\n");
        assert!(
            logs.contains("lora=\"all-r8\""),
            "adapter names in the request log"
        );
    }
}

/// A PEFT adapter directory at `dir` with `config` and `tensors` (name, shape), f32 zeros.
fn write_adapter(dir: &Path, config: &Value, tensors: &[(&str, [usize; 2])]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = shape[0] * shape[1] * 4;
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let header = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(header);
    file.extend(vec![0u8; offset]);
    std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_load_and_unload_under_load_and_malformed_adapters() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen2-yarn");
    let root = tempfile::tempdir().unwrap();
    copy_dir(&m.adapter_dir("all-r8"), &root.path().join("rt"));
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(m.adapter_dir("all-r8").join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let root_flag = root.path().to_str().unwrap().to_string();
    let server = start(
        m,
        &[
            "--max-loras",
            "2",
            "--enable-lora-runtime-updates",
            "--lora-root",
            &root_flag,
        ],
    )
    .await;

    // Loaded at run time (a path relative to --lora-root): listed and served.
    let (s, _) = post_text(
        &server,
        "/v1/load_lora_adapter",
        &json!({"lora_name": "rt", "lora_path": "rt"}),
    )
    .await;
    assert_eq!(s, 200);
    let models = server.get_json("/v1/models").await;
    assert!(models["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == "rt" && c["parent"] == "base"));
    let c = (m.cases.iter())
        .find(|c| c.adapter.as_deref() == Some("all-r8"))
        .unwrap();
    check_case(&server, &c.as_case(m), "rt").await;

    // Load: 6 clients x 8 requests over the base model and both startup adapters, while
    // a long stream runs on `rt` and `rt` is unloaded under it.
    let load = (0..6).map(|w| {
        let server = &server;
        async move {
            let mut ok = 0;
            for i in 0..8 {
                let model = ["base", "all-r8", "qv-r4-rslora"][(w + i) % 3];
                let body = json!({"model": model, "prompt": "The engine", "max_tokens": 12,
                                  "temperature": 0, "ignore_eos": true});
                let (s, v) = server.post("/v1/completions", &body).await;
                assert_eq!(s, 200, "{model}: {v}");
                assert_eq!(v["usage"]["completion_tokens"], 12);
                ok += 1;
            }
            ok
        }
    });
    let long = async {
        let body = json!({"model": "rt", "prompt": "The engine", "max_tokens": 300,
                          "temperature": 0, "ignore_eos": true, "stream": true,
                          "stream_options": {"include_usage": true}});
        let mut r = server.send_json("/v1/completions", &body).await;
        assert_eq!(r.status(), 200);
        let mut text = String::from_utf8(r.chunk().await.unwrap().unwrap().to_vec()).unwrap();
        // The first token is out: the request is in flight. Unload its adapter.
        let (s, body) = post_text(
            &server,
            "/v1/unload_lora_adapter",
            &json!({"lora_name": "rt"}),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        while let Some(chunk) = r.chunk().await.unwrap() {
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let chunks = sse_chunks(&sse_payloads(&text));
        let usage = chunks.iter().rev().find(|c| !c["usage"].is_null()).unwrap();
        assert_eq!(
            usage["usage"]["completion_tokens"], 300,
            "the stream on `rt` completed"
        );
    };
    let (done, ()) = tokio::join!(join_all(load), long);
    assert_eq!(done.iter().sum::<usize>(), 48, "no request lost");
    // Unloaded: the next request gets 404; unloading again too.
    let (s, v) = server
        .post("/v1/completions", &json!({"model": "rt", "prompt": "a"}))
        .await;
    let e = assert_error(s, &v, 404);
    assert_eq!(e["code"], "model_not_found");
    let (s, _) = post_text(
        &server,
        "/v1/unload_lora_adapter",
        &json!({"lora_name": "rt"}),
    )
    .await;
    assert_eq!(s, 404);

    // Malformed adapters: 400 with a message naming what is wrong; the server keeps serving.
    let layer0 = "base_model.model.model.layers.0.self_attn.q_proj";
    let (a, b) = (
        format!("{layer0}.lora_A.weight"),
        format!("{layer0}.lora_B.weight"),
    );
    write_adapter(
        &root.path().join("bad-shape"),
        &config,
        &[(&a, [8, 32]), (&b, [64, 8])],
    );
    let mut no_rank = config.clone();
    no_rank.as_object_mut().unwrap().remove("r");
    no_rank["rank"] = json!(8);
    write_adapter(
        &root.path().join("bad-rank"),
        &no_rank,
        &[(&a, [8, 64]), (&b, [64, 8])],
    );
    std::fs::create_dir_all(root.path().join("no-weights")).unwrap();
    std::fs::write(
        root.path().join("no-weights/adapter_config.json"),
        config.to_string(),
    )
    .unwrap();
    let mut dora = config.clone();
    dora["use_dora"] = json!(true);
    write_adapter(
        &root.path().join("dora"),
        &dora,
        &[(&a, [8, 64]), (&b, [64, 8])],
    );
    let outside = m.adapter_dir("all-r8");
    for (path, needle) in [
        ("bad-shape", "[8, 32]"),
        ("bad-rank", "`r`"),
        ("no-weights", "adapter_model.safetensors"),
        ("dora", "use_dora"),
        (outside.to_str().unwrap(), "--lora-root"),
        ("../", "--lora-root"),
    ] {
        let (s, body) = post_text(
            &server,
            "/v1/load_lora_adapter",
            &json!({"lora_name": "x", "lora_path": path}),
        )
        .await;
        assert_eq!(s, 400, "{path}: {body}");
        assert!(body.contains(needle), "{path}: {body}");
        let (s, v) = server
            .post(
                "/v1/completions",
                &json!({"model": "base", "prompt": "a", "max_tokens": 2}),
            )
            .await;
        assert_eq!(s, 200, "still serving after {path}: {v}");
    }
    let (s, body) = post_text(
        &server,
        "/v1/load_lora_adapter",
        &json!({"lora_name": "all-r8", "lora_path": "rt"}),
    )
    .await;
    assert_eq!(s, 400, "a taken name: {body}");
    server.wait_idle().await;
    let metrics = server.metrics().await;
    assert!(metrics.contains("wick:lora_requests_info{"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_updates_are_off_by_default_and_behind_the_api_key() {
    let golden = TinyGolden::load();
    let m = golden.model("llama3-tied");
    let server = start(m, &[]).await;
    let body = json!({"lora_name": "x", "lora_path": m.adapter_dir("all-r8")});
    let (s, _) = post_text(&server, "/v1/load_lora_adapter", &body).await;
    assert_eq!(s, 404, "not routed without --enable-lora-runtime-updates");
    drop(server);
    let server = start(
        m,
        &["--enable-lora-runtime-updates", "--api-key", "sk-lora"],
    )
    .await;
    let (s, _) = post_text(&server, "/v1/load_lora_adapter", &body).await;
    assert_eq!(s, 401);
    let r = (server.client.post(server.url("/v1/load_lora_adapter")))
        .bearer_auth("sk-lora")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// POSTs `body`; status and the body as text (the runtime LoRA routes answer text).
async fn post_text(server: &Server, path: &str, body: &Value) -> (u16, String) {
    let r = server.send_json(path, body).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

//! The model's sampling defaults (generation_config.json) reach the backend for every
//! parameter a request leaves unset, and never replace one it sets.

use crate::{Harness, Options};
use serde_json::json;
use wick_server::protocol::ModelDefaults;

const MODEL_DEFAULTS: ModelDefaults = ModelDefaults {
    temperature: Some(0.7),
    top_p: Some(0.9),
    top_k: Some(40),
    repetition_penalty: Some(1.1),
};

#[tokio::test]
async fn model_defaults_fill_only_unset_sampling_parameters() {
    let h = Harness::with(Options {
        defaults: MODEL_DEFAULTS,
        ..Options::default()
    })
    .await;
    let requests = [
        (
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 1}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 1, "temperature": 0.0, "top_k": 5}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                "temperature": 1.5, "top_p": 0.5, "repetition_penalty": 1.0, "top_k": -1}),
        ),
    ];
    for (path, body) in &requests {
        let (status, resp) = h.post(path, body).await;
        assert_eq!(status, 200, "{resp}");
    }
    let got: Vec<(f32, f32, usize, f32)> = h
        .backend
        .submitted()
        .iter()
        .map(|r| {
            let p = &r.params;
            (p.temperature, p.top_p, p.top_k, p.repetition_penalty)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0.7, 0.9, 40, 1.1),
            (0.7, 0.9, 40, 1.1),
            // The request's own values stay; the rest come from the model.
            (0.0, 0.9, 5, 1.1),
            (1.5, 0.5, 0, 1.0),
        ]
    );
}

#[tokio::test]
async fn without_model_defaults_openai_defaults_apply() {
    let h = Harness::start().await;
    let (status, resp) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 1}),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    let p = &h.backend.submitted()[0].params;
    assert_eq!(
        (p.temperature, p.top_p, p.top_k, p.repetition_penalty),
        (1.0, 1.0, 0, 1.0)
    );
}

//! Test support shared by the crates' tests: where the SmolLM2 test model and the golden
//! fixtures are, and how a generation is compared against them (as
//! ../shared/fixtures/smollm2/README.md says). Panics are the point here: a missing
//! fixture fails the test that needs it, loudly, never skips it. Also [`greedy`]:
//! greedy decoding straight on a [`wick_models::Model`], without the engine; the SSE
//! and OpenAI-error helpers the server's handler tests and the end-to-end tests share;
//! [`tiny`]: the tiny fine-tuned-weights fixtures (four checkpoints, their adapters).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod greedy;
pub mod tiny;

use serde::Deserialize;
use std::path::PathBuf;

/// The SmolLM2-135M-Instruct GGUF (`scripts/fetch-test-model.sh`), or `WICK_SMOLLM2_GGUF`.
pub fn smollm2_gguf() -> PathBuf {
    let p = std::env::var("WICK_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-model.sh (or set WICK_SMOLLM2_GGUF)",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// ../shared/fixtures, or `WICK_FIXTURES`.
pub fn fixtures_dir() -> PathBuf {
    let p = std::env::var("WICK_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("../shared/fixtures"));
    assert!(
        p.is_dir(),
        "fixtures not found at {} (set WICK_FIXTURES)",
        p.display()
    );
    p
}

/// One generated token of the reference.
#[derive(Deserialize, Debug, Clone)]
pub struct Step {
    /// The token id.
    pub token: u32,
    /// Its logprob.
    pub logprob: f64,
    /// Logprob gap between the best and the second-best token.
    pub margin: f64,
}

/// One golden case.
#[derive(Deserialize, Debug, Clone)]
pub struct Case {
    /// Name.
    pub id: String,
    /// Raw completion prompt.
    pub prompt: Option<String>,
    /// Chat messages (rendered with the model's template).
    pub messages: Option<serde_json::Value>,
    /// Tokens generated.
    pub max_tokens: usize,
    /// The prompt's token ids.
    pub prompt_token_ids: Vec<u32>,
    /// The greedy continuation.
    pub output_token_ids: Vec<u32>,
    /// Its text.
    pub output_text: String,
    /// Per generated token.
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

/// The SmolLM2 golden cases.
pub fn golden_cases() -> Vec<Case> {
    let path = fixtures_dir().join("smollm2/golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str::<Golden>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .cases
}

/// How many leading tokens of `case` must match exactly: up to and including the first
/// step whose margin is a near tie (below 0.01), after which the rest may differ.
pub fn comparable_len(case: &Case) -> usize {
    let n = case.output_token_ids.len();
    case.steps
        .iter()
        .take(n)
        .position(|s| s.margin < 0.01)
        .map_or(n, |i| i + 1)
}

/// Checks generated token ids against a golden case: equal up to the first near tie, and
/// of the same length when there is none.
pub fn assert_ids_match_golden(case: &Case, got: &[u32]) {
    let k = comparable_len(case);
    assert!(
        got.len() >= k,
        "{}: generated {} tokens, golden has {}: {got:?}",
        case.id,
        got.len(),
        case.output_token_ids.len()
    );
    assert_eq!(
        &got[..k],
        &case.output_token_ids[..k],
        "{}: tokens differ",
        case.id
    );
    if k == case.output_token_ids.len() {
        assert_eq!(got.len(), k, "{}: length differs: {got:?}", case.id);
    }
}

/// Checks generated (token, logprob) pairs against a golden case as the fixture README
/// says: ids as [`assert_ids_match_golden`], chosen-token logprobs within `tol`.
pub fn assert_matches_golden(case: &Case, got: &[(u32, f32)], tol: f64) {
    let ids: Vec<u32> = got.iter().map(|t| t.0).collect();
    assert_ids_match_golden(case, &ids);
    for (i, (step, &(_, lp))) in case
        .steps
        .iter()
        .zip(got)
        .take(comparable_len(case))
        .enumerate()
    {
        assert!(
            (lp as f64 - step.logprob).abs() < tol,
            "{}: step {i} logprob {lp} vs golden {}",
            case.id,
            step.logprob
        );
    }
}

/// golden.json as a JSON value, for tests that read fields [`Case`] does not type.
pub fn golden_json() -> serde_json::Value {
    let path = fixtures_dir().join("smollm2/golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `data:` payloads of an SSE body.
pub fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// SmolLM2 (the test model) loaded in `dtype` on the CPU, every weight dequantized
/// (`--quantization none`, the path golden.json pins): the model, its tokenizer and its
/// special tokens.
pub fn load_smollm2(dtype: candle_core::DType) -> wick_models::LoadedModel {
    load_smollm2_with(dtype, wick_models::Quantization::None)
}

/// SmolLM2 loaded in `dtype` on the CPU under `quantization`.
pub fn load_smollm2_with(
    dtype: candle_core::DType,
    quantization: wick_models::Quantization,
) -> wick_models::LoadedModel {
    let path = smollm2_gguf();
    wick_models::load(
        path.to_str().expect("utf-8 path"),
        &wick_models::LoadOptions {
            dtype: Some(dtype),
            device: candle_core::Device::Cpu,
            quantization,
        },
    )
    .expect("load SmolLM2")
}

/// Parses the chunks of an SSE stream's payloads (all but `[DONE]`, which must be last).
pub fn sse_chunks(payloads: &[String]) -> Vec<serde_json::Value> {
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect()
}

/// Asserts an OpenAI error body (`error` with a message, a type, `param` and `code`)
/// answered with status `want`; returns the error object.
pub fn assert_error(status: u16, body: &serde_json::Value, want: u16) -> serde_json::Value {
    assert_eq!(status, want, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "{body}"
    );
    e.clone()
}

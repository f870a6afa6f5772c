//! SmolLM2-135M-Instruct (Q4_1 GGUF) under `--quantization auto`: its weights cost their
//! GGUF size (within 10% of the file's tensor bytes; under `none` they cost the f32 size),
//! and its greedy decoding of the eight golden prompts is checked against two references:
//!
//! - ../shared/fixtures/smollm2/golden.json (transformers, weights dequantized to f32),
//!   followed up to the first step where the reference's own top-2 margin is small enough
//!   for the Q8 rounding of activations to swap the two tokens; golden.json is not the
//!   same arithmetic, so only near-ties may differ;
//! - fixtures/llama_cpp_smollm2.json: llama.cpp (tag b11434) on the same GGUF with the
//!   weights kept quantized (scripts/record-llama-cpp-fixture.py), an independent
//!   implementation of the same arithmetic (Q4_1 x Q8_1 and Q8_0 x Q8_0 dot products,
//!   activations quantized per 32 values). See [`PEER_MARGIN`] for why issue 16's rule
//!   (equal up to llama.cpp's first margin below 0.05) is reported, not asserted.
//!
//! Both comparisons share one generation (the cases decoded once, in [`auto_greedy`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::gguf_file;
use candle_core::DType;
use serde::Deserialize;
use std::sync::OnceLock;
use wick_models::{KvCache, Quantization};
use wick_test_support::greedy::{GeneratedToken, TopTokens};
use wick_test_support::{golden_cases, load_smollm2_with, smollm2_gguf, Case};

/// One generated token with its step's [`TOP_K`] most likely `(id, logprob)`.
type Step = (GeneratedToken, TopTokens);

const EOS: u32 = 2;

/// Golden steps whose top-2 logprob margin is below this may pick the runner-up. The
/// activations' Q8 rounding moves a matched token's logprob by up to about 0.31 here
/// (MAX_LOGPROB_DRIFT bounds it). With candle's Q4_1 kernel every divergence was at a
/// golden margin of at most 0.082 (chat-capital step 0: 0.082, chat-system step 9: 0.033,
/// chat-multiturn step 5: 0.011); with wick's own (the same arithmetic summed in another
/// order) they are at 0.082 (chat-capital 0), 0.220 (raw-capital 5) and 0.293 (raw-code
/// 21): which near-ties flip depends on summation order (see [`ISSUE_MARGIN`]).
const MARGIN: f64 = 0.5;

/// Largest |logprob(auto) - logprob(golden)| of a matched token (observed 0.307 with
/// candle's Q4_1 kernel, 0.270 with wick's).
const MAX_LOGPROB_DRIFT: f64 = 0.5;

/// Issue 16's rule: tokens equal to llama.cpp's up to its first step whose top-2 margin is
/// below this. Reported per case, not asserted: llama.cpp does not meet it against itself.
/// On this model a tiny change of arithmetic moves top-2 margins by up to ~0.8 (median
/// 0.1): the activations' 8-bit rounding turns a 1e-7 difference (summation order) into a
/// flipped rounding step of 1/127 of a block's largest value, and the flips compound over
/// 30 layers up to the size of the quantization noise itself. Re-recording the fixture
/// with only flash attention on (the same f32 attention summed in another order) makes
/// llama.cpp diverge from this fixture at its margins 0.319 (raw-code step 21), 0.178
/// (chat-system 9) and 0.263 (chat-multiturn 16); with f16 keys and values, at 0.263.
const ISSUE_MARGIN: f64 = 0.05;

/// wick may leave llama.cpp's tokens only at a step whose llama.cpp margin is below this
/// (the golden test's [`MARGIN`]). wick diverges at llama.cpp margins 0.034 (raw-capital
/// step 5), 0.319 (raw-code 21), 0.196 (chat-capital 13), 0.009 (raw-long 22) and 0.363
/// (chat-multiturn 5); llama.cpp against itself, as above, at up to 0.319. Margins move
/// by up to 0.78 between the two on steps where they agree, so a divergence between 0.5
/// and 0.8 after a change of summation order is noise, not a bug: look at the rms first.
const PEER_MARGIN: f64 = 0.5;

/// Bound on the root mean square of `logprob(auto) - logprob(llama.cpp)` over llama.cpp's
/// top-5 tokens (those also in wick's top 10) at every step before the two diverge.
/// Observed 0.139 over 730 values. The same measure of llama.cpp against itself: 0.139
/// with flash attention on, 0.155 with an f16 KV cache; of wick's f32 path (`none`, no
/// activation rounding at all) against llama.cpp: 0.151. So wick is as close to llama.cpp
/// as llama.cpp is to itself, which is all that greedy runs of this model can show; a gross
/// error in the quantized path (a wrong scale, offset or nibble order) is far above it.
const MAX_PEER_RMS: f64 = 0.2;

/// Largest |logprob(auto) - logprob(llama.cpp)| of a matched token (observed 0.245;
/// llama.cpp against itself 0.237 and 0.269).
const MAX_PEER_LOGPROB_DRIFT: f64 = 0.5;

/// wick's most likely tokens kept per step, to find llama.cpp's top five among.
const TOP_K: usize = 10;

/// One case of fixtures/llama_cpp_smollm2.json.
#[derive(Deserialize)]
struct PeerCase {
    id: String,
    prompt_token_ids: Vec<u32>,
    max_tokens: usize,
    output_token_ids: Vec<u32>,
    steps: Vec<PeerStep>,
}

/// One generated token of llama.cpp, with its top-2 margin.
#[derive(Deserialize)]
struct PeerStep {
    logprob: f64,
    margin: f64,
    /// The five most likely `[id, logprob]`, best first.
    top: Vec<(u32, f64)>,
}

#[derive(Deserialize)]
struct PeerFixture {
    cases: Vec<PeerCase>,
}

fn peer_cases() -> Vec<PeerCase> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/llama_cpp_smollm2.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str::<PeerFixture>(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .cases
}

/// Every golden case decoded greedily under `--quantization auto`, once per test binary.
fn auto_greedy() -> &'static [(Case, Vec<Step>)] {
    static OUT: OnceLock<Vec<(Case, Vec<Step>)>> = OnceLock::new();
    OUT.get_or_init(|| {
        let loaded = load_smollm2_with(DType::F32, Quantization::Auto);
        let model = &loaded.model;
        let mut cache = KvCache::new(model.config(), 16, 512, DType::F32, model.device()).unwrap();
        golden_cases()
            .into_iter()
            .map(|c| {
                let out = wick_test_support::greedy::generate_top(
                    model,
                    &mut cache,
                    &c.prompt_token_ids,
                    c.max_tokens,
                    &[EOS],
                    usize::MAX,
                    TOP_K,
                )
                .unwrap();
                (c, out)
            })
            .collect()
    })
}

/// Length of the common prefix of two token sequences.
fn common_prefix(out: &[Step], reference: &[u32]) -> usize {
    out.iter()
        .zip(reference)
        .take_while(|((a, _), b)| a.id == **b)
        .count()
}

/// (elements, bytes) of every tensor in the GGUF file's header.
fn gguf_tensor_sizes() -> (usize, usize) {
    let path = smollm2_gguf();
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut elems = 0;
    let mut bytes = 0;
    for info in content.tensor_infos.values() {
        let n = info.shape.elem_count();
        elems += n;
        bytes += n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
    }
    (elems, bytes)
}

#[test]
fn weight_bytes_are_the_gguf_size_under_auto_and_f32_under_none() {
    let (elems, file_bytes) = gguf_tensor_sizes();
    let auto = load_smollm2_with(DType::F32, Quantization::Auto);
    let none = load_smollm2_with(DType::F32, Quantization::None);
    let (a, n) = (auto.model.weight_bytes(), none.model.weight_bytes());
    eprintln!("GGUF tensors: {file_bytes} bytes, {elems} elements; auto {a}; none {n}");
    let ratio = a.total() as f64 / file_bytes as f64;
    assert!((0.9..=1.1).contains(&ratio), "auto/file = {ratio}");
    assert!(a.by_type().contains_key("q4_1"), "{a}");
    assert_eq!(n.by_type().keys().collect::<Vec<_>>(), ["f32"], "{n}");
    assert_eq!(n.total(), elems * 4, "none: f32 of every tensor");
}

#[test]
fn auto_follows_golden_greedy_tokens_until_a_near_tie() {
    let mut drift = 0f64;
    for (c, out) in auto_greedy() {
        // Steps before the first near tie must match; that step and later ones may not.
        let must = c
            .steps
            .iter()
            .position(|s| s.margin < MARGIN)
            .unwrap_or(c.steps.len());
        let same = common_prefix(out, &c.output_token_ids);
        for ((t, _), s) in out.iter().zip(&c.steps).take(same) {
            drift = drift.max((f64::from(t.logprob) - s.logprob).abs());
        }
        eprintln!(
            "{}: {same} of {} tokens as golden; required {must} (first margin < {MARGIN})",
            c.id,
            c.output_token_ids.len(),
        );
        assert!(
            same >= must.min(c.output_token_ids.len()),
            "{}: diverged at step {same}, before the first near tie at {must}",
            c.id,
        );
    }
    eprintln!("largest logprob drift of a matched token: {drift:.4}");
    assert!(drift < MAX_LOGPROB_DRIFT, "logprob drift {drift}");
}

#[test]
fn auto_follows_llama_cpp_greedy_tokens_until_its_near_tie() {
    let peers = peer_cases();
    let generated = auto_greedy();
    assert_eq!(
        peers.len(),
        generated.len(),
        "one llama.cpp case per golden case"
    );
    let (mut drift, mut sq, mut n_sq, mut issue_rule_held) = (0f64, 0f64, 0usize, 0usize);
    for (p, (c, out)) in peers.iter().zip(generated) {
        assert_eq!(p.id, c.id);
        assert_eq!(p.prompt_token_ids, c.prompt_token_ids, "{}: prompt", p.id);
        assert_eq!(p.max_tokens, c.max_tokens, "{}: max_tokens", p.id);
        let n = p.output_token_ids.len();
        // The rule of issue 16: equal up to llama.cpp's first near tie.
        let issue_must = p
            .steps
            .iter()
            .position(|s| s.margin < ISSUE_MARGIN)
            .unwrap_or(n);
        let same = common_prefix(out, &p.output_token_ids);
        let mut case_drift = 0f64;
        for ((t, top), s) in out.iter().zip(&p.steps).take(same) {
            case_drift = case_drift.max((f64::from(t.logprob) - s.logprob).abs());
            for (id, lp) in &s.top {
                if let Some((_, ours)) = top.iter().find(|(i, _)| i == id) {
                    sq += (f64::from(*ours) - lp).powi(2);
                    n_sq += 1;
                }
            }
        }
        drift = drift.max(case_drift);
        let issue_ok = same >= issue_must && (issue_must < n || out.len() == n);
        issue_rule_held += usize::from(issue_ok);
        let at = p.steps.get(same).map_or(f64::NAN, |s| s.margin);
        eprintln!(
            "{}: {same} of {n} tokens as llama.cpp{}; issue 16's rule (equal up to llama.cpp's \
             first margin < {ISSUE_MARGIN}, at {issue_must}) {}; largest logprob drift \
             {case_drift:.4}",
            p.id,
            if same < n {
                format!(", then a step of llama.cpp margin {at:.3}")
            } else {
                String::new()
            },
            if issue_ok { "held" } else { "broken" },
        );
        if same < n {
            assert!(
                at < PEER_MARGIN,
                "{}: diverged at step {same}, where llama.cpp's margin is {at:.3}",
                p.id,
            );
        } else {
            assert_eq!(out.len(), n, "{}: same tokens, different length", p.id);
        }
    }
    let rms = (sq / n_sq.max(1) as f64).sqrt();
    eprintln!(
        "issue 16's rule held in {issue_rule_held} of {} cases; largest logprob drift of a \
         matched token {drift:.4}; rms logprob difference over {n_sq} top-5 logprobs {rms:.4}",
        peers.len(),
    );
    assert!(n_sq >= 300, "only {n_sq} logprobs compared");
    assert!(rms < MAX_PEER_RMS, "rms logprob difference {rms}");
    assert!(drift < MAX_PEER_LOGPROB_DRIFT, "logprob drift {drift}");
}

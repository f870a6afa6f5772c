//! SmolLM2-135M-Instruct (Q4_1 GGUF) under `--quantization auto`: its weights cost their
//! GGUF size (within 10% of the file's tensor bytes; under `none` they cost the f32 size),
//! and greedy decoding follows ../shared/fixtures/smollm2/golden.json up to the first
//! step where the reference's own top-2 margin is small enough for the Q8 rounding of
//! activations in candle's quantized CPU matmul to swap the two tokens.
//!
//! This is not the proof against an independent implementation of the same quantized
//! arithmetic (llama.cpp), which the golden file is not: golden.json was made with the
//! weights dequantized, so only near-ties may differ.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::gguf_file;
use candle_core::DType;
use wick_models::{KvCache, Quantization};
use wick_test_support::{golden_cases, load_smollm2_with, smollm2_gguf};

const EOS: u32 = 2;

/// Golden steps whose top-2 logprob margin is below this may pick the runner-up. The
/// activations' Q8 rounding moves a matched token's logprob by up to about 0.31 here
/// (MAX_LOGPROB_DRIFT bounds it); the two top tokens mostly move together, and every
/// divergence observed was at a golden margin of at most 0.082 (chat-capital step 0:
/// 0.082, chat-system step 9: 0.033, chat-multiturn step 5: 0.011), so 0.5 leaves room.
const MARGIN: f64 = 0.5;

/// Largest |logprob(auto) - logprob(golden)| of a matched token (observed 0.307).
const MAX_LOGPROB_DRIFT: f64 = 0.5;

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
    let loaded = load_smollm2_with(DType::F32, Quantization::Auto);
    let model = &loaded.model;
    let mut cache = KvCache::new(model.config(), 16, 512, DType::F32, model.device()).unwrap();
    let mut drift = 0f64;
    for c in golden_cases() {
        let out = wick_test_support::greedy::generate(
            model,
            &mut cache,
            &c.prompt_token_ids,
            c.max_tokens,
            &[EOS],
            usize::MAX,
        )
        .unwrap();
        // Steps before the first near tie must match; that step and later ones may not.
        let must = c
            .steps
            .iter()
            .position(|s| s.margin < MARGIN)
            .unwrap_or(c.steps.len());
        let same = out
            .iter()
            .zip(&c.output_token_ids)
            .take_while(|(a, b)| a.id == **b)
            .count();
        for (t, s) in out.iter().zip(&c.steps).take(same) {
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

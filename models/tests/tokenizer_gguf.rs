//! Tokenizers rebuilt from GGUF metadata.
//!
//! - SmolLM2's real GGUF against the independent reference in
//!   ../shared/fixtures/smollm2/golden.json: every raw prompt encodes to exactly its
//!   reference ids, and every reference output decodes to its reference text. Needs the
//!   model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).
//! - Small hand-made vocabularies for the other pre-tokenizers, the SentencePiece
//!   (`llama`) model and malformed metadata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::Tokenizer;
use wick_models::tokenizer::gguf::{
    chat_template_from_gguf, tokenizer_from_gguf, GgufSpecialTokens,
};

fn gguf_path() -> PathBuf {
    wick_test_support::smollm2_gguf()
}

fn golden() -> serde_json::Value {
    wick_test_support::golden_json()
}

fn metadata() -> HashMap<String, Value> {
    let path = gguf_path();
    let mut file = std::fs::File::open(&path).expect("open GGUF");
    Content::read(&mut file).expect("read GGUF").metadata
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|id| id.as_u64().expect("an id") as u32)
        .collect()
}

#[test]
fn smollm2_prompts_encode_to_reference_ids() {
    let tokenizer = tokenizer_from_gguf(&metadata()).expect("tokenizer builds");
    let golden = golden();
    let mut checked = 0;
    for case in golden["cases"].as_array().expect("cases") {
        let Some(prompt) = case["prompt"].as_str() else {
            continue;
        };
        let encoding = tokenizer.encode(prompt, false).expect("encodes");
        assert_eq!(
            encoding.get_ids(),
            ids(&case["prompt_token_ids"]).as_slice(),
            "case {}",
            case["id"]
        );
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} prompt cases in golden.json");
}

#[test]
fn smollm2_outputs_decode_to_reference_text() {
    let tokenizer = tokenizer_from_gguf(&metadata()).expect("tokenizer builds");
    for case in golden()["cases"].as_array().expect("cases") {
        let text = tokenizer
            .decode(&ids(&case["output_token_ids"]), false)
            .expect("decodes");
        assert_eq!(
            text,
            case["output_text"].as_str().expect("output_text"),
            "case {}",
            case["id"]
        );
    }
}

#[test]
fn smollm2_special_tokens_are_never_split() {
    let tokenizer = tokenizer_from_gguf(&metadata()).expect("tokenizer builds");
    let encoding = tokenizer
        .encode("<|im_start|>user\nHi<|im_end|>\n", false)
        .expect("encodes");
    let ids = encoding.get_ids();
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.contains(&2), "{ids:?}");
    // Special tokens are skipped on request and kept otherwise.
    assert_eq!(tokenizer.decode(ids, true).expect("decodes"), "user\nHi\n");
    assert_eq!(
        tokenizer.decode(ids, false).expect("decodes"),
        "<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn smollm2_special_tokens_and_chat_template() {
    let metadata = metadata();
    let special = GgufSpecialTokens::from_gguf(&metadata).expect("special tokens");
    assert_eq!(special.bos, Some((1, "<|im_start|>".to_string())));
    assert_eq!(special.eos, Some((2, "<|im_end|>".to_string())));
    assert!(!special.add_bos);
    let template = chat_template_from_gguf(&metadata).expect("chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
}

// ---- hand-made vocabularies ----------------------------------------------------------

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn metadata_of(entries: Vec<(&str, Value)>) -> HashMap<String, Value> {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

/// GPT-2's byte-to-unicode alphabet, in byte order.
fn byte_level_alphabet() -> Vec<String> {
    let mut shifted = 0u32;
    (0u32..256)
        .map(|b| {
            let printable =
                (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).expect("valid char").to_string()
        })
        .collect()
}

fn byte_level_metadata(pre: &str) -> HashMap<String, Value> {
    let mut tokens = vec!["<|end|>".to_string()];
    tokens.extend(byte_level_alphabet());
    tokens.extend(["12", "123", "45", "456", "123456"].map(String::from));
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut types = vec![Value::I32(1); tokens.len()];
    types[0] = Value::I32(3);
    metadata_of(vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            strings(&["1 2", "12 3", "4 5", "45 6", "123 456", "x y"]),
        ),
    ])
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Vec<String> {
    tokenizer
        .encode(text, false)
        .expect("encodes")
        .get_tokens()
        .to_vec()
}

#[test]
fn byte_level_pre_tokenizers_split_digits_as_their_models_do() {
    let expected: [(&str, &[&str]); 5] = [
        ("gpt2", &["123456"]),
        ("llama-bpe", &["123", "456"]),
        ("qwen2", &["1", "2", "3", "4", "5", "6"]),
        ("smollm", &["1", "2", "3", "4", "5", "6"]),
        ("no-such-pre", &["123456"]),
    ];
    for (pre, tokens) in expected {
        let tokenizer = tokenizer_from_gguf(&byte_level_metadata(pre)).expect(pre);
        assert_eq!(encode(&tokenizer, "123456"), tokens, "pre {pre}");
        let ids = tokenizer.encode("a 1<|end|>", false).expect("encodes");
        assert_eq!(ids.get_ids().last(), Some(&0), "pre {pre}");
        let decoded = tokenizer.decode(ids.get_ids(), false).expect("decodes");
        assert_eq!(decoded, "a 1<|end|>", "pre {pre}");
        assert_eq!(tokenizer.decode(ids.get_ids(), true).unwrap(), "a 1");
    }
}

fn sentencepiece_metadata() -> HashMap<String, Value> {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w",
        "▁wo", "▁wor", "▁worl", "▁world", "ll",
    ];
    for (i, piece) in pieces.iter().enumerate() {
        tokens.push(piece.to_string());
        types.push(1);
        scores.push(-(i as f32));
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    metadata_of(vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ])
}

#[test]
fn sentencepiece_encodes_with_byte_fallback_and_decodes() {
    let tokenizer = tokenizer_from_gguf(&sentencepiece_metadata()).expect("builds");
    assert_eq!(
        encode(&tokenizer, "hello worlé"),
        ["▁hello", "▁worl", "<0xC3>", "<0xA9>"]
    );
    let ids = tokenizer.encode("<s>hello world", false).expect("encodes");
    assert_eq!(ids.get_tokens(), ["<s>", "▁hello", "▁world"]);
    assert_eq!(
        tokenizer.decode(ids.get_ids(), true).expect("decodes"),
        "hello world"
    );
    let ids = tokenizer.encode("hello worlé", false).expect("encodes");
    assert_eq!(
        tokenizer.decode(ids.get_ids(), false).expect("decodes"),
        "hello worlé"
    );
    let special = GgufSpecialTokens::from_gguf(&sentencepiece_metadata()).unwrap();
    assert_eq!(special.bos, Some((1, "<s>".into())));
    assert!(special.add_bos, "llama tokenizers add BOS by default");
}

#[test]
fn bad_metadata_is_a_clear_error() {
    let err = tokenizer_from_gguf(&HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.model"), "{err}");

    let mut md = byte_level_metadata("gpt2");
    md.insert("tokenizer.ggml.model".into(), Value::String("rwkv".into()));
    let err = tokenizer_from_gguf(&md).unwrap_err();
    assert!(err.to_string().contains("\"rwkv\""), "{err}");

    let mut md = byte_level_metadata("gpt2");
    md.insert("tokenizer.ggml.tokens".into(), Value::U32(3));
    let err = tokenizer_from_gguf(&md).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    let mut md = byte_level_metadata("gpt2");
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(100_000));
    let err = GgufSpecialTokens::from_gguf(&md).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

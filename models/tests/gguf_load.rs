//! GGUF files written by the test with llama.cpp's tensor names, metadata and its rotary
//! permutation of q/k rows load into the same model as the Hugging Face checkpoint of the
//! same weights: exactly when stored as F32, and within quantization error for every
//! supported quantized type (F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use common::tiny;
use std::collections::HashMap;
use wick_models::{KvCache, LoadedModel, ModelInput, SequenceChunk};

/// A llama config whose rows are 256 wide, so K-quant super-blocks fit.
fn config() -> serde_json::Value {
    let mut c = tiny::config("llama");
    c["hidden_size"] = 256.into();
    c["intermediate_size"] = 512.into();
    c["num_hidden_layers"] = 1.into();
    c
}

/// llama.cpp's converter permutation of q/k rows (rotate-half -> interleaved).
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

fn write_gguf(
    path: &std::path::Path,
    cfg: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    dtype: GgmlDType,
) {
    let u = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let heads = u("num_attention_heads") as usize;
    let kv = u("num_key_value_heads") as usize;
    let mut tensors: Vec<(String, QTensor)> = vec![];
    for (name, t) in weights {
        let gname = wick_models::weights::gguf_name(name).unwrap();
        let t = if name.ends_with("q_proj.weight") {
            permute(t, heads)
        } else if name.ends_with("k_proj.weight") {
            permute(t, kv)
        } else {
            t.clone()
        };
        // Norm vectors stay F32, as llama.cpp keeps them.
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        tensors.push((gname, QTensor::quantize(&t, ty).unwrap()));
    }
    let tokens: Vec<Value> = (0..tiny::VOCAB)
        .map(|i| Value::String(format!("t{i}")))
        .collect();
    let types: Vec<Value> = (0..tiny::VOCAB).map(|_| Value::I32(1)).collect();
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(u("num_hidden_layers"))),
        (
            "llama.context_length",
            Value::U32(u("max_position_embeddings")),
        ),
        ("llama.embedding_length", Value::U32(u("hidden_size"))),
        (
            "llama.feed_forward_length",
            Value::U32(u("intermediate_size")),
        ),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String("{{ messages[0]['content'] }}".into()),
        ),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn logits(loaded: &LoadedModel) -> Vec<f32> {
    let model = &loaded.model;
    let mut cache = KvCache::new(model.config(), 16, 2, DType::F32, &Device::Cpu).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 7 + 3) % tiny::VOCAB as u32).collect();
    let input = ModelInput::build(
        &[SequenceChunk {
            tokens: &tokens,
            num_computed_tokens: 0,
            block_table: &[0, 1],
            lora_slot: None,
            sample: true,
        }],
        16,
        &Device::Cpu,
    )
    .unwrap();
    model
        .forward(&input, &mut cache)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn gguf_loads_like_the_hf_checkpoint_for_every_tensor_type() {
    let cfg = config();
    let weights = tiny::weights(&cfg, 5);
    let dir = tempfile::tempdir().unwrap();
    tiny::write_checkpoint(&dir.path().join("hf"), &cfg, &weights, 1);
    let reference = logits(&tiny::load(dir.path().join("hf").to_str().unwrap()).unwrap());
    let scale = reference.iter().map(|x| x.abs()).fold(0f32, f32::max);

    // (type, smallest cosine similarity to the f32 logits). F32 is also held to 1e-5.
    let cases = [
        (GgmlDType::F32, 0.999999),
        (GgmlDType::F16, 0.9999),
        (GgmlDType::BF16, 0.999),
        (GgmlDType::Q8_0, 0.999),
        (GgmlDType::Q6K, 0.99),
        (GgmlDType::Q5K, 0.98),
        (GgmlDType::Q4_1, 0.85),
        (GgmlDType::Q4_0, 0.85),
        (GgmlDType::Q4K, 0.85),
    ];
    for (ty, tol) in cases {
        let path = dir.path().join(format!("tiny-{ty:?}.gguf"));
        write_gguf(&path, &cfg, &weights, ty);
        let loaded = tiny::load(path.to_str().unwrap()).unwrap();
        assert_eq!(loaded.model.config().hidden_size, 256);
        assert!(!loaded.model.config().tie_word_embeddings);
        assert_eq!(loaded.special.eos, Some((2, "t2".to_string())));
        assert!(loaded.chat_template.is_some());
        let got = logits(&loaded);
        let max = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let dot: f32 = got.iter().zip(&reference).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(&got) * norm(&reference));
        eprintln!("{ty:?}: cosine {cos:.6}, max |diff| {max:.4} (scale {scale:.2})");
        assert!(cos >= tol, "{ty:?}: cosine {cos} < {tol}");
        if ty == GgmlDType::F32 {
            assert!(max < 1e-5 * scale, "F32: max |diff| {max}");
        }
    }
}

#[test]
fn gguf_with_a_wrong_tensor_shape_is_an_error_naming_it() {
    let cfg = config();
    let mut weights = tiny::weights(&cfg, 6);
    weights.insert(
        "model.layers.0.mlp.down_proj.weight".into(),
        Tensor::zeros((256, 256), DType::F32, &Device::Cpu).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    write_gguf(&path, &cfg, &weights, GgmlDType::F32);
    let msg = tiny::load(path.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("blk.0.ffn_down.weight")
            && msg.contains("[256, 256]")
            && msg.contains("[256, 512]"),
        "{msg}"
    );
}

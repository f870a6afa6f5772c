//! Tiny random-weight checkpoints, written the way Hugging Face lays them out, for each
//! architecture we support.

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

pub const VOCAB: usize = 96;

/// config.json for a tiny model of `arch` ("llama", "llama3", "mistral", "qwen2", "qwen3").
pub fn config(arch: &str) -> serde_json::Value {
    let mut c = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 256,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "sliding_window": 4096,
        "max_window_layers": 2,
        "use_sliding_window": false,
        "attention_bias": false,
        "bos_token_id": 1,
        "eos_token_id": 2,
    });
    match arch {
        "llama" => {}
        "llama3" => {
            c["tie_word_embeddings"] = true.into();
            c["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32
            });
        }
        "mistral" => {
            c["architectures"] = serde_json::json!(["MistralForCausalLM"]);
            c["sliding_window"] = 8.into();
        }
        "qwen2" => {
            c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
            c["tie_word_embeddings"] = true.into();
        }
        "qwen3" => {
            c["architectures"] = serde_json::json!(["Qwen3ForCausalLM"]);
            c["head_dim"] = 32.into();
        }
        other => panic!("unknown tiny arch {other}"),
    }
    c
}

/// Random weights for `cfg` (names and shapes as in Hugging Face checkpoints).
pub fn weights(cfg: &serde_json::Value, seed: u64) -> HashMap<String, Tensor> {
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (h, inter, layers, heads, kv) = (
        u("hidden_size"),
        u("intermediate_size"),
        u("num_hidden_layers"),
        u("num_attention_heads"),
        u("num_key_value_heads"),
    );
    let hd = cfg
        .get("head_dim")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize)
        .unwrap_or(h / heads);
    let arch = cfg["architectures"][0].as_str().unwrap();
    let bias = arch == "Qwen2ForCausalLM";
    let qk_norm = arch == "Qwen3ForCausalLM";
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
            .collect();
        t.insert(name, Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[VOCAB, h], 1.0, 0.0);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[heads * hd, h],
            0.2,
            0.0,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[kv * hd, h],
            0.2,
            0.0,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[kv * hd, h],
            0.2,
            0.0,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[h, heads * hd],
            0.2,
            0.0,
        );
        if bias {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                &[heads * hd],
                0.5,
                0.0,
            );
            put(format!("{p}.self_attn.k_proj.bias"), &[kv * hd], 0.5, 0.0);
            put(format!("{p}.self_attn.v_proj.bias"), &[kv * hd], 0.5, 0.0);
        }
        if qk_norm {
            put(format!("{p}.self_attn.q_norm.weight"), &[hd], 0.5, 1.0);
            put(format!("{p}.self_attn.k_norm.weight"), &[hd], 0.5, 1.0);
        }
        put(format!("{p}.input_layernorm.weight"), &[h], 0.2, 1.0);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            0.2,
            1.0,
        );
        put(format!("{p}.mlp.gate_proj.weight"), &[inter, h], 0.2, 0.0);
        put(format!("{p}.mlp.up_proj.weight"), &[inter, h], 0.2, 0.0);
        put(format!("{p}.mlp.down_proj.weight"), &[h, inter], 0.2, 0.0);
    }
    put("model.norm.weight".into(), &[h], 0.2, 1.0);
    if !cfg["tie_word_embeddings"].as_bool().unwrap() {
        put("lm_head.weight".into(), &[VOCAB, h], 0.5, 0.0);
    }
    t
}

/// A word-level tokenizer.json over tokens "t0".."t95" split on whitespace.
pub fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..VOCAB)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    })
}

/// Writes a checkpoint directory; `shards > 1` splits the weights across files with an index.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    shards: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::json!({"bos_token": "t1", "eos_token": "t2", "add_bos_token": false,
            "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}"})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::json!({"eos_token_id": [2, 3], "temperature": 0.6, "top_p": 0.9}).to_string(),
    )
    .unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    if shards <= 1 {
        candle_core::safetensors::save(weights, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut map = serde_json::Map::new();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| ((*n).clone(), weights[*n].clone()))
            .collect();
        for n in part.keys() {
            map.insert(n.clone(), file.clone().into());
        }
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

/// Loads a checkpoint (directory or GGUF file) with wick in f32 on the CPU, every weight
/// dequantized (`--quantization none`).
pub fn load(spec: &str) -> wick_models::Result<wick_models::LoadedModel> {
    load_with(spec, wick_models::Quantization::None)
}

/// Loads a checkpoint with wick in f32 on the CPU under `quantization`.
pub fn load_with(
    spec: &str,
    quantization: wick_models::Quantization,
) -> wick_models::Result<wick_models::LoadedModel> {
    wick_models::load(
        spec,
        &wick_models::LoadOptions {
            dtype: Some(DType::F32),
            device: Device::Cpu,
            quantization,
        },
    )
}

//! Every supported architecture, as a tiny random-weight checkpoint written by the test,
//! loads (single file and sharded) and computes the same logits as candle-transformers'
//! own unpaged implementation of that architecture: so qkv bias (Qwen2), q/k RMSNorm
//! (Qwen3), tied embeddings, llama3 rope scaling and Mistral's sliding window are really
//! applied. Also: clear errors for bad checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models as ct;
use common::tiny;
use wick_models::{KvCache, ModelError, ModelInput, SequenceChunk};

/// A prompt long enough to leave Mistral's 8-token window behind, then decode steps.
const PROMPT: [u32; 20] = [
    5, 17, 33, 2, 9, 41, 60, 7, 13, 88, 21, 3, 44, 70, 12, 6, 95, 30, 51, 8,
];
const DECODE: [u32; 4] = [11, 72, 4, 19];

enum Oracle {
    Llama(ct::llama::Llama, ct::llama::Config),
    Mistral(ct::mistral::Model),
    Qwen2(ct::qwen2::ModelForCausalLM),
    Qwen3(ct::qwen3::ModelForCausalLM),
}

impl Oracle {
    fn new(arch: &str, cfg: &serde_json::Value, files: &[std::path::PathBuf]) -> Self {
        let dev = Device::Cpu;
        // SAFETY: test files written by this test, not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, DType::F32, &dev).unwrap() };
        let text = cfg.to_string();
        match arch {
            "llama" | "llama3" => {
                let c: ct::llama::LlamaConfig = serde_json::from_str(&text).unwrap();
                let c = c.into_config(false);
                Self::Llama(ct::llama::Llama::load(vb, &c).unwrap(), c)
            }
            "mistral" => {
                let mut c: ct::mistral::Config = serde_json::from_str(&text).unwrap();
                // candle-transformers lets a query see `window + 1` keys (j + w >= i);
                // transformers and vLLM count the query itself in the window (j > i - w).
                c.sliding_window = c.sliding_window.map(|w| w - 1);
                Self::Mistral(ct::mistral::Model::new(&c, vb).unwrap())
            }
            "qwen2" => {
                let c: ct::qwen2::Config = serde_json::from_str(&text).unwrap();
                Self::Qwen2(ct::qwen2::ModelForCausalLM::new(&c, vb).unwrap())
            }
            "qwen3" => {
                let c: ct::qwen3::Config = serde_json::from_str(&text).unwrap();
                Self::Qwen3(ct::qwen3::ModelForCausalLM::new(&c, vb).unwrap())
            }
            _ => unreachable!(),
        }
    }

    /// Logits after the whole sequence `tokens`, recomputed from scratch (candle's
    /// Mistral applies its window only inside one forward call, not across its cache).
    fn logits(&mut self, tokens: &[u32]) -> Vec<f32> {
        let x = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = match self {
            Self::Llama(m, c) => {
                let mut cache = ct::llama::Cache::new(true, DType::F32, c, &Device::Cpu).unwrap();
                m.forward(&x, 0, &mut cache)
            }
            Self::Mistral(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Self::Qwen2(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
            Self::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&x, 0)
            }
        }
        .unwrap();
        logits.flatten_all().unwrap().to_vec1().unwrap()
    }
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-3, "{what}: max |diff| {max}");
}

fn check_against_oracle(arch: &str, shards: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny::config(arch);
    let weights = tiny::weights(&cfg, 7);
    tiny::write_checkpoint(dir.path(), &cfg, &weights, shards);
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    assert_eq!(files.len(), shards.max(1));

    let loaded = tiny::load(dir.path().to_str().unwrap()).unwrap();
    let model = &loaded.model;
    let mut cache = KvCache::new(model.config(), 4, 16, DType::F32, &Device::Cpu).unwrap();
    // Blocks out of order, to exercise the block table.
    let table: Vec<u32> = vec![9, 2, 14, 5, 0, 11, 7];
    let mut oracle = Oracle::new(arch, &cfg, &files);

    let run = |cache: &mut KvCache, tokens: &[u32], computed: usize| -> Vec<f32> {
        let input = ModelInput::build(
            &[SequenceChunk {
                tokens,
                num_computed_tokens: computed,
                block_table: &table,
                lora_slot: None,
                sample: true,
            }],
            4,
            &Device::Cpu,
        )
        .unwrap();
        model
            .forward(&input, cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut seen = PROMPT.to_vec();
    let ours = run(&mut cache, &PROMPT, 0);
    assert_close(&ours, &oracle.logits(&seen), &format!("{arch}: prefill"));
    for (i, &t) in DECODE.iter().enumerate() {
        let ours = run(&mut cache, &[t], seen.len());
        seen.push(t);
        assert_close(&ours, &oracle.logits(&seen), &format!("{arch}: decode {i}"));
    }
}

#[test]
fn llama_matches_candle_transformers() {
    check_against_oracle("llama", 1);
}

#[test]
fn llama3_rope_scaling_and_tied_embeddings_match() {
    let cfg = wick_models::ModelConfig::from_hf_json(&tiny::config("llama3").to_string()).unwrap();
    assert!(cfg.rope_scaling.is_some() && cfg.tie_word_embeddings);
    check_against_oracle("llama3", 2);
}

#[test]
fn mistral_sliding_window_matches() {
    let cfg = wick_models::ModelConfig::from_hf_json(&tiny::config("mistral").to_string()).unwrap();
    assert_eq!(cfg.sliding_window, Some(8));
    check_against_oracle("mistral", 1);
}

#[test]
fn qwen2_qkv_bias_matches() {
    let cfg = wick_models::ModelConfig::from_hf_json(&tiny::config("qwen2").to_string()).unwrap();
    assert!(cfg.attention_bias && cfg.tie_word_embeddings);
    check_against_oracle("qwen2", 3);
}

#[test]
fn qwen3_qk_norm_matches() {
    let cfg = wick_models::ModelConfig::from_hf_json(&tiny::config("qwen3").to_string()).unwrap();
    assert!(cfg.qk_norm && cfg.head_dim == 32);
    check_against_oracle("qwen3", 2);
}

#[test]
fn llama3_rope_scaling_changes_low_frequencies_only() {
    let cfg = wick_models::ModelConfig::from_hf_json(&tiny::config("llama3").to_string()).unwrap();
    let plain = wick_models::layers::rotary::rope_inv_freq(16, 10000.0, None);
    let scaled = wick_models::layers::rotary::rope_inv_freq(16, 10000.0, cfg.rope_scaling.as_ref());
    assert_eq!(plain[0], scaled[0], "highest frequency is unscaled");
    let last = plain.len() - 1;
    assert!(
        (scaled[last] - plain[last] / 8.0).abs() < 1e-12,
        "lowest frequency divided by factor"
    );
}

#[test]
fn checkpoint_files_and_defaults_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny::config("llama");
    tiny::write_checkpoint(dir.path(), &cfg, &tiny::weights(&cfg, 1), 1);
    let loaded = tiny::load(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(loaded.special.bos, Some((1, "t1".to_string())));
    assert_eq!(loaded.special.eos, Some((2, "t2".to_string())));
    assert_eq!(loaded.special.eos_token_ids, vec![2, 3]);
    assert_eq!(loaded.generation_config.temperature, Some(0.6));
    assert!(loaded
        .chat_template
        .as_deref()
        .unwrap()
        .contains("messages"));
    assert_eq!(
        loaded.tokenizer.encode("t5 t7", false).unwrap().get_ids(),
        &[5, 7]
    );
}

#[test]
fn chat_template_jinja_wins_over_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny::config("llama");
    tiny::write_checkpoint(dir.path(), &cfg, &tiny::weights(&cfg, 1), 1);
    let from_tokenizer_config = tiny::load(dir.path().to_str().unwrap()).unwrap();
    let jinja = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}";
    std::fs::write(dir.path().join("chat_template.jinja"), jinja).unwrap();
    let loaded = tiny::load(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(loaded.chat_template.as_deref(), Some(jinja));
    assert_ne!(from_tokenizer_config.chat_template, loaded.chat_template);
}

fn load_err(dir: &std::path::Path) -> String {
    match tiny::load(dir.to_str().unwrap()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_give_clear_errors() {
    let cfg = tiny::config("llama");
    let good = tiny::weights(&cfg, 3);

    // A tensor of the wrong shape names the tensor and both shapes.
    let dir = tempfile::tempdir().unwrap();
    let mut w = good.clone();
    w.insert(
        "model.layers.1.mlp.up_proj.weight".into(),
        Tensor::zeros((127, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    tiny::write_checkpoint(dir.path(), &cfg, &w, 1);
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.1.mlp.up_proj.weight")
            && msg.contains("[127, 64]")
            && msg.contains("[128, 64]"),
        "{msg}"
    );

    // A missing tensor is named.
    let dir = tempfile::tempdir().unwrap();
    let mut w = good.clone();
    w.remove("model.layers.0.self_attn.k_proj.weight");
    tiny::write_checkpoint(dir.path(), &cfg, &w, 1);
    let msg = load_err(dir.path());
    assert!(
        msg.contains("model.layers.0.self_attn.k_proj.weight"),
        "{msg}"
    );

    // A missing shard is named.
    let dir = tempfile::tempdir().unwrap();
    tiny::write_checkpoint(dir.path(), &cfg, &good, 2);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let msg = load_err(dir.path());
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");

    // An unsupported architecture lists the supported ones.
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg.clone();
    c["architectures"] = serde_json::json!(["GPTNeoXForCausalLM"]);
    tiny::write_checkpoint(dir.path(), &c, &good, 1);
    let err = tiny::load(dir.path().to_str().unwrap()).err().unwrap();
    assert!(matches!(err, ModelError::UnsupportedArchitecture { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("GPTNeoXForCausalLM") && msg.contains("Qwen3ForCausalLM"),
        "{msg}"
    );

    // No config.json.
    let dir = tempfile::tempdir().unwrap();
    tiny::write_checkpoint(dir.path(), &cfg, &good, 1);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert!(load_err(dir.path()).contains("config.json"));

    // Garbage instead of weights: an error, not a panic.
    let dir = tempfile::tempdir().unwrap();
    tiny::write_checkpoint(dir.path(), &cfg, &good, 1);
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    let _ = load_err(dir.path());

    // Garbage GGUF.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert!(tiny::load(p.to_str().unwrap()).is_err());
}

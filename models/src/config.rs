//! The model's hyper-parameters, normalised from either a Hugging Face `config.json` or
//! GGUF metadata into one [`ModelConfig`]. Architectures differ only by switches here
//! (qkv bias, q/k norm, sliding window, rope scaling, tied embeddings), so one forward pass
//! serves them all.

use crate::gguf_metadata as meta;
use crate::rope_scaling::{self, HfRopeFields};
pub use crate::rope_scaling::{Llama3RopeScaling, RopeScaling, YarnRopeScaling};
use crate::{ModelError, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;
use std::collections::HashMap;

/// The architecture families we implement, as named in `config.json`'s `architectures`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
];

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2 / 3 / 3.1 / 3.2.
    Llama,
    /// Mistral (Llama with a sliding window).
    Mistral,
    /// Qwen2 / Qwen2.5 (bias on q, k, v).
    Qwen2,
    /// Qwen3 (RMSNorm on q and k per head).
    Qwen3,
}

impl Architecture {
    /// Parses a `config.json` `architectures` entry.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" => Ok(Self::Llama),
            "MistralForCausalLM" => Ok(Self::Mistral),
            "Qwen2ForCausalLM" => Ok(Self::Qwen2),
            "Qwen3ForCausalLM" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture {
                found: other.to_string(),
                supported: SUPPORTED_ARCHITECTURES.to_vec(),
            }),
        }
    }

    /// Parses GGUF's `general.architecture`.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture {
                found: format!("{other} (GGUF)"),
                supported: vec!["llama", "mistral", "qwen2", "qwen3"],
            }),
        }
    }
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture family.
    pub architecture: Architecture,
    /// Residual stream width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Rope scaling (linear, yarn, llama3), if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q, k, v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// RMSNorm on q and k per head before rope (Qwen3).
    pub qk_norm: bool,
    /// Each token attends only to the last `sliding_window` positions (Mistral).
    pub sliding_window: Option<usize>,
}

#[derive(Deserialize)]
struct HfConfig {
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(flatten)]
    rope: HfRopeFields,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    hidden_act: Option<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    4096
}

impl ModelConfig {
    /// Parses a Hugging Face `config.json` text.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::invalid("config.json", e.to_string()))?;
        let arch_name = hf
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .ok_or_else(|| ModelError::Missing("config.json: `architectures`".into()))?;
        let architecture = Architecture::from_hf_name(arch_name)?;
        if let Some(act) = &hf.hidden_act {
            if act != "silu" {
                return Err(ModelError::invalid(
                    "config.json",
                    format!("hidden_act {act:?} is not supported (only silu)"),
                ));
            }
        }
        let rope = hf.rope.resolve(hf.max_position_embeddings)?;
        let sliding_window = match architecture {
            Architecture::Mistral => hf.sliding_window,
            // Qwen2 configs carry a window but disable it unless use_sliding_window is set.
            Architecture::Qwen2 | Architecture::Qwen3 if hf.use_sliding_window == Some(true) => {
                hf.sliding_window
            }
            _ => None,
        };
        let cfg = Self {
            architecture,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf
                .head_dim
                .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            // Qwen2 always has q/k/v bias (transformers hard-codes it); others may opt in.
            attention_bias: architecture == Architecture::Qwen2
                || hf.attention_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            sliding_window,
        };
        cfg.validate("config.json")?;
        Ok(cfg)
    }

    /// Reads the config from GGUF metadata (`{arch}.block_count`, ...). `has_output` says
    /// whether the file has a separate `output.weight` (else embeddings are tied).
    pub fn from_gguf(
        metadata: &HashMap<String, gguf_file::Value>,
        vocab_size: usize,
        has_output: bool,
    ) -> Result<Self> {
        let arch_name = meta::str(metadata, "general.architecture")?;
        let architecture = Architecture::from_gguf_name(arch_name)?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let f64_or = |k: &str, default: f64| -> Result<f64> {
            Ok(meta::opt_f64(metadata, &key(k))?.unwrap_or(default))
        };
        let num_heads: usize = meta::int(metadata, &key("attention.head_count"))?;
        let hidden_size: usize = meta::int(metadata, &key("embedding_length"))?;
        let head_dim = meta::opt_int(metadata, &key("attention.key_length"))?
            .unwrap_or(hidden_size / num_heads.max(1));
        let max_position_embeddings = meta::int(metadata, &key("context_length"))?;
        let rope_scaling = rope_scaling::from_gguf(metadata, arch_name, max_position_embeddings)?;
        let cfg = Self {
            architecture,
            hidden_size,
            intermediate_size: meta::int(metadata, &key("feed_forward_length"))?,
            num_layers: meta::int(metadata, &key("block_count"))?,
            num_heads,
            num_kv_heads: meta::opt_int(metadata, &key("attention.head_count_kv"))?
                .unwrap_or(num_heads),
            head_dim,
            vocab_size,
            rms_norm_eps: f64_or("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_theta: f64_or("rope.freq_base", 10_000.0)?,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: !has_output,
            attention_bias: architecture == Architecture::Qwen2,
            qk_norm: architecture == Architecture::Qwen3,
            sliding_window: meta::opt_int(metadata, &key("attention.sliding_window"))?,
        };
        cfg.validate("GGUF metadata")?;
        Ok(cfg)
    }

    fn validate(&self, what: &str) -> Result<()> {
        let bad = |m: String| Err(ModelError::invalid(what, m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.head_dim == 0 {
            return bad("head counts and head_dim must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for rope", self.head_dim));
        }
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be positive".into());
        }
        Ok(())
    }

    /// Bytes of K and V that one token occupies across all layers, at `dtype_size` bytes
    /// per element.
    pub fn kv_bytes_per_token(&self, dtype_size: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * dtype_size
    }
}

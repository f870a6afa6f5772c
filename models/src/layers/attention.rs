//! Self-attention over the paged KV cache: one fused q/k/v projection (the checkpoint's
//! `q_proj`, `k_proj`, `v_proj` concatenated at load), then one op for the optional
//! per-head q/k RMSNorm (Qwen3), the rotary embedding and the split into queries and
//! stacked keys/values ([`wick_kernels::qkv_rotary`]); the new keys and values are written
//! into the cache by `slot_mapping` in one op, and one paged attention op (wick-kernels)
//! reads every query's keys from the cache, causal by position (and within the sliding
//! window, if any), for prefill, chunked prefill and decode alike. Then the output
//! projection.
//!
//! Invariant: a layer's cache is one `[2, num_blocks, block_size, num_kv_heads, head_dim]`
//! tensor (keys, then values) in the model's dtype (see [`crate::KvCache`]); grouped-query
//! attention is handled by the kernel (query head `h` reads kv head
//! `h / (num_heads / num_kv_heads)`).

use super::rotary::RotaryAt;
use super::{Linear, WeightLoader};
use crate::config::ModelConfig;
use crate::input::ModelInput;
use crate::Result;
use candle_core::Tensor;
use wick_kernels::{LoraBatch, QkNorm, QkvHeads};

/// One attention block's weights and shape.
#[derive(Debug, Clone)]
pub struct Attention {
    /// q, k and v fused: parts `[num_heads * head_dim, num_kv_heads * head_dim x 2]`.
    qkv_proj: Linear,
    o_proj: Linear,
    /// Per-head RMSNorm of queries and keys before rotary (Qwen3).
    qk_norm: Option<QkNorm>,
    heads: QkvHeads,
    scale: f32,
    sliding_window: Option<usize>,
}

impl Attention {
    /// Loads `{prefix}.{q,k,v,o}_proj` (with q/k/v biases if `cfg.attention_bias`) and,
    /// if `cfg.qk_norm`, `{prefix}.{q,k}_norm`.
    pub fn load(ld: &WeightLoader<'_>, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let bias = cfg.attention_bias;
        let norm = |name: &str| ld.tensor(&format!("{prefix}.{name}.weight"), &[hd]);
        let (q, k, v) = (
            format!("{prefix}.q_proj"),
            format!("{prefix}.k_proj"),
            format!("{prefix}.v_proj"),
        );
        let qkv_parts = [
            (q.as_str(), q_out),
            (k.as_str(), kv_out),
            (v.as_str(), kv_out),
        ];
        Ok(Self {
            qkv_proj: Linear::load_fused(ld, &qkv_parts, h, bias)?,
            o_proj: Linear::load(ld, &format!("{prefix}.o_proj"), h, q_out, false)?,
            qk_norm: if cfg.qk_norm {
                Some(QkNorm {
                    q_weight: norm("q_norm")?,
                    k_weight: norm("k_norm")?,
                    eps: cfg.rms_norm_eps as f32,
                })
            } else {
                None
            },
            heads: QkvHeads {
                num_heads: cfg.num_heads,
                num_kv_heads: cfg.num_kv_heads,
                head_dim: hd,
            },
            scale: 1.0 / (hd as f32).sqrt(),
            sliding_window: cfg.sliding_window,
        })
    }

    /// The fused q/k/v projection (LoRA parts 0, 1, 2: q, k, v) and the o projection.
    pub fn projections_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.qkv_proj, &mut self.o_proj]
    }

    /// Attends `x` (`[tokens, hidden]`, normalised) for the step `input`, writing this
    /// layer's new K/V into `kv_cache`; returns `[tokens, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAt,
        kv_cache: &Tensor,
        input: &ModelInput,
        lora: Option<&LoraBatch>,
    ) -> Result<Tensor> {
        let t = input.num_tokens;
        let qkv = self.qkv_proj.forward_lora(x, lora)?;
        let (cos, sin) = rotary.tables();
        let rotated = wick_kernels::qkv_rotary(&qkv, cos, sin, self.heads, self.qk_norm.as_ref())?;
        wick_kernels::reshape_and_cache(&rotated.kv, kv_cache, &input.slot_mapping)?;
        let attn = wick_kernels::paged_attention(
            &rotated.q,
            &kv_cache.get(0)?,
            &kv_cache.get(1)?,
            &input.attention,
            self.scale,
            self.sliding_window,
        )?;
        let width = self.heads.num_heads * self.heads.head_dim;
        self.o_proj.forward_lora(&attn.reshape((t, width))?, lora)
    }
}

//! Self-attention over the paged KV cache: q/k/v projections, optional per-head q/k
//! RMSNorm (Qwen3), rotary embedding, then the new keys and values are written into the
//! cache by `slot_mapping` and one paged attention op (wick-kernels) reads every query's
//! keys from the cache, causal by position (and within the sliding window, if any), for
//! prefill, chunked prefill and decode alike. Then the output projection.
//!
//! Invariant: the cache tensors are `[num_blocks, block_size, num_kv_heads, head_dim]`
//! in the model's dtype (see [`crate::KvCache`]); grouped-query attention is handled by
//! the kernel (query head `h` reads kv head `h / (num_heads / num_kv_heads)`).

use super::rotary::RotaryAt;
use super::{Linear, RmsNorm, WeightLoader};
use crate::config::ModelConfig;
use crate::input::ModelInput;
use crate::Result;
use candle_core::Tensor;
use wick_kernels::LoraBatch;

/// One attention block's weights and shape.
#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Per-head RMSNorm of queries and keys before rotary (Qwen3).
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
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
        let proj = |name: &str, out: usize, inp: usize, bias: bool| {
            Linear::load(ld, &format!("{prefix}.{name}"), out, inp, bias)
        };
        let norm = |name: &str| {
            RmsNorm::load(ld, &format!("{prefix}.{name}.weight"), hd, cfg.rms_norm_eps)
        };
        Ok(Self {
            q_proj: proj("q_proj", q_out, h, bias)?,
            k_proj: proj("k_proj", kv_out, h, bias)?,
            v_proj: proj("v_proj", kv_out, h, bias)?,
            o_proj: proj("o_proj", h, q_out, false)?,
            qk_norm: if cfg.qk_norm {
                Some((norm("q_norm")?, norm("k_norm")?))
            } else {
                None
            },
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            sliding_window: cfg.sliding_window,
        })
    }

    /// q, k, v and o projections, in [`crate::lora::LoraModule`] order (for adapter slots).
    pub fn projections_mut(&mut self) -> [&mut Linear; 4] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
        ]
    }

    /// Attends `x` (`[tokens, hidden]`, normalised) for the step `input`, writing this
    /// layer's new K/V into `k_cache`/`v_cache`; returns `[tokens, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: &RotaryAt,
        k_cache: &Tensor,
        v_cache: &Tensor,
        input: &ModelInput,
        lora: Option<&LoraBatch>,
    ) -> Result<Tensor> {
        let t = input.num_tokens;
        let (hd, nh, nkv) = (self.head_dim, self.num_heads, self.num_kv_heads);
        let q = self.q_proj.forward_lora(x, lora)?.reshape((t, nh, hd))?;
        let k = self.k_proj.forward_lora(x, lora)?.reshape((t, nkv, hd))?;
        let v = self.v_proj.forward_lora(x, lora)?.reshape((t, nkv, hd))?;
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q.contiguous()?)?, kn.forward(&k.contiguous()?)?),
            None => (q, k),
        };
        let q = rotary.apply(&q)?;
        let k = rotary.apply(&k)?;
        wick_kernels::reshape_and_cache(
            &k,
            &v.contiguous()?,
            k_cache,
            v_cache,
            &input.slot_mapping,
        )?;
        let attn = wick_kernels::paged_attention(
            &q,
            k_cache,
            v_cache,
            &input.attention,
            self.scale,
            self.sliding_window,
        )?;
        self.o_proj.forward_lora(&attn.reshape((t, nh * hd))?, lora)
    }
}

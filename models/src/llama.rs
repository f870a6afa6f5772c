//! The Llama-family decoder (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3) as one
//! implementation with switches from [`ModelConfig`]: qkv bias, q/k RMSNorm, sliding
//! window, llama3 rope scaling, tied embeddings.
//!
//! `forward` takes one flattened ragged batch ([`ModelInput`]): each layer writes the new
//! K/V into the paged cache by `slot_mapping`, then one paged attention op reads every
//! query's keys from the cache, causal by position. Prefill, chunked prefill and decode are
//! the same code path. Returns f32 logits for each sequence's last token.

use crate::config::{Llama3RopeScaling, ModelConfig};
use crate::input::ModelInput;
use crate::kv_cache::KvCache;
use crate::weights::Weights;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{ops::rms_norm, rotary_emb::rope_thd, Linear};

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Layer {
    input_layernorm: Tensor,
    attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

/// A loaded Llama-family model.
pub struct LlamaModel {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
}

/// Reads tensors of one model with shape checks.
struct Loader<'a> {
    weights: &'a Weights,
    dtype: DType,
    device: &'a Device,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(name, shape, self.dtype, self.device)
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }
}

impl LlamaModel {
    /// Builds the model from `weights`, converting every tensor to `dtype` on `device`.
    pub fn load(
        cfg: &ModelConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let ld = Loader {
            weights,
            dtype,
            device,
        };
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let embed_tokens = ld.tensor("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let qk_norm = |n: &str| -> Result<Option<Tensor>> {
                if cfg.qk_norm {
                    Ok(Some(
                        ld.tensor(&format!("{p}.self_attn.{n}.weight"), &[hd])?,
                    ))
                } else {
                    Ok(None)
                }
            };
            let attn = Attention {
                q_proj: ld.linear(
                    &format!("{p}.self_attn.q_proj"),
                    cfg.num_heads * hd,
                    h,
                    cfg.attention_bias,
                )?,
                k_proj: ld.linear(
                    &format!("{p}.self_attn.k_proj"),
                    cfg.num_kv_heads * hd,
                    h,
                    cfg.attention_bias,
                )?,
                v_proj: ld.linear(
                    &format!("{p}.self_attn.v_proj"),
                    cfg.num_kv_heads * hd,
                    h,
                    cfg.attention_bias,
                )?,
                o_proj: ld.linear(
                    &format!("{p}.self_attn.o_proj"),
                    h,
                    cfg.num_heads * hd,
                    false,
                )?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
            };
            let mlp = Mlp {
                gate_proj: ld.linear(
                    &format!("{p}.mlp.gate_proj"),
                    cfg.intermediate_size,
                    h,
                    false,
                )?,
                up_proj: ld.linear(&format!("{p}.mlp.up_proj"), cfg.intermediate_size, h, false)?,
                down_proj: ld.linear(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    cfg.intermediate_size,
                    false,
                )?,
            };
            layers.push(Layer {
                input_layernorm: ld.tensor(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn,
                post_attention_layernorm: ld
                    .tensor(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp,
            });
        }
        let norm = ld.tensor("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings && !weights.contains("lm_head.weight") {
            Linear::new(embed_tokens.clone(), None)
        } else {
            ld.linear("lm_head", cfg.vocab_size, h, false)?
        };
        let (cos, sin) = rope_tables(cfg, dtype, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            dtype,
            device: device.clone(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Dtype of weights, activations and the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs one step over `input`, writing its K/V into `cache`; returns f32 logits
    /// `[num_seqs, vocab]` for each sequence's last token.
    pub fn forward(&self, input: &ModelInput, cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.cfg;
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::invalid(
                "KV cache",
                format!(
                    "{} layers, model has {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let max_pos = self.cos.dim(0)?;
        if input.attention.max_seq_len > max_pos {
            return Err(ModelError::invalid(
                "batch",
                format!(
                    "a sequence of {} tokens exceeds the model's context of {max_pos}",
                    input.attention.max_seq_len
                ),
            ));
        }
        let t = input.num_tokens;
        let cos = self.cos.index_select(&input.positions, 0)?;
        let sin = self.sin.index_select(&input.positions, 0)?;
        let scale = 1.0 / (cfg.head_dim as f32).sqrt();
        let mut x = self.embed_tokens.index_select(&input.input_ids, 0)?;
        for (layer, (k_cache, v_cache)) in self.layers.iter().zip(cache.layers.iter()) {
            let residual = &x;
            let h = rms_norm(&x, &layer.input_layernorm, cfg.rms_norm_eps as f32)?;
            let a = &layer.attn;
            let q = a
                .q_proj
                .forward(&h)?
                .reshape((t, cfg.num_heads, cfg.head_dim))?;
            let k = a
                .k_proj
                .forward(&h)?
                .reshape((t, cfg.num_kv_heads, cfg.head_dim))?;
            let v = a
                .v_proj
                .forward(&h)?
                .reshape((t, cfg.num_kv_heads, cfg.head_dim))?;
            let (q, k) = match (&a.q_norm, &a.k_norm) {
                (Some(qn), Some(kn)) => (
                    rms_norm(&q.contiguous()?, qn, cfg.rms_norm_eps as f32)?,
                    rms_norm(&k.contiguous()?, kn, cfg.rms_norm_eps as f32)?,
                ),
                _ => (q, k),
            };
            let q = rope_thd(&q.unsqueeze(0)?.contiguous()?, &cos, &sin)?.squeeze(0)?;
            let k = rope_thd(&k.unsqueeze(0)?.contiguous()?, &cos, &sin)?.squeeze(0)?;
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
                scale,
                cfg.sliding_window,
            )?;
            let attn = a
                .o_proj
                .forward(&attn.reshape((t, cfg.num_heads * cfg.head_dim))?)?;
            let x1 = (residual + attn)?;
            let h = rms_norm(
                &x1,
                &layer.post_attention_layernorm,
                cfg.rms_norm_eps as f32,
            )?;
            let m = &layer.mlp;
            let gate = candle_nn::ops::silu(&m.gate_proj.forward(&h)?)?;
            let mlp = m.down_proj.forward(&(gate * m.up_proj.forward(&h)?)?)?;
            x = (x1 + mlp)?;
        }
        let last = x.index_select(&input.logits_indices, 0)?;
        let last = rms_norm(&last, &self.norm, cfg.rms_norm_eps as f32)?;
        Ok(self.lm_head.forward(&last)?.to_dtype(DType::F32)?)
    }
}

/// Rotary inverse frequencies, with llama3 scaling applied if configured.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|i| {
            let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            match scaling {
                None => f,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let low_wavelen = old / s.low_freq_factor;
                    let high_wavelen = old / s.high_freq_factor;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / s.factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor)
                            / (s.high_freq_factor - s.low_freq_factor);
                        (1.0 - smooth) * f / s.factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

fn rope_tables(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let inv = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
    let half = inv.len();
    let n = cfg.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Log-softmax over the last dimension, in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

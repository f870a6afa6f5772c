//! Rotary position embedding (rotate-half form, as Hugging Face's Llama): cos/sin tables
//! for every position up to the model's context, with the configured [`RopeScaling`]
//! (linear, yarn, llama3) computed as transformers v5 computes it; yarn's attention factor
//! multiplies cos and sin.
//!
//! Per step, [`RotaryEmbedding::at`] gathers the rows of the step's positions once; every
//! layer then applies them to its queries and keys in wick-kernels' `qkv_rotary`.

use crate::config::{Llama3RopeScaling, ModelConfig, RopeScaling, YarnRopeScaling};
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::f64::consts::PI;

/// Rotary inverse frequencies (`head_dim / 2` of them), with `scaling` applied if any.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let plain = (0..head_dim / 2).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64));
    match scaling {
        None => plain.collect(),
        Some(RopeScaling::Linear { factor }) => plain.map(|f| f / factor).collect(),
        Some(RopeScaling::Llama3(s)) => plain.map(|f| llama3_scaled(f, s)).collect(),
        Some(RopeScaling::Yarn(y)) => yarn_inv_freq(head_dim, theta, y),
    }
}

/// One inverse frequency under Llama 3.1 scaling: high frequencies kept, low ones divided
/// by the factor, those between blended smoothly.
fn llama3_scaled(f: f64, s: &Llama3RopeScaling) -> f64 {
    let old = s.original_max_position_embeddings as f64;
    let wavelen = 2.0 * PI / f;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    if wavelen < high_wavelen {
        f
    } else if wavelen > low_wavelen {
        f / s.factor
    } else {
        let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * f / s.factor + smooth * f
    }
}

/// YaRN: dimensions that turn fewer than `beta_slow` times over the original context are
/// interpolated (divided by the factor), those that turn more than `beta_fast` times are
/// kept, and a linear ramp over the dimensions between blends the two.
fn yarn_inv_freq(head_dim: usize, theta: f64, y: &YarnRopeScaling) -> Vec<f64> {
    let dim = head_dim as f64;
    let original = y.original_max_position_embeddings as f64;
    // The dimension at which a frequency turns `rotations` times over the original context.
    let correction_dim =
        |rotations: f64| (dim * (original / (rotations * 2.0 * PI)).ln()) / (2.0 * theta.ln());
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
    if low == high {
        high += 0.001; // no division by zero
    }
    (0..head_dim / 2)
        .map(|i| {
            let pos_freq = theta.powf(2.0 * i as f64 / dim);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (y.factor * pos_freq);
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolation * (1.0 - keep) + extrapolation * keep
        })
        .collect()
}

/// cos/sin tables `[max_positions, head_dim / 2]` in the serving dtype.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
}

/// The cos/sin rows of one step's positions, `[tokens, head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RotaryAt {
    cos: Tensor,
    sin: Tensor,
}

impl RotaryEmbedding {
    /// Tables for `cfg`'s head_dim, rope theta, scaling and context length, computed in
    /// f64 (cos and sin times the scaling's attention factor) and stored in `dtype` on
    /// `device`.
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let scaling = cfg.rope_scaling.as_ref();
        let inv = rope_inv_freq(cfg.head_dim, cfg.rope_theta, scaling);
        let mscale = scaling.map_or(1.0, RopeScaling::attention_factor);
        let half = inv.len();
        let n = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for f in &inv {
                let a = p as f64 * f;
                cos.push((a.cos() * mscale) as f32);
                sin.push((a.sin() * mscale) as f32);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Positions the tables cover (the model's context length).
    pub fn max_positions(&self) -> Result<usize> {
        Ok(self.cos.dim(0)?)
    }

    /// The rows for `positions` (u32, `[tokens]`).
    pub fn at(&self, positions: &Tensor) -> Result<RotaryAt> {
        Ok(RotaryAt {
            cos: self.cos.index_select(positions, 0)?,
            sin: self.sin.index_select(positions, 0)?,
        })
    }
}

impl RotaryAt {
    /// `(cos, sin)`, each `[tokens, head_dim / 2]`, for the fused op
    /// ([`wick_kernels::qkv_rotary`]).
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_divides_every_frequency() {
        let plain = rope_inv_freq(16, 10_000.0, None);
        let scaled = rope_inv_freq(16, 10_000.0, Some(&RopeScaling::Linear { factor: 2.0 }));
        for (p, s) in plain.iter().zip(&scaled) {
            assert!((s - p / 2.0).abs() < 1e-15);
        }
    }

    #[test]
    fn yarn_keeps_fast_dimensions_interpolates_slow_ones_and_ramps_between() {
        let y = YarnRopeScaling {
            factor: 4.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
            truncate: true,
        };
        // Correction range: dimension 10.47 (32 turns) floored to 10, 22.5 (1 turn)
        // ceiled to 23.
        let plain = rope_inv_freq(64, 10_000.0, None);
        let scaled = rope_inv_freq(64, 10_000.0, Some(&RopeScaling::Yarn(y.clone())));
        for (i, (p, s)) in plain.iter().zip(&scaled).enumerate() {
            let ramp = ((i as f64 - 10.0) / 13.0).clamp(0.0, 1.0);
            let want = p / 4.0 * ramp + p * (1.0 - ramp);
            assert!((s - want).abs() < 1e-15 * p.max(1.0), "{i}: {s} vs {want}");
            if i <= 10 {
                assert_eq!(s, p);
            } else if i >= 23 {
                assert!((s - p / 4.0).abs() < 1e-18);
            }
        }
        // Without truncation the range is fractional: dimension 10 is already ramped.
        let untruncated = YarnRopeScaling {
            truncate: false,
            ..y
        };
        let s = rope_inv_freq(64, 10_000.0, Some(&RopeScaling::Yarn(untruncated)));
        assert!(s[10] == plain[10] && s[11] < plain[11] && s[11] > scaled[11]);
    }

    #[test]
    fn yarn_attention_factor_scales_cos_and_sin() {
        let json = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 16, "max_position_embeddings": 8,
            "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                "original_max_position_embeddings": 2}
        });
        let cfg = ModelConfig::from_hf_json(&json.to_string()).unwrap();
        let rope = RotaryEmbedding::new(&cfg, DType::F32, &Device::Cpu).unwrap();
        let cos0 = rope.cos.get(0).unwrap().to_vec1::<f32>().unwrap();
        let want = (0.1 * 4f64.ln() + 1.0) as f32;
        assert!(cos0.iter().all(|&c| (c - want).abs() < 1e-6), "{cos0:?}");
        let sin0 = rope.sin.get(0).unwrap().to_vec1::<f32>().unwrap();
        assert!(sin0.iter().all(|&s| s == 0.0));
    }
}

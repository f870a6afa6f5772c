//! Rotary position embedding (rotate-half form, as Hugging Face's Llama): cos/sin tables
//! for every position up to the model's context, with Llama 3.1-style frequency scaling
//! when configured.
//!
//! Per step, [`RotaryEmbedding::at`] gathers the rows of the step's positions once; every
//! layer then applies them to its queries and keys with candle-nn's fused `rope_thd`.

use crate::config::{Llama3RopeScaling, ModelConfig};
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};

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
    /// f64 and stored in `dtype` on `device`.
    pub fn new(cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
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
    /// Rotates `x` of shape `[tokens, heads, head_dim]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 3 {
            return Err(ModelError::invalid(
                "rotary input",
                format!("shape {:?}, expected [tokens, heads, head_dim]", x.dims()),
            ));
        }
        let y =
            candle_nn::rotary_emb::rope_thd(&x.unsqueeze(0)?.contiguous()?, &self.cos, &self.sin)?;
        Ok(y.squeeze(0)?)
    }
}

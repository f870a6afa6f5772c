//! RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, through
//! candle-nn's fused `rms_norm` op (computed in f32 internally for half dtypes).

use super::WeightLoader;
use crate::Result;
use candle_core::Tensor;

/// RMSNorm with a learned per-feature scale.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// A norm from its `[dim]` weight.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    /// Loads `{name}` of shape `[dim]`.
    pub fn load(ld: &WeightLoader<'_>, name: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self::new(ld.tensor(name, &[dim])?, eps))
    }

    /// Normalises `x` (contiguous) over its last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps)?)
    }
}

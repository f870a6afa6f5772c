//! RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight`, through
//! candle-nn's fused `rms_norm` op (computed in f32 internally for half dtypes), or, after
//! a residual addition, both in one pass ([`RmsNorm::add_forward`], wick-kernels'
//! `add_rms_norm`).

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

    /// `x + residual` (`[tokens, hidden]`) and its normalised copy: `(sum, normed)`.
    pub fn add_forward(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(wick_kernels::add_rms_norm(
            x,
            residual,
            &self.weight,
            self.eps,
        )?)
    }
}

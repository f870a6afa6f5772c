//! The building blocks every architecture family is made of: [`linear::Linear`] (wick's
//! own, the one place every projection goes through), [`attention::Attention`] over the
//! paged KV cache, the gated [`mlp::Mlp`], [`rotary::RotaryEmbedding`] and
//! [`norm::RmsNorm`], and the adapter slots [`lora::LoraSlots`] a `Linear` may carry. A family file (e.g. `llama.rs`) composes them; it holds no
//! arithmetic of its own beyond residual additions.
//!
//! Every layer is built through a [`WeightLoader`], which reads tensors by their Hugging
//! Face names with the shapes the config implies and converts them to the serving dtype
//! and device. Numerics are those of the previous single-file Llama implementation: the
//! golden and architecture tests pin them.

pub mod attention;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod rotary;

pub use attention::Attention;
pub use linear::Linear;
pub use lora::LoraSlots;
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use rotary::RotaryEmbedding;

use crate::weights::Weights;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// Reads one model's tensors from [`Weights`] with shape checks, in the serving dtype
/// on the serving device.
pub struct WeightLoader<'a> {
    weights: &'a Weights,
    dtype: DType,
    device: &'a Device,
}

impl<'a> WeightLoader<'a> {
    /// A loader converting every tensor to `dtype` on `device`.
    pub fn new(weights: &'a Weights, dtype: DType, device: &'a Device) -> Self {
        Self {
            weights,
            dtype,
            device,
        }
    }

    /// The tensor `name` (Hugging Face naming), which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(name, shape, self.dtype, self.device)
    }

    /// True if the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
}

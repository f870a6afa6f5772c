//! The building blocks every architecture family is made of: [`linear::Linear`] (wick's
//! own, the one place every projection goes through, fused q/k/v and gate/up included),
//! [`attention::Attention`] over the paged KV cache, the gated [`mlp::Mlp`],
//! [`rotary::RotaryEmbedding`] and [`norm::RmsNorm`] (with the residual addition fused in),
//! and the adapter slots [`lora::LoraSlots`] a `Linear` may carry. A family file (e.g.
//! `llama.rs`) composes them; it holds no arithmetic of its own.
//!
//! Where a checkpoint's projections are fused, LoRA and (future) sharding still address
//! q, k, v, gate and up one by one: see [`linear`] (each fused part keeps its own adapter
//! slots and would keep its own shard of rows).
//!
//! Every layer is built through a [`WeightLoader`], which reads tensors by their Hugging
//! Face names with the shapes the config implies and converts them to the serving dtype
//! and device (or, for projections and the token embedding of a GGUF file loaded with
//! `--quantization auto|gguf`, keeps them in their GGUF types), and counts the bytes of
//! what it loaded by storage type ([`WeightBytes`]). Numerics are those of the previous single-file Llama implementation: the
//! golden and architecture tests pin them.

pub mod attention;
pub mod embedding;
pub mod linear;
pub mod lora;
pub mod mlp;
pub mod norm;
pub mod rotary;

pub use attention::Attention;
pub use embedding::Embedding;
pub use linear::{Linear, LinearWeight};
pub use lora::LoraSlots;
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use rotary::RotaryEmbedding;

use crate::quantization::WeightBytes;
use crate::weights::Weights;
use crate::Result;
use candle_core::{DType, Device, Tensor};
use std::cell::RefCell;
use std::sync::Arc;

/// Reads one model's tensors from [`Weights`] with shape checks, in the serving dtype
/// on the serving device.
pub struct WeightLoader<'a> {
    weights: &'a Weights,
    dtype: DType,
    device: &'a Device,
    bytes: RefCell<WeightBytes>,
}

impl<'a> WeightLoader<'a> {
    /// A loader converting every tensor to `dtype` on `device`.
    pub fn new(weights: &'a Weights, dtype: DType, device: &'a Device) -> Self {
        Self {
            weights,
            dtype,
            device,
            bytes: RefCell::default(),
        }
    }

    /// The serving dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The tensor `name` (Hugging Face naming), which must have `shape`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.weights.get(name, shape, self.dtype, self.device)?;
        self.bytes.borrow_mut().add(
            self.dtype.as_str(),
            t.elem_count() * self.dtype.size_in_bytes(),
        );
        Ok(t)
    }

    /// The `[out, in]` weight `name`: quantized if the checkpoint keeps it so (see
    /// [`Weights::get_quantized`]), else dense in the serving dtype.
    pub fn linear_weight(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        match self.weights.get_quantized(name, shape, self.device)? {
            Some(q) => {
                let ty = format!("{:?}", q.dtype());
                self.bytes.borrow_mut().add(&ty, q.storage_size_in_bytes());
                Ok(LinearWeight::Quantized(Arc::new(q)))
            }
            None => Ok(LinearWeight::Dense(self.tensor(name, shape)?)),
        }
    }

    /// Bytes of everything loaded so far, by storage type.
    pub fn bytes(&self) -> WeightBytes {
        self.bytes.borrow().clone()
    }

    /// True if the checkpoint has a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
}

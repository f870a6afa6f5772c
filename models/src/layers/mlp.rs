//! The gated MLP of the Llama family: `down(silu(gate(x)) * up(x))`.

use super::{Linear, WeightLoader};
use crate::Result;
use candle_core::Tensor;
use wick_kernels::LoraBatch;

/// Gated SiLU MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj`, `{prefix}.up_proj` (`[inner, hidden]`) and
    /// `{prefix}.down_proj` (`[hidden, inner]`), without biases.
    pub fn load(ld: &WeightLoader<'_>, prefix: &str, hidden: usize, inner: usize) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(ld, &format!("{prefix}.gate_proj"), inner, hidden, false)?,
            up_proj: Linear::load(ld, &format!("{prefix}.up_proj"), inner, hidden, false)?,
            down_proj: Linear::load(ld, &format!("{prefix}.down_proj"), hidden, inner, false)?,
        })
    }

    /// `[tokens, hidden]` -> `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraBatch>) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward_lora(x, lora)?)?;
        let up = self.up_proj.forward_lora(x, lora)?;
        self.down_proj.forward_lora(&(gate * up)?, lora)
    }

    /// gate, up and down projections, in [`crate::lora::LoraModule`] order (for adapter
    /// slots).
    pub fn projections_mut(&mut self) -> [&mut Linear; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }
}

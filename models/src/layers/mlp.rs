//! The gated MLP of the Llama family: `down(silu(gate(x)) * up(x))`, with gate and up as
//! one fused projection (the checkpoint's `gate_proj` and `up_proj` concatenated at load)
//! and the activation and product in one op ([`wick_kernels::silu_mul`]).

use super::{Linear, WeightLoader};
use crate::Result;
use candle_core::Tensor;
use wick_kernels::LoraBatch;

/// Gated SiLU MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// gate and up fused: parts `[inner, inner]`.
    gate_up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.gate_proj`, `{prefix}.up_proj` (`[inner, hidden]`) and
    /// `{prefix}.down_proj` (`[hidden, inner]`), without biases.
    pub fn load(ld: &WeightLoader<'_>, prefix: &str, hidden: usize, inner: usize) -> Result<Self> {
        let (gate, up) = (format!("{prefix}.gate_proj"), format!("{prefix}.up_proj"));
        let parts = [(gate.as_str(), inner), (up.as_str(), inner)];
        Ok(Self {
            gate_up_proj: Linear::load_fused(ld, &parts, hidden, false)?,
            down_proj: Linear::load(ld, &format!("{prefix}.down_proj"), hidden, inner, false)?,
        })
    }

    /// `[tokens, hidden]` -> `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraBatch>) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward_lora(x, lora)?;
        self.down_proj
            .forward_lora(&wick_kernels::silu_mul(&gate_up)?, lora)
    }

    /// The fused gate/up projection (LoRA parts 0, 1: gate, up) and the down projection.
    pub fn projections_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.gate_up_proj, &mut self.down_proj]
    }
}

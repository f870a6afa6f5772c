//! wick's own linear layer: `y = x W^T + b` for inputs of shape `[tokens, in]` (or any
//! leading dimensions, flattened), in whatever dtype the weights are in.
//!
//! Every projection of every model goes through this type, so it is the single place
//! where, later, LoRA adapters (an added low-rank delta per request), quantized weights
//! (a different weight storage and matmul), fused projections (q/k/v or gate/up as one
//! matmul whose output is split) and column/row sharding for tensor parallelism (a slice
//! of `W` per device plus a gather or reduce) hook in. LoRA is here: a projection with
//! adapter slots ([`LoraSlots`]) adds each token's adapter delta after the dense matmul
//! ([`Linear::forward_lora`]); the others do not exist yet.
//!
//! Invariant: the arithmetic is exactly candle-nn's `Linear` for contiguous inputs (one
//! 2-D matmul against the transposed weight, then a broadcast bias add), so replacing it
//! changed no logits.

use super::lora::LoraSlots;
use super::WeightLoader;
use crate::lora::LoraPair;
use crate::{ModelError, Result};
use candle_core::Tensor;
use wick_kernels::LoraBatch;

/// A dense linear projection with an optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    weight: Tensor,
    /// `[out]`.
    bias: Option<Tensor>,
    /// Adapter slots, when LoRA is enabled for this projection.
    lora: Option<LoraSlots>,
}

impl Linear {
    /// A layer from a `[out, in]` weight and an optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Gives the projection `num_slots` empty adapter slots (in its weight's dtype and
    /// device).
    pub fn enable_lora(&mut self, num_slots: usize) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let (dtype, device) = (self.weight.dtype(), self.weight.device());
        self.lora = Some(LoraSlots::new(num_slots, inp, out, dtype, device)?);
        Ok(())
    }

    /// Puts `pair` (`None`: zeros) in adapter `slot`; an error if LoRA is not enabled.
    pub fn set_lora(&mut self, slot: usize, pair: Option<&LoraPair>) -> Result<()> {
        match &mut self.lora {
            Some(slots) => slots.set(slot, pair),
            None => Err(ModelError::invalid("LoRA", "adapters are not enabled")),
        }
    }

    /// Loads `{prefix}.weight` `[out, inp]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn load(
        ld: &WeightLoader<'_>,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = ld.tensor(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(ld.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self::new(weight, bias))
    }

    /// [`Linear::forward`] plus, for `[tokens, in]` inputs, each token's adapter delta
    /// as `lora` assigns slots (nothing when `lora` is `None` or has no adapted token).
    pub fn forward_lora(&self, x: &Tensor, lora: Option<&LoraBatch>) -> Result<Tensor> {
        let y = self.forward(x)?;
        match (&self.lora, lora) {
            (Some(slots), Some(batch)) if !batch.is_empty() && slots.rank() > 0 => {
                let (a, b) = slots.stacks();
                Ok(wick_kernels::lora_apply(&y, x, a, b, batch)?)
            }
            _ => Ok(y),
        }
    }

    /// Applies the layer to `x` of shape `[..., in]`; returns `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some((&inp, lead)) = dims.split_last() else {
            return Err(ModelError::invalid(
                "linear input",
                "a scalar has no features",
            ));
        };
        let w = self.weight.t()?;
        let y = match lead {
            [_] => x.matmul(&w)?,
            _ => {
                let rows: usize = lead.iter().product();
                let mut out_shape = lead.to_vec();
                out_shape.push(self.weight.dim(0)?);
                x.contiguous()?
                    .reshape((rows, inp))?
                    .matmul(&w)?
                    .reshape(out_shape)?
            }
        };
        Ok(match &self.bias {
            None => y,
            Some(b) => y.broadcast_add(b)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candle_nn_linear() {
        use candle_core::Module;
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
        for bias in [None, Some(b)] {
            let ours = Linear::new(w.clone(), bias.clone()).forward(&x).unwrap();
            let theirs = candle_nn::Linear::new(w.clone(), bias).forward(&x).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn flattens_leading_dims_and_keeps_dtype() {
        let dev = Device::Cpu;
        let w = Tensor::ones((2, 3), DType::BF16, &dev).unwrap();
        let x = Tensor::ones((2, 4, 3), DType::BF16, &dev).unwrap();
        let y = Linear::new(w, None).forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 4, 2]);
        assert_eq!(y.dtype(), DType::BF16);
        let s = Tensor::new(1f32, &dev).unwrap();
        assert!(Linear::new(s.clone(), None).forward(&s).is_err());
    }
}

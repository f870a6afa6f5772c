//! wick's own linear layer: `y = x W^T + b` for inputs of shape `[tokens, in]` (or any
//! leading dimensions, flattened), in whatever dtype the weights are in.
//!
//! Every projection of every model goes through this type, so it is the single place
//! where, later, LoRA adapters (an added low-rank delta per request), quantized weights
//! (a different weight storage and matmul), fused projections (q/k/v or gate/up as one
//! matmul whose output is split) and column/row sharding for tensor parallelism (a slice
//! of `W` per device plus a gather or reduce) hook in. LoRA is here: a projection with
//! adapter slots ([`LoraSlots`]) adds each token's adapter delta after the base matmul
//! ([`Linear::forward_lora`]). Quantized weights are here: the weight is a
//! [`LinearWeight`], dense (a tensor in the serving dtype) or quantized (a GGUF-typed
//! [`QTensor`] multiplied by candle's [`QMatMul`], or on the CPU for Q4_1 and Q8_0 by wick's
//! own [`QuantMatrix`]; both take f32 activations and, on the CPU, quantize them to 8-bit
//! blocks for the dot products); LoRA deltas are added on top of either. Fused projections and sharding do not exist yet.
//!
//! Invariant: the dense arithmetic is exactly candle-nn's `Linear` for contiguous inputs
//! (one 2-D matmul against the transposed weight, then a broadcast bias add), so
//! replacing it changed no logits. Output dtype is always the serving dtype.

use super::lora::LoraSlots;
use super::WeightLoader;
use crate::lora::LoraPair;
use crate::{ModelError, Result};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::sync::Arc;
use wick_kernels::{LoraBatch, QuantMatrix};

/// How a projection's `[out, in]` weight is stored.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A tensor in the serving dtype.
    Dense(Tensor),
    /// A block-quantized GGUF tensor (shared: a tied `lm_head` and the token embedding
    /// hold the same one).
    Quantized(Arc<QTensor>),
}

/// The weight as the layer keeps it.
#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized {
        qmm: QuantizedMatmul,
        /// `(out, in)`.
        dims: (usize, usize),
        /// Serving dtype: of activations in and out, and of LoRA slots.
        dtype: DType,
        device: Device,
    },
}

/// Who multiplies a quantized weight: wick's own CPU kernel for the block types it has one
/// for ([`QuantMatrix`]: Q4_1, whose candle CPU path is scalar, and Q8_0, e.g. SmolLM2's
/// token embedding as its tied `lm_head`, read in place), candle's `QMatMul` for the others
/// and on CUDA.
#[derive(Debug, Clone)]
enum QuantizedMatmul {
    Candle(QMatMul),
    Wick(QuantMatrix),
}

impl QuantizedMatmul {
    fn new(q: Arc<QTensor>) -> Result<Self> {
        Ok(if q.device().is_cpu() && QuantMatrix::supports(q.dtype()) {
            QuantizedMatmul::Wick(QuantMatrix::from_gguf(q)?)
        } else {
            QuantizedMatmul::Candle(QMatMul::from_arc(q)?)
        })
    }

    /// `x W^T` for contiguous f32 `x` of shape `[tokens, in]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            QuantizedMatmul::Candle(qmm) => qmm.forward(x)?,
            QuantizedMatmul::Wick(m) => m.forward(x)?,
        })
    }
}

/// A linear projection (dense or quantized weight) with an optional bias.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    weight: Weight,
    /// `[out]`.
    bias: Option<Tensor>,
    /// Adapter slots, when LoRA is enabled for this projection.
    lora: Option<LoraSlots>,
}

impl Linear {
    /// A layer from a `[out, in]` weight and an optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight),
            bias,
            lora: None,
        }
    }

    /// A layer from either storage of its weight; `dtype` is the serving dtype (of the
    /// activations, the bias and LoRA slots), which a dense weight must already have.
    pub fn from_weight(weight: LinearWeight, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        let weight = match weight {
            LinearWeight::Dense(w) => Weight::Dense(w),
            LinearWeight::Quantized(q) => Weight::Quantized {
                dims: q.shape().dims2()?,
                device: q.device(),
                qmm: QuantizedMatmul::new(q)?,
                dtype,
            },
        };
        Ok(Self {
            weight,
            bias,
            lora: None,
        })
    }

    /// True if the weight is kept quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized { .. })
    }

    /// `(out, in)` features, dtype and device of the layer.
    fn meta(&self) -> Result<((usize, usize), DType, Device)> {
        Ok(match &self.weight {
            Weight::Dense(w) => (w.dims2()?, w.dtype(), w.device().clone()),
            Weight::Quantized {
                dims,
                dtype,
                device,
                ..
            } => (*dims, *dtype, device.clone()),
        })
    }

    /// Gives the projection `num_slots` empty adapter slots (in the serving dtype, on the
    /// layer's device).
    pub fn enable_lora(&mut self, num_slots: usize) -> Result<()> {
        let ((out, inp), dtype, device) = self.meta()?;
        self.lora = Some(LoraSlots::new(num_slots, inp, out, dtype, &device)?);
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
        let weight = ld.linear_weight(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(ld.tensor(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Self::from_weight(weight, bias, ld.dtype())
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
        let y = match &self.weight {
            Weight::Dense(weight) => {
                let w = weight.t()?;
                match lead {
                    [_] => x.matmul(&w)?,
                    _ => {
                        let rows: usize = lead.iter().product();
                        let mut out_shape = lead.to_vec();
                        out_shape.push(weight.dim(0)?);
                        x.contiguous()?
                            .reshape((rows, inp))?
                            .matmul(&w)?
                            .reshape(out_shape)?
                    }
                }
            }
            Weight::Quantized {
                qmm,
                dims: (out, _),
                dtype,
                ..
            } => {
                // candle's quantized matmul takes contiguous f32 activations.
                let rows: usize = lead.iter().product();
                let mut out_shape = lead.to_vec();
                out_shape.push(*out);
                let x32 = x.to_dtype(DType::F32)?.contiguous()?.reshape((rows, inp))?;
                qmm.forward(&x32)?.to_dtype(*dtype)?.reshape(out_shape)?
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

    #[test]
    fn lora_on_a_quantized_base_adds_the_same_delta() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        let (out, inp, rank) = (8, 64, 4);
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let mut quant = Linear::from_weight(LinearWeight::Quantized(q), None, DType::F32).unwrap();
        assert!(quant.is_quantized());
        assert!(quant.set_lora(0, None).is_err());
        quant.enable_lora(2).unwrap();
        let pair = LoraPair {
            a: Tensor::randn(0f32, 1.0, (rank, inp), &dev).unwrap(),
            b: Tensor::randn(0f32, 1.0, (out, rank), &dev).unwrap(),
        };
        quant.set_lora(1, Some(&pair)).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, inp), &dev).unwrap();
        // Token 0 has no adapter, token 1 sits on the empty slot 0, token 2 on slot 1.
        let batch = LoraBatch::new(&[-1, 0, 1], &[0, rank], &dev).unwrap();
        let got = quant.forward_lora(&x, Some(&batch)).unwrap();
        let base = quant.forward(&x).unwrap();
        let delta = x.matmul(&pair.a.t().unwrap()).unwrap();
        let delta = delta.matmul(&pair.b.t().unwrap()).unwrap();
        let got = got.to_vec2::<f32>().unwrap();
        let base = base.to_vec2::<f32>().unwrap();
        let delta = delta.to_vec2::<f32>().unwrap();
        assert_eq!(got[0], base[0]);
        assert_eq!(got[1], base[1]);
        for j in 0..out {
            let want = base[2][j] + delta[2][j];
            assert!((got[2][j] - want).abs() < 1e-3 * (1.0 + want.abs()), "{j}");
        }
    }
}

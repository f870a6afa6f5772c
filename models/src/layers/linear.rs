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
//! blocks for the dot products); LoRA deltas are added on top of either. Fused projections
//! are here: [`Linear::load_fused`] concatenates several checkpoint projections that read
//! the same input (q/k/v, gate/up) along the output dimension at load, so one matmul
//! computes all of them; the checkpoint keeps its names, and the layer remembers each
//! part's output width ([`Linear::parts`]).
//!
//! How fused parts stay addressable one by one:
//! - LoRA: each part has its own [`LoraSlots`] (adapters target `q_proj`, `k_proj`, ...
//!   separately, [`Linear::set_lora`] takes the part); [`Linear::forward_lora`] adds each
//!   part's delta to its column range of the fused output (one grouped op per adapted part).
//! - Sharding (not built): a column-parallel fused projection keeps, for each part, the
//!   rows of its shard (`out_p / world` of each part, concatenated in part order), so every
//!   device holds whole heads of q, k and v and the split stays per part; a part's LoRA B
//!   is sharded the same way and A stays whole.
//! - Storage: parts whose weights cannot share one matrix (a GGUF file that quantizes
//!   `v_proj` with another block type than `q_proj`) stay separate matrices whose outputs
//!   are concatenated: the same result, one matmul per part.
//!
//! Invariant: the dense arithmetic is exactly candle-nn's `Linear` for contiguous inputs
//! (one 2-D matmul against the transposed weight, then a broadcast bias add), so
//! replacing it changed no logits. Output dtype is always the serving dtype.

use super::lora::LoraSlots;
use super::WeightLoader;
use crate::lora::LoraPair;
use crate::{ModelError, Result};
use candle_core::quantized::{QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use std::borrow::Cow;
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
    /// Fused parts whose storage could not be joined, each `[out_p, in]`; outputs are
    /// concatenated.
    Parts(Vec<Weight>),
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

impl Weight {
    fn new(weight: LinearWeight, dtype: DType) -> Result<Self> {
        Ok(match weight {
            LinearWeight::Dense(w) => Weight::Dense(w),
            LinearWeight::Quantized(q) => Weight::Quantized {
                dims: q.shape().dims2()?,
                device: q.device(),
                qmm: QuantizedMatmul::new(q)?,
                dtype,
            },
        })
    }

    /// One weight for fused parts `[out_p, in]`: dense ones concatenated, quantized ones
    /// of one block type joined (a GGUF tensor's rows are whole blocks, so rows
    /// concatenate as bytes), anything else kept as parts.
    fn join(mut parts: Vec<LinearWeight>, dtype: DType) -> Result<Self> {
        if parts.len() == 1 {
            return Self::new(parts.remove(0), dtype);
        }
        let dense: Vec<&Tensor> = (parts.iter())
            .filter_map(|p| match p {
                LinearWeight::Dense(w) => Some(w),
                LinearWeight::Quantized(_) => None,
            })
            .collect();
        if dense.len() == parts.len() {
            return Ok(Weight::Dense(Tensor::cat(&dense, 0)?));
        }
        let quantized: Vec<&Arc<QTensor>> = (parts.iter())
            .filter_map(|p| match p {
                LinearWeight::Quantized(q) => Some(q),
                LinearWeight::Dense(_) => None,
            })
            .collect();
        let block_type = quantized.first().map(|q| q.dtype());
        if quantized.len() != parts.len() || quantized.iter().any(|q| Some(q.dtype()) != block_type)
        {
            let parts = parts.into_iter().map(|p| Self::new(p, dtype));
            return Ok(Weight::Parts(parts.collect::<Result<_>>()?));
        }
        let (mut out, mut inp, mut bytes) = (0, 0, Vec::new());
        for q in &quantized {
            let (o, i) = q.shape().dims2()?;
            (out, inp) = (out + o, i);
            bytes.extend_from_slice(&q.data()?);
        }
        let (ty, device) = (quantized[0].dtype(), quantized[0].device());
        let storage = QStorage::from_data(Cow::Owned(bytes), &device, ty)?;
        let joined = Arc::new(QTensor::new(storage, (out, inp))?);
        Self::new(LinearWeight::Quantized(joined), dtype)
    }

    /// `(out, in)`.
    fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Weight::Dense(w) => w.dims2()?,
            Weight::Quantized { dims, .. } => *dims,
            Weight::Parts(parts) => {
                let mut out = 0;
                let mut inp = 0;
                for p in parts {
                    let (o, i) = p.dims()?;
                    out += o;
                    inp = i;
                }
                (out, inp)
            }
        })
    }

    /// Serving dtype and device.
    fn dtype_device(&self) -> Result<(DType, Device)> {
        match self {
            Weight::Dense(w) => Ok((w.dtype(), w.device().clone())),
            Weight::Quantized { dtype, device, .. } => Ok((*dtype, device.clone())),
            Weight::Parts(parts) => match parts.first() {
                Some(p) => p.dtype_device(),
                None => Err(ModelError::invalid("linear", "a fused weight of no parts")),
            },
        }
    }

    fn is_quantized(&self) -> bool {
        match self {
            Weight::Dense(_) => false,
            Weight::Quantized { .. } => true,
            Weight::Parts(parts) => parts.iter().all(Weight::is_quantized),
        }
    }

    /// `x W^T` for contiguous `x` of shape `[rows, in]`, in the serving dtype.
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(w) => x.matmul(&w.t()?)?,
            Weight::Quantized { qmm, dtype, .. } => {
                // candle's quantized matmul takes contiguous f32 activations.
                qmm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(*dtype)?
            }
            Weight::Parts(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.matmul(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)?
            }
        })
    }
}

/// A linear projection (dense or quantized weight) with an optional bias; possibly several
/// fused projections of one input.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    weight: Weight,
    /// `[out]`.
    bias: Option<Tensor>,
    /// Output features of each fused part, in order; one entry for a plain projection.
    parts: Vec<usize>,
    /// Adapter slots of each part, when LoRA is enabled for this projection (else empty).
    lora: Vec<LoraSlots>,
}

impl Linear {
    /// A layer from a `[out, in]` weight and an optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let out = weight.dims().first().copied().unwrap_or(0);
        Self {
            weight: Weight::Dense(weight),
            bias,
            parts: vec![out],
            lora: Vec::new(),
        }
    }

    /// A layer from either storage of its weight; `dtype` is the serving dtype (of the
    /// activations, the bias and LoRA slots), which a dense weight must already have.
    pub fn from_weight(weight: LinearWeight, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        Self::from_parts(vec![weight], bias, dtype)
    }

    /// Loads the projections `{prefix}.weight` `[out_p, inp]` (and `{prefix}.bias` if
    /// `bias`) of every `(prefix, out_p)` in `parts` as one fused layer whose output is
    /// the parts' outputs side by side, in order. Dense weights are concatenated, quantized
    /// ones too when they share a block type; otherwise they stay separate matrices.
    pub fn load_fused(
        ld: &WeightLoader<'_>,
        parts: &[(&str, usize)],
        inp: usize,
        bias: bool,
    ) -> Result<Self> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for &(prefix, out) in parts {
            weights.push(ld.linear_weight(&format!("{prefix}.weight"), &[out, inp])?);
            if bias {
                biases.push(ld.tensor(&format!("{prefix}.bias"), &[out])?);
            }
        }
        let bias = if bias {
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        Self::from_parts(weights, bias, ld.dtype())
    }

    /// A fused layer from its parts' `[out_p, in]` weights, in order, and the
    /// concatenated bias; see [`Linear::load_fused`].
    pub fn from_parts(
        weights: Vec<LinearWeight>,
        bias: Option<Tensor>,
        dtype: DType,
    ) -> Result<Self> {
        let parts = (weights.iter())
            .map(|w| match w {
                LinearWeight::Dense(t) => Ok(t.dim(0)?),
                LinearWeight::Quantized(q) => Ok(q.shape().dims2()?.0),
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Self {
            weight: Weight::join(weights, dtype)?,
            bias,
            parts,
            lora: Vec::new(),
        })
    }

    /// Output features of each fused part, in order (one entry for a plain projection).
    pub fn parts(&self) -> &[usize] {
        &self.parts
    }

    /// True if the weight (of every part) is kept quantized.
    pub fn is_quantized(&self) -> bool {
        self.weight.is_quantized()
    }

    /// Gives every part of the projection `num_slots` empty adapter slots (in the serving
    /// dtype, on the layer's device).
    pub fn enable_lora(&mut self, num_slots: usize) -> Result<()> {
        let (_, inp) = self.weight.dims()?;
        let (dtype, device) = self.weight.dtype_device()?;
        self.lora = (self.parts.iter())
            .map(|&out| LoraSlots::new(num_slots, inp, out, dtype, &device))
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Puts `pair` (`None`: zeros) in adapter `slot` of fused part `part` (0 for a plain
    /// projection); an error if LoRA is not enabled or there is no such part.
    pub fn set_lora(&mut self, slot: usize, part: usize, pair: Option<&LoraPair>) -> Result<()> {
        if self.lora.is_empty() {
            return Err(ModelError::invalid("LoRA", "adapters are not enabled"));
        }
        match self.lora.get_mut(part) {
            Some(slots) => slots.set(slot, pair),
            None => Err(ModelError::invalid(
                "LoRA",
                format!("part {part} of a projection of {} parts", self.parts.len()),
            )),
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
        Self::load_fused(ld, &[(prefix, out)], inp, bias)
    }

    /// [`Linear::forward`] plus, for `[tokens, in]` inputs, each token's adapter delta
    /// as `lora` assigns slots (nothing when `lora` is `None` or has no adapted token). A
    /// fused projection adds each part's delta to the part's columns.
    pub fn forward_lora(&self, x: &Tensor, lora: Option<&LoraBatch>) -> Result<Tensor> {
        let y = self.forward(x)?;
        let Some(batch) = lora.filter(|b| !b.is_empty()) else {
            return Ok(y);
        };
        if self.lora.iter().all(|slots| slots.rank() == 0) {
            return Ok(y);
        }
        let apply = |y: &Tensor, slots: &LoraSlots| -> Result<Tensor> {
            if slots.rank() == 0 {
                return Ok(y.clone());
            }
            let (a, b) = slots.stacks();
            Ok(wick_kernels::lora_apply(y, x, a, b, batch)?)
        };
        if let [slots] = self.lora.as_slice() {
            return apply(&y, slots);
        }
        let mut start = 0;
        let mut outs = Vec::with_capacity(self.parts.len());
        for (&width, slots) in self.parts.iter().zip(&self.lora) {
            outs.push(apply(&y.narrow(1, start, width)?, slots)?);
            start += width;
        }
        Ok(Tensor::cat(&outs, 1)?)
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
        let rows: usize = lead.iter().product();
        let y = self.weight.matmul(&x.contiguous()?.reshape((rows, inp))?)?;
        let mut out_shape = lead.to_vec();
        out_shape.push(y.dim(1)?);
        let y = y.reshape(out_shape)?;
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
        assert!(quant.set_lora(0, 0, None).is_err());
        quant.enable_lora(2).unwrap();
        let pair = LoraPair {
            a: Tensor::randn(0f32, 1.0, (rank, inp), &dev).unwrap(),
            b: Tensor::randn(0f32, 1.0, (out, rank), &dev).unwrap(),
        };
        quant.set_lora(1, 0, Some(&pair)).unwrap();
        assert!(quant.set_lora(1, 1, Some(&pair)).is_err());
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

    /// Three parts `[out_p, inp]` of random f32 weights.
    fn three_parts(inp: usize) -> Vec<Tensor> {
        let dev = Device::Cpu;
        [(8, inp), (4, inp), (4, inp)]
            .iter()
            .map(|&s| Tensor::randn(0f32, 1.0, s, &dev).unwrap())
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_parts_equal_separate_projections() {
        use candle_core::quantized::GgmlDType;
        let dev = Device::Cpu;
        let inp = 64;
        let ws = three_parts(inp);
        let bs: Vec<Tensor> = (ws.iter())
            .map(|w| Tensor::randn(0f32, 1.0, w.dim(0).unwrap(), &dev).unwrap())
            .collect();
        let x = Tensor::randn(0f32, 1.0, (5, inp), &dev).unwrap();
        let separate: Vec<Tensor> = (ws.iter().zip(&bs))
            .map(|(w, b)| Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap())
            .collect();
        let want = Tensor::cat(&separate, 1).unwrap();
        let dense = ws.iter().cloned().map(LinearWeight::Dense).collect();
        let bias = Some(Tensor::cat(&bs, 0).unwrap());
        let fused = Linear::from_parts(dense, bias.clone(), DType::F32).unwrap();
        assert_eq!(fused.parts(), &[8, 4, 4]);
        assert!(matches!(fused.weight, Weight::Dense(_)));
        assert_eq!(max_diff(&fused.forward(&x).unwrap(), &want), 0.0);

        // Quantized parts: one block type joins into one matrix, mixed types stay parts;
        // either way the output is each part's own quantized product.
        let q = |w: &Tensor, t| Arc::new(QTensor::quantize(w, t).unwrap());
        for types in [
            [GgmlDType::Q8_0; 3],
            [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4_1],
        ] {
            let qs: Vec<_> = ws.iter().zip(types).map(|(w, t)| q(w, t)).collect();
            let separate: Vec<Tensor> = (qs.iter().zip(&bs))
                .map(|(q, b)| {
                    let w = LinearWeight::Quantized(q.clone());
                    let l = Linear::from_weight(w, Some(b.clone()), DType::F32).unwrap();
                    l.forward(&x).unwrap()
                })
                .collect();
            let want = Tensor::cat(&separate, 1).unwrap();
            let weights = qs.into_iter().map(LinearWeight::Quantized).collect();
            let fused = Linear::from_parts(weights, bias.clone(), DType::F32).unwrap();
            assert!(fused.is_quantized());
            let joined = matches!(fused.weight, Weight::Quantized { .. });
            assert_eq!(joined, types[0] == types[1], "{types:?}");
            assert_eq!(
                max_diff(&fused.forward(&x).unwrap(), &want),
                0.0,
                "{types:?}"
            );
        }
    }

    #[test]
    fn lora_on_a_fused_projection_adds_each_part_its_own_delta() {
        let dev = Device::Cpu;
        let (inp, rank) = (32, 2);
        let ws = three_parts(inp);
        let parts: Vec<Linear> = ws.iter().map(|w| Linear::new(w.clone(), None)).collect();
        let dense = ws.iter().cloned().map(LinearWeight::Dense).collect();
        let mut fused = Linear::from_parts(dense, None, DType::F32).unwrap();
        fused.enable_lora(2).unwrap();
        assert!(fused.set_lora(0, 3, None).is_err());
        // An adapter on parts 0 and 2 in slot 1 (part 1 untargeted), nothing in slot 0.
        let pair = |out: usize| LoraPair {
            a: Tensor::randn(0f32, 1.0, (rank, inp), &dev).unwrap(),
            b: Tensor::randn(0f32, 1.0, (out, rank), &dev).unwrap(),
        };
        let pairs = [Some(pair(8)), None, Some(pair(4))];
        for (p, pair) in pairs.iter().enumerate() {
            fused.set_lora(1, p, pair.as_ref()).unwrap();
        }
        let x = Tensor::randn(0f32, 1.0, (3, inp), &dev).unwrap();
        let batch = LoraBatch::new(&[1, -1, 0], &[0, rank], &dev).unwrap();
        let got = fused.forward_lora(&x, Some(&batch)).unwrap();
        let mut start = 0;
        for (p, (part, pair)) in parts.iter().zip(&pairs).enumerate() {
            let width = part.parts()[0];
            let base = part.forward(&x).unwrap();
            let got_p = got.narrow(1, start, width).unwrap();
            start += width;
            // Tokens 1 (no adapter) and 2 (empty slot 0) get the base output exactly.
            let rest = |t: &Tensor| t.narrow(0, 1, 2).unwrap();
            assert_eq!(max_diff(&rest(&got_p), &rest(&base)), 0.0, "part {p}");
            let want0 = match pair {
                Some(pr) => {
                    let d = x
                        .narrow(0, 0, 1)
                        .unwrap()
                        .matmul(&pr.a.t().unwrap())
                        .unwrap();
                    (base.narrow(0, 0, 1).unwrap() + d.matmul(&pr.b.t().unwrap()).unwrap()).unwrap()
                }
                None => base.narrow(0, 0, 1).unwrap(),
            };
            let got0 = got_p.narrow(0, 0, 1).unwrap();
            assert!(max_diff(&got0, &want0) < 1e-4, "part {p}");
        }
    }
}

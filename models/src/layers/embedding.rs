//! The token embedding: a `[vocab, hidden]` table, dense in the serving dtype or kept in
//! its GGUF block type, in which case only the looked-up rows are dequantized (candle's
//! [`QTensor::embedding`]), so the table costs its quantized size. A tied `lm_head`
//! shares the same storage ([`Embedding::weight`]).

use super::{LinearWeight, WeightLoader};
use crate::Result;
use candle_core::quantized::QTensor;
use candle_core::{DType, Tensor};
use std::sync::Arc;

/// A token embedding table.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: LinearWeight,
    /// Serving dtype of the rows returned.
    dtype: DType,
}

impl Embedding {
    /// Loads `name` `[vocab, hidden]`, quantized if the checkpoint keeps it so.
    pub fn load(ld: &WeightLoader<'_>, name: &str, vocab: usize, hidden: usize) -> Result<Self> {
        Ok(Self {
            weight: ld.linear_weight(name, &[vocab, hidden])?,
            dtype: ld.dtype(),
        })
    }

    /// A dense table (`[vocab, hidden]`, in the serving dtype).
    pub fn new(weight: Tensor) -> Self {
        Self {
            dtype: weight.dtype(),
            weight: LinearWeight::Dense(weight),
        }
    }

    /// A quantized table whose rows come back in `dtype`.
    pub fn quantized(weight: Arc<QTensor>, dtype: DType) -> Self {
        Self {
            weight: LinearWeight::Quantized(weight),
            dtype,
        }
    }

    /// The table's storage (for a tied `lm_head`).
    pub fn weight(&self) -> &LinearWeight {
        &self.weight
    }

    /// Rows `ids` (`[n]` u32) of the table: `[n, hidden]` in the serving dtype.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match &self.weight {
            LinearWeight::Dense(w) => w.index_select(ids, 0)?,
            LinearWeight::Quantized(q) => q.embedding(ids)?.to_dtype(self.dtype)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::Device;

    #[test]
    fn quantized_rows_equal_the_dequantized_table_rows() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (10, 64), &dev).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q4_1).unwrap());
        let dense = Embedding::new(q.dequantize(&dev).unwrap());
        let quant = Embedding::quantized(q, DType::F32);
        let ids = Tensor::new(&[3u32, 0, 9, 3], &dev).unwrap();
        let a = dense.forward(&ids).unwrap().to_vec2::<f32>().unwrap();
        let b = quant.forward(&ids).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(a, b);
        let bad = Tensor::new(&[10u32], &dev).unwrap();
        assert!(quant.forward(&bad).is_err());
    }
}

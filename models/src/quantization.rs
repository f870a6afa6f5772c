//! How weights are stored in memory (`--quantization`, vLLM's flag name) and what they
//! cost ([`WeightBytes`]).
//!
//! - `auto` (the default): a GGUF checkpoint's projections and token embedding stay in
//!   their GGUF block types (Q4_0 ... Q6_K) and multiply with candle's quantized matmul;
//!   every other checkpoint is loaded as with `none`.
//! - `none`: every tensor is dequantized to the serving dtype at load (the path the golden
//!   tests pin).
//! - `gguf`: like `auto`, but a checkpoint that is not GGUF is an error.
//!
//! Tensors a GGUF file stores as F32, F16 or BF16 (norms, sometimes small projections) are
//! always converted to the serving dtype: they have no quantized kernel to use.

use crate::{ModelError, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The `--quantization` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// Keep GGUF weights quantized; dense for other checkpoints.
    #[default]
    Auto,
    /// Dequantize everything to the serving dtype.
    None,
    /// Keep GGUF weights quantized; an error for other checkpoints.
    Gguf,
}

impl Quantization {
    /// Whether a GGUF checkpoint's block-quantized tensors stay quantized.
    pub fn keeps_gguf_quantized(self) -> bool {
        matches!(self, Self::Auto | Self::Gguf)
    }
}

impl FromStr for Quantization {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "gguf" => Ok(Self::Gguf),
            other => Err(ModelError::invalid(
                "quantization",
                format!("{other:?}; expected auto, none or gguf"),
            )),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::None => "none",
            Self::Gguf => "gguf",
        })
    }
}

/// Bytes of a model's weights by storage type (`"q4_1"`, `"f32"`, ...), each tensor
/// counted once (a tied `lm_head` shares the embedding's storage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightBytes(BTreeMap<String, usize>);

impl WeightBytes {
    /// Adds `bytes` of storage type `ty`.
    pub fn add(&mut self, ty: &str, bytes: usize) {
        *self.0.entry(ty.to_ascii_lowercase()).or_default() += bytes;
    }

    /// Total bytes over all types.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }

    /// Bytes per type, by type name.
    pub fn by_type(&self) -> &BTreeMap<String, usize> {
        &self.0
    }
}

impl fmt::Display for WeightBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (ty, n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{ty}: {n}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_choice() {
        for q in [Quantization::Auto, Quantization::None, Quantization::Gguf] {
            assert_eq!(q.to_string().parse::<Quantization>().unwrap(), q);
        }
        assert_eq!("GGUF".parse::<Quantization>().unwrap(), Quantization::Gguf);
        assert!("awq".parse::<Quantization>().is_err());
        assert_eq!(Quantization::default(), Quantization::Auto);
    }

    #[test]
    fn weight_bytes_sum_by_type() {
        let mut w = WeightBytes::default();
        w.add("Q4_1", 10);
        w.add("f32", 4);
        w.add("q4_1", 6);
        assert_eq!(w.total(), 20);
        assert_eq!(w.to_string(), "{f32: 4, q4_1: 16}");
    }
}

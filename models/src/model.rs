//! [`Model`]: the one interface the engine (and everything outside this crate) talks to.
//!
//! It is an enum over architecture families rather than a trait object. Why:
//! - no `dyn` and no boxing on the hot path; a `match` per step is free next to a forward
//!   pass, and every family keeps its concrete type (and its own extra methods) inside
//!   this crate;
//! - `match` is exhaustive: adding a variant makes the compiler list every place that
//!   must learn about it, and those places are all in this file and the loader;
//! - the set of families is closed and owned here (the engine never implements a model),
//!   which is exactly what an enum expresses; a trait would invite implementations
//!   elsewhere that the loader could never construct.
//!
//! Adding a family: a family file beside `llama.rs` built from [`crate::layers`], a
//! variant here with its arm in each method, and its case in [`Model::load`] (the
//! dispatch from [`Architecture`]). wick-engine does not change.

use crate::config::{Architecture, ModelConfig};
use crate::input::ModelInput;
use crate::kv_cache::KvCache;
use crate::llama::LlamaModel;
use crate::lora::LoraAdapter;
use crate::quantization::WeightBytes;
use crate::weights::Weights;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// A loaded model of any supported architecture family.
#[derive(Debug, Clone)]
pub enum Model {
    /// The Llama family: Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3.
    Llama(LlamaModel),
}

impl Model {
    /// Builds the model `cfg.architecture` names from `weights`, converting every tensor
    /// to `dtype` on `device`.
    pub fn load(
        cfg: &ModelConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        match cfg.architecture {
            Architecture::Llama
            | Architecture::Mistral
            | Architecture::Qwen2
            | Architecture::Qwen3 => {
                Ok(Self::Llama(LlamaModel::load(cfg, weights, dtype, device)?))
            }
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Self::Llama(m) => m.config(),
        }
    }

    /// Dtype of weights, activations and the KV cache.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Llama(m) => m.dtype(),
        }
    }

    /// Device the model lives on.
    pub fn device(&self) -> &Device {
        match self {
            Self::Llama(m) => m.device(),
        }
    }

    /// Bytes of the weights as loaded, by storage type (`q4_1`, `f32`, ...).
    pub fn weight_bytes(&self) -> &WeightBytes {
        match self {
            Self::Llama(m) => m.weight_bytes(),
        }
    }

    /// Gives the model `num_slots` LoRA adapter slots (all empty); see
    /// [`crate::layers::LoraSlots`].
    pub fn enable_lora(&mut self, num_slots: usize) -> Result<()> {
        match self {
            Self::Llama(m) => m.enable_lora(num_slots),
        }
    }

    /// Puts `adapter` in LoRA `slot`, or empties it (`None`). Tokens whose sequence
    /// names the slot ([`crate::SequenceChunk::lora_slot`]) get its delta.
    pub fn set_lora(&mut self, slot: usize, adapter: Option<&LoraAdapter>) -> Result<()> {
        match self {
            Self::Llama(m) => m.set_lora(slot, adapter),
        }
    }

    /// Checks `input` against the model and `cache` as [`Self::forward`] does before it runs
    /// anything (context length, cache slots, block tables): for a caller that replays a
    /// captured step instead of calling `forward`.
    pub fn check_input(&self, input: &ModelInput, cache: &KvCache) -> Result<()> {
        match self {
            Self::Llama(m) => m.check_input(input, cache),
        }
    }

    /// Runs one step over `input` (a flattened ragged batch of prefill chunks and decode
    /// tokens), writing its K/V into `cache`; returns f32 logits `[num_sampled, vocab]`:
    /// one row per sequence with [`crate::SequenceChunk::sample`], in batch order, for
    /// its last scheduled token. Sequences mid-prompt never reach `lm_head`.
    pub fn forward(&self, input: &ModelInput, cache: &mut KvCache) -> Result<Tensor> {
        match self {
            Self::Llama(m) => m.forward(input, cache),
        }
    }
}

//! wick-models: model loading (HF directory, hub id, GGUF) and the forward pass over a
//! paged KV cache, behind one interface, [`Model`]. Knows nothing of requests or HTTP.
//!
//! Where things are:
//! - [`source`]: `--model` string -> local files (directory, GGUF, hub cache/download);
//! - [`loader`]: files -> [`LoadedModel`] (a [`Model`], tokenizer, chat template,
//!   specials);
//! - [`config`]: one [`ModelConfig`] from config.json or GGUF metadata, its rope scaling
//!   from [`rope_scaling`]; [`generation_config`]: a checkpoint's sampling defaults;
//! - [`weights`]: named tensors with shape checks, GGUF dequantization (or not:
//!   [`quantization`] says which, and counts the bytes);
//! - [`model`]: [`Model`], the enum over architecture families the engine uses;
//! - [`llama`]: the Llama family (Llama, Mistral, Qwen2, Qwen3) as switches on the config;
//! - [`layers`]: what families are built from (wick's own `Linear`, attention over the
//!   paged cache, MLP, rotary, RMSNorm);
//! - [`lora`]: PEFT LoRA adapters read and checked against the base model;
//! - [`kv_cache`]: the paged K/V storage; [`input`]: one step's flattened batch.

pub mod config;
pub mod device;
pub mod error;
pub mod generation_config;
mod gguf_metadata;
pub mod input;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod loader;
pub mod lora;
pub mod model;
pub mod quantization;
pub mod rope_scaling;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use input::{GraphShape, InputBuffer, ModelInput, SequenceChunk, GRAPH_BATCH_SIZES};
pub use kv_cache::{KvCache, DEFAULT_BLOCK_SIZE};
pub use loader::{load, LoadOptions, LoadedModel, SpecialTokens};
pub use lora::{LoraAdapter, LoraModule};
pub use model::Model;
pub use quantization::{Quantization, WeightBytes};

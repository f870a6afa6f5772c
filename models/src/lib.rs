//! wick-models: model loading (HF directory, hub id, GGUF) and the Llama-family forward
//! pass over a paged KV cache. Knows nothing of requests or HTTP.
//!
//! Where things are:
//! - [`source`]: `--model` string -> local files (directory, GGUF, hub cache/download);
//! - [`loader`]: files -> [`LoadedModel`] (weights, tokenizer, chat template, specials);
//! - [`config`]: one [`ModelConfig`] from config.json or GGUF metadata;
//! - [`weights`]: named tensors with shape checks, GGUF dequantization;
//! - [`llama`]: the forward pass (add an architecture here, as switches on the config);
//! - [`kv_cache`]: the paged K/V storage; [`input`]: one step's flattened batch.

pub mod config;
pub mod device;
pub mod error;
mod gguf_metadata;
pub mod greedy;
pub mod input;
pub mod kv_cache;
pub mod llama;
pub mod loader;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use input::{ModelInput, SequenceChunk};
pub use kv_cache::{KvCache, DEFAULT_BLOCK_SIZE};
pub use llama::LlamaModel;
pub use loader::{load, LoadOptions, LoadedModel, SpecialTokens};

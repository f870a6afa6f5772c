//! Tokenizers: loaded from tokenizer.json, or rebuilt from GGUF metadata.

pub mod gguf;

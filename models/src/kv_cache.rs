//! The paged KV cache's memory: per layer one tensor of shape
//! `[2, num_blocks, block_size, num_kv_heads, head_dim]`, keys then values (FlashAttention's
//! paged "NHD" layout, so a CUDA kernel reads a block's keys for all heads contiguously; one
//! allocation per layer, as vLLM's FlashAttention backend keeps it, so one op writes a
//! step's keys and values). Which
//! sequence owns which block is the engine's business (its block pool); this type only
//! holds the storage and knows its size.

use crate::config::ModelConfig;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};

/// Default tokens per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// K/V storage for every layer.
#[derive(Debug)]
pub struct KvCache {
    /// Per layer: `[2, num_blocks, block_size, num_kv_heads, head_dim]`, keys then values.
    pub layers: Vec<Tensor>,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks per layer.
    pub num_blocks: usize,
}

impl KvCache {
    /// Bytes one block takes across all layers, K and V.
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: DType) -> usize {
        cfg.kv_bytes_per_token(dtype.size_in_bytes()) * block_size
    }

    /// Allocates as many blocks as fit in `memory_bytes`.
    pub fn with_memory(
        cfg: &ModelConfig,
        block_size: usize,
        memory_bytes: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let per_block = Self::bytes_per_block(cfg, block_size, dtype) as u64;
        let num_blocks = (memory_bytes / per_block.max(1)) as usize;
        if num_blocks == 0 {
            return Err(ModelError::invalid(
                "KV cache memory",
                format!("{memory_bytes} bytes hold no block; one block needs {per_block} bytes"),
            ));
        }
        Self::new(cfg, block_size, num_blocks, dtype, device)
    }

    /// Allocates `num_blocks` zeroed blocks per layer.
    pub fn new(
        cfg: &ModelConfig,
        block_size: usize,
        num_blocks: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if block_size == 0 || num_blocks == 0 {
            return Err(ModelError::invalid(
                "KV cache",
                "block_size and num_blocks must be positive",
            ));
        }
        let shape = (2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim);
        let layers = (0..cfg.num_layers)
            .map(|_| Ok(Tensor::zeros(shape, dtype, device)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            block_size,
            num_blocks,
        })
    }
}

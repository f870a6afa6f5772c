//! wick-kernels: wick's own tensor ops, each a candle op with a CPU reference
//! implementation that the CUDA kernels (kernels/*.cu, under the `cuda` feature) are
//! checked against.
//!
//! The ops work over the paged KV cache. Per layer there is one key and one value tensor,
//! both `[num_blocks, block_size, num_kv_heads, head_dim]`, contiguous (FlashAttention's
//! paged "NHD" layout). The token at `offset` of block `block_id` lives in slot
//! `block_id * block_size + offset`; a slot's keys for all heads are one contiguous row of
//! `num_kv_heads * head_dim` elements.
//!
//! - [`reshape_and_cache`] writes a step's new keys and values into their slots.
//! - [`paged_attention`] runs causal attention of a ragged batch of queries (prefill,
//!   chunked prefill and decode mixed) over the keys and values in the cache.
//!
//! Beside the cache ops, [`lora_apply`] adds many LoRA adapters' deltas to one batch's
//! projection outputs (tokens grouped by adapter slot, described once per step by a
//! [`LoraBatch`]).
//!
//! [`sample`] turns a step's logits rows into tokens where the logits are (every OpenAI
//! sampling parameter, Philox draws keyed by seed, index and position, logprobs), so that
//! only token ids and the logprobs asked for cross to the host; a [`SamplingBatch`]
//! describes the rows.
//!
//! The small ops between a layer's projections are fused, one pass each:
//! [`add_rms_norm`] (residual add and RMSNorm), [`silu_mul`] (the gated MLP's activation)
//! and [`qkv_rotary`] (q/k norm, rotary embedding and the q | k | v split).
//!
//! [`StepGraph`] captures a step's device work once and replays it (CUDA graphs; on the
//! CPU its twin reruns the step into the same output memory).
//!
//! [`QuantMatrix`] multiplies f32 activations by a GGUF block-quantized weight on the CPU
//! for the block types whose candle CPU path is scalar (Q4_1), with AVX2 where present.
//!
//! All take f32, f16 or bf16 storage and compute in f32. Bad input (shapes, dtypes, slots
//! or block ids out of range) is a candle error, never a panic or an out-of-bounds access.
//!
//! With the `cuda` feature, all also run on candle's CUDA devices: kernels/*.cu, compiled
//! by build.rs to fatbins (sm_90 machine code and PTX) and launched from `cuda`. The CPU
//! implementation is the reference the CUDA kernels are tested against (tests/ops runs
//! every test on each device present).

mod attention_cpu;
mod cache;
mod cpu_util;
#[cfg(feature = "cuda")]
mod cuda;
mod device_memory;
mod fused;
mod graph;
mod lora;
mod lora_cpu;
mod paged_attention;
pub mod philox;
mod quant;
mod quant_avx2;
mod sampling;
mod sampling_cpu;
mod simd;
mod upload;
mod work_list;

pub use cache::{reshape_and_cache, SlotMapping};
pub use device_memory::{device_memory, peak_allocation, prepare_device, DeviceMemory};
pub use fused::{add_rms_norm, qkv_rotary, silu_mul, QkNorm, QkvHeads, RotatedQkv};
pub use graph::StepGraph;
pub use lora::{lora_apply, LoraBatch};
pub use paged_attention::{paged_attention, PagedAttentionMetadata, WorkLists};
pub use quant::QuantMatrix;
pub use sampling::{sample, RowEdits, RowParams, SampledToken, SamplingBatch, MAX_TOP_LOGPROBS};
pub use upload::write_u32;

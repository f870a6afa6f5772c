//! The CUDA side of wick-kernels (feature `cuda`): the PTX that build.rs compiled from
//! kernels/*.cu, embedded in the library, and its launch through candle's `CudaDevice`
//! (cudarc). Each op's `cuda_fwd` lands here; the op's public function has already checked
//! shapes, dtypes and devices exactly as for the CPU.
//!
//! Metadata values (slots, block tables, sequence lengths) are checked on the host, as on
//! the CPU, from the host copies that [`crate::SlotMapping`] and
//! [`crate::PagedAttentionMetadata`] keep beside their device tensors: a step reads nothing
//! back from the GPU except the sampled tokens (and requested logprobs) of the sampling op.
//! The LoRA op's [`crate::LoraBatch`] is likewise checked on the host and uploaded once per
//! step.

pub(crate) mod attention;
pub(crate) mod cache;
pub(crate) mod fused;
pub(crate) mod lora;
pub(crate) mod memory;
pub(crate) mod sampling;

use candle_core::cuda_backend::cudarc::driver::CudaView;
use candle_core::cuda_backend::CudaDType;
use candle_core::{bail, CudaStorage, Layout, Result};

/// kernels/reshape_and_cache.cu as PTX.
pub(crate) const RESHAPE_AND_CACHE_PTX: &str =
    include_str!(concat!(env!("OUT_DIR"), "/reshape_and_cache.ptx"));

/// kernels/lora.cu as PTX.
pub(crate) const LORA_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/lora.ptx"));

/// kernels/sampling.cu as PTX.
pub(crate) const SAMPLING_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/sampling.ptx"));

/// kernels/fused.cu as PTX.
pub(crate) const FUSED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));

/// kernels/paged_attention.cu as PTX.
pub(crate) const PAGED_ATTENTION_PTX: &str =
    include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));

/// The elements of a contiguous GPU tensor given as storage and layout.
pub(crate) fn view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    let slice = storage.as_cuda_slice::<T>()?;
    if end > slice.len() {
        bail!(
            "{what}: layout {start}..{end} outside its storage of {}",
            slice.len()
        );
    }
    Ok(slice.slice(start..end))
}

/// Whether a tensor's first element is 16-byte aligned in its (256-byte aligned) buffer.
pub(crate) fn aligned16(layout: &Layout, elem_size: usize) -> bool {
    (layout.start_offset() * elem_size).is_multiple_of(16)
}

/// A size as the u32 the kernels take, or an error naming it.
pub(crate) fn as_u32(n: usize, what: &str) -> Result<u32> {
    match u32::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => bail!("{what} = {n} is too large for the CUDA kernels"),
    }
}

//! The CUDA path of [`crate::reshape_and_cache`]: the copy kernel of
//! kernels/reshape_and_cache.cu, one launch for keys and values. The slots were checked on
//! the host from the [`crate::SlotMapping`]'s host copy; nothing is read back.

use super::{as_u32, view};
use crate::cache::WriteCache;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};

/// Threads per token (each copies 16 bytes at a time).
const THREADS: u32 = 128;

/// Writes row t of both halves of `rows` to slot `slots[t]` of the cache's halves on the
/// GPU. Slots were checked.
pub(crate) fn write(
    op: &WriteCache,
    cache: &mut CudaStorage,
    cache_l: &Layout,
    rows: (&CudaStorage, &Layout),
    slots: (&CudaStorage, &Layout),
) -> Result<()> {
    use candle_core::backend::BackendStorage;
    match rows.0.dtype() {
        candle_core::DType::F32 => copy::<f32>("b32", op, cache, cache_l, rows, slots),
        candle_core::DType::F16 => copy::<half::f16>("b16", op, cache, cache_l, rows, slots),
        candle_core::DType::BF16 => copy::<half::bf16>("b16", op, cache, cache_l, rows, slots),
        other => bail!("reshape_and_cache: kv must be f32, f16 or bf16, got {other:?}"),
    }
}

fn copy<T: CudaDType>(
    width: &str,
    op: &WriteCache,
    cache: &mut CudaStorage,
    cache_l: &Layout,
    rows: (&CudaStorage, &Layout),
    slots: (&CudaStorage, &Layout),
) -> Result<()> {
    let (num_slots, num_tokens, row_len) = (op.num_slots, op.num_tokens, op.row_len);
    let Some((start, end)) = cache_l.contiguous_offsets() else {
        bail!("reshape_and_cache: the cache must be contiguous");
    };
    if num_tokens == 0 {
        return Ok(());
    }
    if end - start != 2 * num_slots * row_len
        || rows.1.shape().elem_count() != 2 * num_tokens * row_len
        || slots.1.shape().elem_count() != num_tokens
    {
        bail!("reshape_and_cache: storage sizes disagree with the shapes checked");
    }
    let dev = cache.device.clone();
    let func = super::kernel(
        &dev,
        &super::RESHAPE_AND_CACHE,
        &format!("wick_reshape_and_cache_{width}"),
    )?;
    let src = view::<T>(rows.0, rows.1, "kv")?;
    let slot_view = view::<u32>(slots.0, slots.1, "slot_mapping")?;
    let cache_slice = cache.as_cuda_slice_mut::<T>()?;
    if end > cache_slice.len() {
        bail!("reshape_and_cache: cache layout outside its storage");
    }
    let mut dst = cache_slice.slice_mut(start..end);
    let (n, len, slots_total) = (
        as_u32(num_tokens, "num_tokens")?,
        as_u32(row_len, "kv_heads * head_dim")?,
        num_slots as u64,
    );
    let cfg = LaunchConfig {
        grid_dim: (n, 2, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&mut dst);
    builder.arg(&src);
    builder.arg(&slot_view);
    builder.arg(&n);
    builder.arg(&len);
    builder.arg(&slots_total);
    // SAFETY: the arguments match `wick_reshape_and_cache_{b16,b32}` (T is 2 or 4 bytes
    // wide as the name says); `dst` holds 2 * num_slots * row_len elements, `src`
    // 2 * num_tokens * row_len, `slot_view` num_tokens; the kernel skips slots outside
    // 0..num_slots.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

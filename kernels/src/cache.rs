//! Writing a step's new keys and values into the paged KV cache ([`reshape_and_cache`]).
//!
//! Owns the cache-write op. Invariants it enforces before writing anything:
//! - `key`/`value` are `[num_tokens, num_kv_heads, head_dim]` with the caches' dtype, heads
//!   and head_dim; the caches are `[num_blocks, block_size, num_kv_heads, head_dim]`,
//!   contiguous, of the same shape.
//! - every slot is `-1` (skip: a padding token) or in `0..num_blocks * block_size`, and no
//!   slot appears twice (two tokens cannot own one cache row).
//!
//! An invalid slot fails the call with nothing written, so a cache is never half-updated by
//! a rejected step (on CUDA the slots are checked on the host first, see `cuda`). Because a
//! slot's row holds all heads contiguously, one token is one `copy_from_slice` of
//! `num_kv_heads * head_dim` elements.

use crate::cpu_util::{contiguous_slice, is_float, Elem};
use candle_core::{bail, CpuStorage, DType, InplaceOp3, Layout, Result, Tensor};

/// Writes the step's new keys/values into the paged cache: row t of `key`/`value` goes to
/// slot `slot_mapping[t]`; a slot of -1 means "skip this token" (padding).
///
/// - `key`, `value`: `[num_tokens, num_kv_heads, head_dim]`, the caches' dtype (f32, f16 or
///   bf16); made contiguous here if they are not.
/// - `key_cache`, `value_cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`,
///   contiguous; updated in place.
/// - `slot_mapping`: i64 `[num_tokens]`, slot = `block_id * block_size + offset_in_block`.
///
/// Errors (with neither cache modified) on mismatched shapes, dtypes or devices, a
/// non-contiguous cache, a slot below -1 or past the cache, or a slot used twice.
pub fn reshape_and_cache(
    key: &Tensor,
    value: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    slot_mapping: &Tensor,
) -> Result<()> {
    let cache_dims = check_cache(key_cache, value_cache)?;
    let (_, _, kv_heads, head_dim) = cache_dims;
    let num_tokens = check_rows("key", key, key_cache, kv_heads, head_dim)?;
    if check_rows("value", value, value_cache, kv_heads, head_dim)? != num_tokens {
        bail!(
            "reshape_and_cache: key has {num_tokens} tokens but value has {}",
            value.dim(0)?
        );
    }
    if slot_mapping.dtype() != DType::I64 {
        bail!(
            "reshape_and_cache: slot_mapping must be i64, got {:?}",
            slot_mapping.dtype()
        );
    }
    if slot_mapping.dims() != [num_tokens] {
        bail!(
            "reshape_and_cache: slot_mapping must be [{num_tokens}] (one slot per token), got {:?}",
            slot_mapping.dims()
        );
    }
    if !slot_mapping.device().same_device(key_cache.device()) {
        bail!("reshape_and_cache: slot_mapping is on another device than the cache");
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let (key, value, slots) = (
        key.contiguous()?,
        value.contiguous()?,
        slot_mapping.contiguous()?,
    );
    let op = WriteCache {
        num_slots: cache_dims.0 * cache_dims.1,
        row_len: kv_heads * head_dim,
    };
    #[cfg(feature = "cuda")]
    if slots.device().is_cuda() {
        crate::cuda::cache::check_slots_once(&slots, op.num_slots)?;
    }
    key_cache.inplace_op3(&key, &slots, &op)?;
    value_cache.inplace_op3(&value, &slots, &op)
}

/// Checks the two caches against each other; returns their dims.
fn check_cache(key_cache: &Tensor, value_cache: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = key_cache.dims4().map_err(|_| {
        candle_core::Error::msg(format!(
            "reshape_and_cache: key_cache must be [blocks, block_size, kv_heads, head_dim]: {:?}",
            key_cache.dims()
        ))
    })?;
    if value_cache.dims() != key_cache.dims() {
        bail!(
            "reshape_and_cache: value_cache {:?} differs from key_cache {:?}",
            value_cache.dims(),
            key_cache.dims()
        );
    }
    if value_cache.dtype() != key_cache.dtype() || !is_float(key_cache.dtype()) {
        bail!(
            "reshape_and_cache: caches must share one dtype of f32, f16, bf16; got {:?} and {:?}",
            key_cache.dtype(),
            value_cache.dtype()
        );
    }
    if !key_cache.is_contiguous() || !value_cache.is_contiguous() {
        bail!("reshape_and_cache: the caches must be contiguous");
    }
    if !key_cache.device().same_device(value_cache.device()) {
        bail!("reshape_and_cache: key_cache and value_cache are on different devices");
    }
    Ok(dims)
}

/// Checks `key` or `value` against its cache; returns its number of tokens.
fn check_rows(
    what: &str,
    rows: &Tensor,
    cache: &Tensor,
    kv_heads: usize,
    head_dim: usize,
) -> Result<usize> {
    let dims = rows.dims();
    if dims.len() != 3 || dims[1] != kv_heads || dims[2] != head_dim {
        bail!("reshape_and_cache: {what} must be [tokens, {kv_heads}, {head_dim}], got {dims:?}");
    }
    if rows.dtype() != cache.dtype() {
        bail!(
            "reshape_and_cache: {what} is {:?} but the cache is {:?}",
            rows.dtype(),
            cache.dtype()
        );
    }
    if !rows.device().same_device(cache.device()) {
        bail!("reshape_and_cache: {what} is on another device than the cache");
    }
    Ok(dims[0])
}

/// The in-place op: dst = one cache, srcs = (its rows, slot_mapping). Dims are checked by
/// [`reshape_and_cache`]; slot values here.
struct WriteCache {
    /// `num_blocks * block_size`.
    num_slots: usize,
    /// `num_kv_heads * head_dim`: elements of one token's row.
    row_len: usize,
}

/// Checks every slot against a cache of `num_slots` slots, before anything is written: each
/// is -1 or in range, and no slot appears twice.
pub(crate) fn check_slots(slots: &[i64], num_slots: usize) -> Result<()> {
    let mut seen = Vec::with_capacity(slots.len());
    for (t, &slot) in slots.iter().enumerate() {
        if slot == -1 {
            continue;
        }
        if slot < 0 || slot as u64 >= num_slots as u64 {
            bail!(
                "reshape_and_cache: token {t} has slot {slot}, outside the cache's {num_slots} slots"
            );
        }
        seen.push(slot);
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        bail!("reshape_and_cache: slot {} is written by two tokens", w[0]);
    }
    Ok(())
}

impl WriteCache {
    fn write<T: Elem>(&self, cache: &mut [T], rows: &[T], slots: &[i64]) -> Result<()> {
        check_slots(slots, self.num_slots)?;
        let n = self.row_len;
        if cache.len() != self.num_slots * n || rows.len() != slots.len() * n {
            bail!("reshape_and_cache: storage sizes disagree with the shapes checked");
        }
        for (row, &slot) in rows.chunks_exact(n).zip(slots) {
            if slot >= 0 {
                let at = slot as usize * n;
                cache[at..at + n].copy_from_slice(row);
            }
        }
        Ok(())
    }
}

impl InplaceOp3 for WriteCache {
    fn name(&self) -> &'static str {
        "wick_reshape_and_cache"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cache_l: &Layout,
        rows: &CpuStorage,
        rows_l: &Layout,
        slots: &CpuStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        let Some((start, end)) = cache_l.contiguous_offsets() else {
            bail!("reshape_and_cache: the cache must be contiguous");
        };
        let slots = contiguous_slice::<i64>(slots, slots_l, "slot_mapping")?;
        macro_rules! go {
            ($variant:ident, $t:ty) => {{
                let rows = contiguous_slice::<$t>(rows, rows_l, "key/value")?;
                let CpuStorage::$variant(cache) = cache else {
                    bail!("reshape_and_cache: cache and key/value dtypes differ");
                };
                let Some(cache) = cache.get_mut(start..end) else {
                    bail!("reshape_and_cache: cache layout outside its storage");
                };
                self.write::<$t>(cache, rows, slots)
            }};
        }
        match rows {
            CpuStorage::F32(_) => go!(F32, f32),
            CpuStorage::F16(_) => go!(F16, half::f16),
            CpuStorage::BF16(_) => go!(BF16, half::bf16),
            _ => bail!("reshape_and_cache: key/value must be f32, f16 or bf16"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cache_l: &Layout,
        rows: &candle_core::CudaStorage,
        rows_l: &Layout,
        slots: &candle_core::CudaStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        crate::cuda::cache::write(
            cache,
            cache_l,
            (rows, rows_l),
            (slots, slots_l),
            self.num_slots,
            self.row_len,
        )
    }
}

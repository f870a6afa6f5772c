//! Writing a step's new keys and values into the paged KV cache ([`reshape_and_cache`]).
//!
//! Owns the cache-write op. Invariants it enforces before writing anything:
//! - `kv` is `[2, num_tokens, num_kv_heads, head_dim]` (keys, then values) with the cache's
//!   dtype, heads and head_dim; the cache is `[2, num_blocks, block_size, num_kv_heads,
//!   head_dim]` (keys, then values: one allocation per layer, as vLLM's FlashAttention
//!   backend keeps it), contiguous, so both halves are written by one op.
//! - every slot is `-1` (skip: a padding token) or in `0..num_blocks * block_size`, and no
//!   slot appears twice (two tokens cannot own one cache row).
//!
//! An invalid slot fails the call with nothing written, so a cache is never half-updated by
//! a rejected step. Slots are checked on the host, from the [`SlotMapping`]'s host copy
//! (once per cache size: every layer of a step passes the same mapping), so a GPU step
//! reads nothing back. Because a slot's row holds all heads contiguously, one token is
//! one `copy_from_slice` of `num_kv_heads * head_dim` elements.

use crate::cpu_util::{contiguous_slice, is_float, Elem};
use candle_core::{bail, CpuStorage, DType, Device, InplaceOp3, Layout, Result, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The cache slot of each token of a step, built once on the host and shared by every
/// layer: the host copy (checked there) and the u32 `[num_tokens]` tensor the kernels read
/// on the model's device. Slot = `block_id * block_size + offset_in_block`; -1 on the host
/// (`u32::MAX` on the device) skips the token (padding).
#[derive(Debug, Clone)]
pub struct SlotMapping {
    host: Arc<[i64]>,
    tensor: Tensor,
    /// The cache size (in slots) the slots were last found valid for; 0: none yet.
    checked_for: Arc<AtomicUsize>,
}

impl SlotMapping {
    /// `slots` on the host and uploaded to `device` (one copy).
    pub fn new(slots: Vec<i64>, device: &Device) -> Result<Self> {
        let n = slots.len();
        let device_slots = Self::device_slots(&slots)?;
        Self::from_parts(slots, Tensor::from_vec(device_slots, n, device)?)
    }

    /// `slots` on the host beside `tensor`, the u32 `[num_tokens]` tensor already holding
    /// [`SlotMapping::device_slots`] of them on the model's device (e.g. a view into a step's
    /// one upload).
    pub fn from_parts(slots: Vec<i64>, tensor: Tensor) -> Result<Self> {
        if tensor.dims() != [slots.len()] || tensor.dtype() != DType::U32 {
            bail!(
                "slot_mapping: the device slots must be u32 [{}], got {:?} {:?}",
                slots.len(),
                tensor.dtype(),
                tensor.dims()
            );
        }
        Ok(Self {
            tensor,
            host: slots.into(),
            checked_for: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The device form of `slots`: u32, -1 as `u32::MAX`; an error for a slot below -1 or
    /// past u32 (no cache has 2^32 slots).
    pub fn device_slots(slots: &[i64]) -> Result<Vec<u32>> {
        slots
            .iter()
            .map(|&s| match s {
                -1 => Ok(u32::MAX),
                s if (0..i64::from(u32::MAX)).contains(&s) => Ok(s as u32),
                s => bail!("slot_mapping: slot {s} is neither -1 nor a u32 slot"),
            })
            .collect()
    }

    /// The slots, on the host.
    pub fn slots(&self) -> &[i64] {
        &self.host
    }

    /// The slots on the model's device (u32 `[num_tokens]`, `u32::MAX` for -1).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// Checks the slots as [`reshape_and_cache`] does against a cache of `num_slots` slots
    /// (unless already done): for a caller that launches the write without the op (a CUDA
    /// graph's replay).
    pub fn check(&self, num_slots: usize) -> Result<()> {
        if self.checked_for.load(Ordering::Relaxed) == num_slots && num_slots > 0 {
            return Ok(());
        }
        check_slots(&self.host, num_slots)?;
        self.checked_for.store(num_slots, Ordering::Relaxed);
        Ok(())
    }
}

/// Writes the step's new keys and values into the paged cache, in one pass (one launch on
/// a GPU): row t of `kv[0]` (keys) and `kv[1]` (values) goes to slot
/// `slot_mapping.slots()[t]` of `kv_cache[0]` and `kv_cache[1]`; a slot of -1 means "skip
/// this token" (padding).
///
/// - `kv`: `[2, num_tokens, num_kv_heads, head_dim]`, the cache's dtype (f32, f16 or bf16);
///   made contiguous here if it is not.
/// - `kv_cache`: `[2, num_blocks, block_size, num_kv_heads, head_dim]` (keys, then values),
///   contiguous; updated in place.
///
/// Errors (with the cache unmodified) on mismatched shapes, dtypes or devices, a
/// non-contiguous cache, a slot below -1 or past the cache, or a slot used twice.
pub fn reshape_and_cache(kv: &Tensor, kv_cache: &Tensor, slot_mapping: &SlotMapping) -> Result<()> {
    let (_, num_blocks, block_size, kv_heads, head_dim) = check_cache(kv_cache)?;
    let num_tokens = check_rows(kv, kv_cache, kv_heads, head_dim)?;
    if slot_mapping.slots().len() != num_tokens {
        bail!(
            "reshape_and_cache: slot_mapping must have {num_tokens} slots (one per token), got {}",
            slot_mapping.slots().len()
        );
    }
    if !slot_mapping
        .tensor()
        .device()
        .same_device(kv_cache.device())
    {
        bail!("reshape_and_cache: slot_mapping is on another device than the cache");
    }
    if num_tokens == 0 {
        return Ok(());
    }
    let num_slots = num_blocks * block_size;
    slot_mapping.check(num_slots)?;
    let op = WriteCache {
        num_slots,
        num_tokens,
        row_len: kv_heads * head_dim,
    };
    kv_cache.inplace_op3(&kv.contiguous()?, slot_mapping.tensor(), &op)
}

/// Checks the cache's shape, dtype and layout; returns its dims.
fn check_cache(kv_cache: &Tensor) -> Result<(usize, usize, usize, usize, usize)> {
    let dims = match kv_cache.dims5() {
        Ok(d) if d.0 == 2 => d,
        _ => bail!(
            "reshape_and_cache: kv_cache must be [2, blocks, block_size, kv_heads, head_dim], got {:?}",
            kv_cache.dims()
        ),
    };
    if !is_float(kv_cache.dtype()) {
        bail!(
            "reshape_and_cache: the cache must be f32, f16 or bf16, got {:?}",
            kv_cache.dtype()
        );
    }
    if !kv_cache.is_contiguous() {
        bail!("reshape_and_cache: the cache must be contiguous");
    }
    Ok(dims)
}

/// Checks `kv` against the cache; returns its number of tokens.
fn check_rows(kv: &Tensor, cache: &Tensor, kv_heads: usize, head_dim: usize) -> Result<usize> {
    let dims = kv.dims();
    if dims.len() != 4 || dims[0] != 2 || dims[2] != kv_heads || dims[3] != head_dim {
        bail!("reshape_and_cache: kv must be [2, tokens, {kv_heads}, {head_dim}], got {dims:?}");
    }
    if kv.dtype() != cache.dtype() {
        bail!(
            "reshape_and_cache: kv is {:?} but the cache is {:?}",
            kv.dtype(),
            cache.dtype()
        );
    }
    if !kv.device().same_device(cache.device()) {
        bail!("reshape_and_cache: kv is on another device than the cache");
    }
    Ok(dims[1])
}

/// The in-place op: dst = the cache (keys, then values), srcs = (the rows, keys then
/// values; the slot tensor). Dims and slot values are checked by [`reshape_and_cache`]
/// before it runs.
pub(crate) struct WriteCache {
    /// `num_blocks * block_size`: slots of each half of the cache.
    pub num_slots: usize,
    /// Tokens of each half of the rows.
    pub num_tokens: usize,
    /// `num_kv_heads * head_dim`: elements of one token's row.
    pub row_len: usize,
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
    fn write<T: Elem>(&self, cache: &mut [T], rows: &[T], slots: &[u32]) -> Result<()> {
        let n = self.row_len;
        let half = self.num_slots * n;
        if cache.len() != 2 * half
            || rows.len() != 2 * self.num_tokens * n
            || slots.len() != self.num_tokens
        {
            bail!("reshape_and_cache: storage sizes disagree with the shapes checked");
        }
        let (keys, values) = rows.split_at(self.num_tokens * n);
        let (key_cache, value_cache) = cache.split_at_mut(half);
        for (src, dst) in [(keys, key_cache), (values, value_cache)] {
            for (row, &slot) in src.chunks_exact(n).zip(slots) {
                if slot != u32::MAX {
                    let at = slot as usize * n;
                    let Some(d) = dst.get_mut(at..at + n) else {
                        bail!("reshape_and_cache: slot {slot} outside the cache");
                    };
                    d.copy_from_slice(row);
                }
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
        let slots = contiguous_slice::<u32>(slots, slots_l, "slot_mapping")?;
        macro_rules! go {
            ($variant:ident, $t:ty) => {{
                let rows = contiguous_slice::<$t>(rows, rows_l, "kv")?;
                let CpuStorage::$variant(cache) = cache else {
                    bail!("reshape_and_cache: cache and kv dtypes differ");
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
            _ => bail!("reshape_and_cache: kv must be f32, f16 or bf16"),
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
        crate::cuda::cache::write(self, cache, cache_l, (rows, rows_l), (slots, slots_l))
    }
}

//! Grouped multi-adapter LoRA ([`lora_apply`]) and the per-step batch description it reads
//! ([`LoraBatch`]): many LoRA adapters served in one batch, Punica / S-LoRA style (shrink by
//! A, then expand by B, tokens grouped by adapter slot).
//!
//! Adapters live in fixed slots of per-projection stacks: `a: [S, R, in]` and
//! `b: [S, out, R]`, where R is the largest rank the stacks hold; slot s holds an adapter of
//! rank `r_s` in `a[s, :r_s, :]` and `b[s, :, :r_s]`. Entries past `r_s` are never read, so
//! they may hold anything. The adapter's scaling is already folded into b. A slot's rank is
//! the adapter's, one per slot for every projection; a projection reads `min(r_s, R)` rows
//! of it, so the stacks of a module that only smaller adapters target (R below `r_s`: the
//! larger adapter does not target it and its rows there are zero) serve it too.
//!
//! Owns these invariants, checked before any kernel runs (errors, never panics):
//! - a [`LoraBatch`] only holds token slots in `-1..S` (S = `slot_ranks.len()`), and its
//!   groups list each token with a non-empty slot exactly once;
//! - at apply time the tensors agree with the batch and each other: `x [T, in]`,
//!   `y [T, out]`, `a [S, R, in]`, `b [S, out, R]`, one float dtype, one device (the batch's).
//!
//! A token on slot -1, or on an empty slot (rank 0), gets no delta: its row of y comes back
//! bit-identical. The batch is built once per step on the host and reused by every layer and
//! projection. On a GPU the kernels read two device tables: each token's slot (u32,
//! `u32::MAX` for none; a server's step carries it in its one upload) and each slot's rank
//! (kept on the device by the model, written when an adapter is loaded), so applying it
//! never copies anything to or from the device (capturable in a CUDA graph). Which kernels
//! run depends only on whether any token names a slot, not on the ranks. The CPU kernel
//! lives in `lora_cpu`, the CUDA one in `cuda::lora`.

use crate::cpu_util::{contiguous_slice, is_float, storage_slice};
use candle_core::{bail, CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

/// The tokens of one adapter slot: entries `start..end` of [`LoraBatch`]'s grouped rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group {
    /// The adapter slot.
    pub slot: usize,
    /// Its rank (at least 1).
    pub rank: usize,
    pub start: usize,
    pub end: usize,
}

/// Per-step description of which adapter slot each token uses, built once per step on the
/// host and reused by every layer and projection.
///
/// Holds the tokens grouped by slot (for the CPU kernel) and, for a GPU, the device tables
/// of each token's slot and each slot's rank (for the CUDA kernels), so applying it reads
/// nothing back from the device.
#[derive(Debug, Clone)]
pub struct LoraBatch {
    num_tokens: usize,
    slot_ranks: Vec<usize>,
    /// Whether some token names a slot (the kernels run; see [`LoraBatch::is_empty`]).
    any_slot: bool,
    /// Token rows with an adapter, grouped by slot (slots ascending, rows ascending).
    rows: Vec<u32>,
    /// One per slot that has tokens and a rank above 0, slots ascending.
    groups: Vec<Group>,
    device: Device,
    /// On a GPU: u32 `[num_tokens]` slot per token (`u32::MAX`: none) and u32 `[S]` rank
    /// per slot.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    tables: Option<(Tensor, Tensor)>,
}

impl LoraBatch {
    /// `token_slots[t]` is the adapter slot of token t, or -1 for none; `slot_ranks[s]` is the
    /// rank of the adapter resident in slot s (0 = empty slot; a token on an empty slot gets
    /// no delta). Groups tokens by slot on the host and, on a GPU `device`, uploads both as
    /// the device tables (two copies; a server's step passes its own with
    /// [`LoraBatch::with_tables`] instead).
    ///
    /// Errors on a slot below -1 or at least `slot_ranks.len()`, or sizes past u32.
    pub fn new(token_slots: &[i32], slot_ranks: &[usize], device: &Device) -> Result<Self> {
        let mut batch = Self::grouped(token_slots, slot_ranks, device)?;
        if !device.is_cpu() {
            let slots = Self::device_slots(token_slots);
            let ranks: Vec<u32> = slot_ranks.iter().map(|&r| r as u32).collect();
            batch.tables = Some((
                Tensor::from_vec(slots, token_slots.len(), device)?,
                Tensor::from_vec(ranks, slot_ranks.len(), device)?,
            ));
        }
        Ok(batch)
    }

    /// [`LoraBatch::new`] over device tables the caller keeps: `device_slots` u32
    /// `[token_slots.len()]` holding [`LoraBatch::device_slots`] of `token_slots`, and
    /// `device_ranks` u32 `[slot_ranks.len()]` holding `slot_ranks`, both on the device the
    /// batch is for (read by the CUDA kernels only; the host slices are what is checked and
    /// what the CPU kernel reads, so the caller keeps the two in agreement). Nothing is
    /// copied to the device.
    ///
    /// Errors as [`LoraBatch::new`] does, and on tables of another shape or dtype.
    pub fn with_tables(
        token_slots: &[i32],
        slot_ranks: &[usize],
        device_slots: &Tensor,
        device_ranks: &Tensor,
    ) -> Result<Self> {
        for (what, t, len) in [
            ("slot", device_slots, token_slots.len()),
            ("rank", device_ranks, slot_ranks.len()),
        ] {
            if t.dtype() != candle_core::DType::U32 || t.dims() != [len] {
                bail!(
                    "LoraBatch: the device {what} table must be u32 [{len}], got {:?} {:?}",
                    t.dtype(),
                    t.dims()
                );
            }
        }
        if !device_slots.device().same_device(device_ranks.device()) {
            bail!("LoraBatch: the device tables are on different devices");
        }
        let mut batch = Self::grouped(token_slots, slot_ranks, device_slots.device())?;
        batch.tables = Some((device_slots.clone(), device_ranks.clone()));
        Ok(batch)
    }

    /// The device slot table's values for `token_slots`: the slot as u32, `u32::MAX` for -1
    /// (and for anything else below 0, which [`LoraBatch::new`] refuses).
    pub fn device_slots(token_slots: &[i32]) -> Vec<u32> {
        (token_slots.iter())
            .map(|&s| u32::try_from(s).unwrap_or(u32::MAX))
            .collect()
    }

    /// The host side: checks and groups the tokens by slot; no device tables.
    fn grouped(token_slots: &[i32], slot_ranks: &[usize], device: &Device) -> Result<Self> {
        let num_slots = slot_ranks.len();
        if u32::try_from(token_slots.len()).is_err() || u32::try_from(num_slots).is_err() {
            bail!(
                "LoraBatch: {} tokens or {num_slots} slots is too many",
                token_slots.len()
            );
        }
        if let Some((s, r)) = slot_ranks
            .iter()
            .enumerate()
            .find(|(_, &r)| u32::try_from(r).is_err())
        {
            bail!("LoraBatch: slot {s} has rank {r}, too large");
        }
        // Counting sort of the tokens by slot: count, then place.
        let mut starts = vec![0usize; num_slots + 1];
        let mut any_slot = false;
        for (t, &s) in token_slots.iter().enumerate() {
            if s == -1 {
                continue;
            }
            match usize::try_from(s) {
                Ok(s) if s < num_slots => {
                    any_slot = true;
                    if slot_ranks[s] > 0 {
                        starts[s + 1] += 1;
                    }
                }
                _ => bail!(
                    "LoraBatch: token {t} has adapter slot {s}, outside -1 and 0..{num_slots}"
                ),
            }
        }
        for s in 0..num_slots {
            starts[s + 1] += starts[s];
        }
        let mut next = starts.clone();
        let mut rows = vec![0u32; starts[num_slots]];
        for (t, &s) in token_slots.iter().enumerate() {
            // Every slot was checked above: -1 or in range.
            if let Ok(s) = usize::try_from(s) {
                if slot_ranks[s] > 0 {
                    rows[next[s]] = t as u32;
                    next[s] += 1;
                }
            }
        }
        let groups: Vec<Group> = (0..num_slots)
            .filter(|&s| starts[s + 1] > starts[s])
            .map(|s| Group {
                slot: s,
                rank: slot_ranks[s],
                start: starts[s],
                end: starts[s + 1],
            })
            .collect();
        Ok(Self {
            num_tokens: token_slots.len(),
            slot_ranks: slot_ranks.to_vec(),
            any_slot,
            rows,
            groups,
            device: device.clone(),
            tables: None,
        })
    }

    /// True if no token names an adapter slot (apply is then a no-op returning y
    /// unchanged). Tokens on empty slots (rank 0) make it false: the kernels run and add
    /// them nothing. So whether the kernels run depends on the tokens' slots, never on the
    /// ranks (a CUDA graph captured with adapters replays correctly whatever their ranks).
    pub fn is_empty(&self) -> bool {
        !self.any_slot
    }

    /// Number of tokens (rows of x and y) the batch describes.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Number of adapter slots (first dimension of the stacks).
    pub fn num_slots(&self) -> usize {
        self.slot_ranks.len()
    }

    /// The slots with tokens, in slot order.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Token rows with an adapter, grouped by slot; [`Group`] ranges index into it.
    pub(crate) fn rows(&self) -> &[u32] {
        &self.rows
    }

    /// The device tables: slot per token, rank per slot (GPU batches only).
    #[cfg(feature = "cuda")]
    pub(crate) fn tables(&self) -> Option<&(Tensor, Tensor)> {
        self.tables.as_ref()
    }
}

/// Shapes of one application: `x [num_tokens, in_dim]`, `y [num_tokens, out_dim]`,
/// `a [num_slots, max_rank, in_dim]`, `b [num_slots, out_dim, max_rank]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub num_tokens: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub num_slots: usize,
    pub max_rank: usize,
}

/// y + per-token LoRA delta: for every token t with slot `s = token_slots[t] >= 0`,
/// `y[t] += (x[t] @ a[s, :r, :]^T) @ b[s, :, :r]^T`, where `r = min(slot_ranks[s], R)`.
/// x: `[T, in]`, y: `[T, out]`, a: `[S, R, in]` (rows past a slot's rank are zero padding),
/// b: `[S, out, R]`. The adapter's scaling (alpha/r or alpha/sqrt(r)) is already folded into
/// b. All of x, y, a, b have one dtype (f32, f16 or bf16); accumulation is in f32.
/// Rows of tokens with slot -1 are returned unchanged. Errors (never panics) on shape/dtype/
/// device mismatches and slots out of range.
///
/// The delta of a row is computed in f32 and added to y in f32, then rounded once to the
/// dtype; rows of tokens without adapter (slot -1 or an empty slot) come back bit for bit.
/// Entries of a and b past a slot's rank are never read, so any padding works. When
/// [`LoraBatch::is_empty`] (or `out` or R is 0) this returns `y` itself, after the same
/// checks.
/// Inputs need not be contiguous (they are made so).
pub fn lora_apply(
    y: &Tensor,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    batch: &LoraBatch,
) -> Result<Tensor> {
    let dims = check(y, x, a, b, batch)?;
    if batch.is_empty() || dims.out_dim == 0 || dims.max_rank == 0 {
        return Ok(y.clone());
    }
    let op = LoraApply {
        y: y.contiguous()?,
        batch,
        dims,
    };
    x.contiguous()?
        .apply_op3_no_bwd(&a.contiguous()?, &b.contiguous()?, &op)
}

/// Checks shapes, dtypes, devices and ranks; returns the dims.
fn check(y: &Tensor, x: &Tensor, a: &Tensor, b: &Tensor, batch: &LoraBatch) -> Result<Dims> {
    let Ok((num_tokens, in_dim)) = x.dims2() else {
        bail!("lora_apply: x must be [tokens, in], got {:?}", x.dims());
    };
    let Ok((y_tokens, out_dim)) = y.dims2() else {
        bail!("lora_apply: y must be [tokens, out], got {:?}", y.dims());
    };
    let Ok((num_slots, max_rank, a_in)) = a.dims3() else {
        bail!(
            "lora_apply: a must be [slots, max_rank, in], got {:?}",
            a.dims()
        );
    };
    let dims = Dims {
        num_tokens,
        in_dim,
        out_dim,
        num_slots,
        max_rank,
    };
    if b.dims() != [num_slots, out_dim, max_rank] {
        bail!(
            "lora_apply: b must be [slots, out, max_rank] = [{num_slots}, {out_dim}, {max_rank}] \
             to match a {:?} and y {:?}, got {:?}",
            a.dims(),
            y.dims(),
            b.dims()
        );
    }
    if y_tokens != num_tokens || num_tokens != batch.num_tokens {
        bail!(
            "lora_apply: x has {num_tokens} tokens, y {y_tokens}, the batch {}",
            batch.num_tokens
        );
    }
    if a_in != in_dim {
        bail!("lora_apply: a takes inputs of {a_in} features but x has {in_dim}");
    }
    if num_slots != batch.slot_ranks.len() {
        bail!(
            "lora_apply: the stacks hold {num_slots} slots but the batch describes {}",
            batch.slot_ranks.len()
        );
    }
    let dtype = y.dtype();
    if !is_float(dtype) || [x, a, b].iter().any(|t| t.dtype() != dtype) {
        bail!(
            "lora_apply: y, x, a, b need one dtype of f32, f16, bf16; got {:?}, {:?}, {:?}, {:?}",
            dtype,
            x.dtype(),
            a.dtype(),
            b.dtype()
        );
    }
    for (what, t) in [("x", x), ("a", a), ("b", b)] {
        if !t.device().same_device(y.device()) {
            bail!("lora_apply: {what} is on another device than y");
        }
    }
    if !batch.device.same_device(y.device()) {
        bail!("lora_apply: the LoraBatch was built for another device than y");
    }
    Ok(dims)
}

/// The candle op: (x, a, b) -> y + delta, holding y and the batch.
pub(crate) struct LoraApply<'a> {
    /// Contiguous.
    pub(crate) y: Tensor,
    pub(crate) batch: &'a LoraBatch,
    pub(crate) dims: Dims,
}

impl CustomOp3 for LoraApply<'_> {
    fn name(&self) -> &'static str {
        "wick_lora_apply"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        a: &CpuStorage,
        a_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y_storage, y_l) = self.y.storage_and_layout();
        macro_rules! go {
            ($t:ty) => {{
                let out = crate::lora_cpu::apply::<$t>(
                    storage_slice(&y_storage, y_l, "y")?,
                    contiguous_slice(x, x_l, "x")?,
                    contiguous_slice(a, a_l, "a")?,
                    contiguous_slice(b, b_l, "b")?,
                    &self.dims,
                    self.batch,
                )?;
                candle_core::WithDType::to_cpu_storage_owned(out)
            }};
        }
        let out = match x {
            CpuStorage::F32(_) => go!(f32),
            CpuStorage::F16(_) => go!(half::f16),
            CpuStorage::BF16(_) => go!(half::bf16),
            _ => bail!("lora_apply: x must be f32, f16 or bf16"),
        };
        Ok((out, y_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        a: &candle_core::CudaStorage,
        a_l: &Layout,
        b: &candle_core::CudaStorage,
        b_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::lora::forward(self, (x, x_l), (a, a_l), (b, b_l))
    }
}

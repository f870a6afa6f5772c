//! Grouped multi-adapter LoRA ([`lora_apply`]) and the per-step batch description it reads
//! ([`LoraBatch`]): many LoRA adapters served in one batch, Punica / S-LoRA style (shrink by
//! A, then expand by B, tokens grouped by adapter slot).
//!
//! Adapters live in fixed slots of per-projection stacks: `a: [S, R, in]` and
//! `b: [S, out, R]`, where R is the largest rank the stacks hold; slot s holds an adapter of
//! rank `r_s <= R` in `a[s, :r_s, :]` and `b[s, :, :r_s]`. Entries past `r_s` are never
//! read, so they may hold anything. The adapter's scaling is already folded into b.
//!
//! Owns these invariants, checked before any kernel runs (errors, never panics):
//! - a [`LoraBatch`] only holds token slots in `-1..S` (S = `slot_ranks.len()`), and its
//!   groups list each token with a non-empty slot exactly once;
//! - at apply time the tensors agree with the batch and each other: `x [T, in]`,
//!   `y [T, out]`, `a [S, R, in]`, `b [S, out, R]`, one float dtype, one device (the batch's),
//!   and every `slot_ranks[s] <= R`.
//!
//! A token on slot -1, or on an empty slot (rank 0), gets no delta: its row of y comes back
//! bit-identical. The batch is built once per step on the host and reused by every layer and
//! projection; on a GPU it also uploads one small `[T, 2]` u32 tensor of `{slot, rank}` per
//! token, so applying it never copies anything back from the device (capturable in a CUDA
//! graph). The CPU kernel lives in `lora_cpu`, the CUDA one in `cuda::lora`.

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
/// Holds the tokens grouped by slot (for the CPU kernel) and, when built for a GPU, one
/// uploaded `[num_tokens, 2]` u32 tensor of `{slot, rank}` per token (for the CUDA
/// kernels), so applying it reads nothing back from the device.
#[derive(Debug, Clone)]
pub struct LoraBatch {
    num_tokens: usize,
    slot_ranks: Vec<usize>,
    /// Token rows with an adapter, grouped by slot (slots ascending, rows ascending).
    rows: Vec<u32>,
    /// One per slot that has tokens and a rank above 0, slots ascending.
    groups: Vec<Group>,
    device: Device,
    /// On a GPU, when not empty: u32 `[num_tokens, 2]`, `{slot, rank}` per token,
    /// `{u32::MAX, 0}` for a token without adapter.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    token_info: Option<Tensor>,
}

impl LoraBatch {
    /// `token_slots[t]` is the adapter slot of token t, or -1 for none; `slot_ranks[s]` is the
    /// rank of the adapter resident in slot s (0 = empty slot; a token on an empty slot gets
    /// no delta). Groups tokens by slot on the host and, on a GPU `device`, uploads the
    /// per-token `{slot, rank}` table once, so nothing is read back from the device when
    /// applying. That every rank fits the stacks (`<= R`) is checked by [`lora_apply`].
    ///
    /// Errors on a slot below -1 or at least `slot_ranks.len()`, or sizes past u32.
    pub fn new(token_slots: &[i32], slot_ranks: &[usize], device: &Device) -> Result<Self> {
        let num_slots = slot_ranks.len();
        if u32::try_from(token_slots.len()).is_err() {
            bail!("LoraBatch: {} tokens is too many", token_slots.len());
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
        for (t, &s) in token_slots.iter().enumerate() {
            if s == -1 {
                continue;
            }
            match usize::try_from(s) {
                Ok(s) if s < num_slots => {
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
        let token_info = if device.is_cpu() || groups.is_empty() {
            None
        } else {
            let mut info = [u32::MAX, 0].repeat(token_slots.len());
            for (t, &s) in token_slots.iter().enumerate() {
                if let Ok(s) = usize::try_from(s) {
                    // Slots below S and ranks were checked to fit u32.
                    info[2 * t] = s as u32;
                    info[2 * t + 1] = slot_ranks[s] as u32;
                }
            }
            Some(Tensor::from_vec(info, (token_slots.len(), 2), device)?)
        };
        Ok(Self {
            num_tokens: token_slots.len(),
            slot_ranks: slot_ranks.to_vec(),
            rows,
            groups,
            device: device.clone(),
            token_info,
        })
    }

    /// True if no token uses an adapter (apply is then a no-op returning y unchanged).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
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

    /// The uploaded `{slot, rank}` table (GPU batches only).
    #[cfg(feature = "cuda")]
    pub(crate) fn token_info(&self) -> Option<&Tensor> {
        self.token_info.as_ref()
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
/// `y[t] += (x[t] @ a[s, :r_s, :]^T) @ b[s, :, :r_s]^T`, where `r_s = slot_ranks[s]`.
/// x: `[T, in]`, y: `[T, out]`, a: `[S, R, in]` (rows past a slot's rank are zero padding),
/// b: `[S, out, R]`. The adapter's scaling (alpha/r or alpha/sqrt(r)) is already folded into
/// b. All of x, y, a, b have one dtype (f32, f16 or bf16); accumulation is in f32.
/// Rows of tokens with slot -1 are returned unchanged. Errors (never panics) on shape/dtype/
/// device mismatches and slot or rank out of range.
///
/// The delta of a row is computed in f32 and added to y in f32, then rounded once to the
/// dtype; rows of tokens without adapter (slot -1 or an empty slot) come back bit for bit.
/// Entries of a and b past a slot's rank are never read, so any padding works. When
/// [`LoraBatch::is_empty`] (or `out` is 0) this returns `y` itself, after the same checks.
/// Inputs need not be contiguous (they are made so).
pub fn lora_apply(
    y: &Tensor,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    batch: &LoraBatch,
) -> Result<Tensor> {
    let dims = check(y, x, a, b, batch)?;
    if batch.is_empty() || dims.out_dim == 0 {
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
    if let Some((s, r)) = batch
        .slot_ranks
        .iter()
        .enumerate()
        .find(|(_, &r)| r > max_rank)
    {
        bail!("lora_apply: slot {s} has rank {r} but the stacks hold at most rank {max_rank}");
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

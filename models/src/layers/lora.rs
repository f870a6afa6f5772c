//! Adapter slots of one projection ([`LoraSlots`]): the A and B weights of every resident
//! LoRA adapter, stacked so that one grouped op ([`wick_kernels::lora_apply`]) adds each
//! token's own adapter delta in a batch that mixes adapters (and rows with none).
//!
//! Layout: `a` is `[num_slots, rank, in]` and `b` is `[num_slots, out, rank]` in the
//! serving dtype on the serving device, where `rank` is the largest rank loaded so far
//! (the stacks grow when a larger adapter arrives, so an unused LoRA costs nothing and
//! small adapters do not pay for `--max-lora-rank`). Rows past an adapter's own rank, and
//! every row of an empty slot or of a module the adapter does not target, are zero, so
//! they add nothing. B already carries the adapter's scaling.
//!
//! Fused projections keep addressing q, k and v separately: a fused q/k/v `Linear` keeps
//! one `LoraSlots` per original projection and applies each to its slice of the fused
//! output (its `out` range); a column-sharded one would keep the rows of B for its shard,
//! A being per input and whole.

use crate::lora::LoraPair;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// The stacked adapter weights of one projection.
#[derive(Debug, Clone)]
pub struct LoraSlots {
    /// `[num_slots, rank, in]`.
    a: Tensor,
    /// `[num_slots, out, rank]`.
    b: Tensor,
}

impl LoraSlots {
    /// `num_slots` empty slots for a projection of `inp` -> `out` features.
    pub fn new(
        num_slots: usize,
        inp: usize,
        out: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            a: Tensor::zeros((num_slots, 0, inp), dtype, device)?,
            b: Tensor::zeros((num_slots, out, 0), dtype, device)?,
        })
    }

    /// Rank the stacks hold (the largest loaded so far).
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// `(a, b)` stacks for the grouped op.
    pub fn stacks(&self) -> (&Tensor, &Tensor) {
        (&self.a, &self.b)
    }

    /// Puts `pair` (or zeros, for `None`: the slot is emptied or the adapter does not
    /// target this module) in `slot`, growing the stacks if its rank is larger.
    pub fn set(&mut self, slot: usize, pair: Option<&LoraPair>) -> Result<()> {
        let (dtype, device) = (self.a.dtype(), self.a.device().clone());
        let (_, _, inp) = self.a.dims3()?;
        let (_, out, _) = self.b.dims3()?;
        let rank = pair.map_or(0, |p| p.a.dims()[0]);
        if rank > self.rank() {
            let grow = rank - self.rank();
            self.a = self.a.pad_with_zeros(1, 0, grow)?.contiguous()?;
            self.b = self.b.pad_with_zeros(2, 0, grow)?.contiguous()?;
        }
        let r = self.rank();
        if r == 0 {
            return Ok(());
        }
        let (a, b) = match pair {
            Some(p) => (
                p.a.to_dtype(dtype)?
                    .to_device(&device)?
                    .pad_with_zeros(0, 0, r - rank)?,
                p.b.to_dtype(dtype)?
                    .to_device(&device)?
                    .pad_with_zeros(1, 0, r - rank)?,
            ),
            None => (
                Tensor::zeros((r, inp), dtype, &device)?,
                Tensor::zeros((out, r), dtype, &device)?,
            ),
        };
        self.a.slice_set(&a.unsqueeze(0)?.contiguous()?, 0, slot)?;
        self.b.slice_set(&b.unsqueeze(0)?.contiguous()?, 0, slot)?;
        Ok(())
    }
}

//! The CPU kernel of [`crate::lora_apply`]: the reference the CUDA kernels are checked
//! against, and fast enough to serve decode batches from.
//!
//! Work is split into tasks of (adapter slot, up to [`CHUNK_TOKENS`] of its tokens), from
//! the grouping [`LoraBatch`] made on the host. A task takes its slot's `a[s, :r, :]` and
//! `b[s, :, :r]` as f32 (borrowed in place for f32, converted once per task for f16/bf16),
//! then per token: shrink `h[k] = x[t] . a[s, k]` for k < r, expand and add
//! `y[t, o] + h . b[s, o, :r]`, rounded once, into the token's row of the output. Both
//! steps are dot products over contiguous rows, eight rows per call (`Simd::dot8`: one
//! load of `x[t]` or `h` feeds eight FMA chains, then one tree of horizontal adds), AVX2 +
//! FMA when the CPU has them. Each task owns the `&mut` output rows of its tokens (split off
//! the output, no unsafe), and rayon runs tasks in parallel once a call has more than
//! [`PARALLEL_MIN_WORK`] multiply-adds. A token's result depends only on its own row and
//! adapter (batch invariance).
//!
//! Why this shape (timed on the 2-core development machine, shared with other builds, best
//! of 10 rounds; decode = 16 tokens over 8 adapters, r = 16):
//! - decode 576 -> 576: f32 26 us, bf16 38 us, f16 80-115 us; 576 -> 1536: 52, 75, 160-220
//!   us. The same with candle ops per slot (index_select, two matmuls, index_add): 130-290
//!   us f32 and 390-1100 us f16/bf16 on one thread, 700-1600 us with candle's threads on the
//!   busy machine. At these sizes candle's cost is op dispatch, allocation and gemm's thread
//!   wake-ups, not flops; f32 here is within about 2x of streaming the adapters' weights.
//! - a first version expanded by axpys over a transposed copy of b: 100-140 us for
//!   576 -> 576 f32, most of it in the strided transpose; the eight-row dot replaced it.
//! - prefill, 512 tokens of one adapter, 576 -> 1536: 1.6-2.3 ms f32 against candle's
//!   1.5-1.8 ms (its gemm blocks better for one large group), on par for bf16, 3x faster
//!   for f16; 512 tokens over 4 adapters at 2048 -> 2048: 3.3-3.7 ms f32 against 4-12 ms.
//! - rayon below about a million multiply-adds (typical decode) gained nothing measurable
//!   on 2 cores and competes with candle's gemm threads, hence the threshold.
//!
//! Invariants the caller (`lora_apply`) has checked: slices have the shapes of `Dims`, every
//! group's slot is below `num_slots`, every grouped token is below `num_tokens` and appears
//! once (a group's rank above `max_rank` is read as `max_rank`). They are checked again
//! here cheaply (error, not panic), and indexing stays bounds-checked.

use crate::cpu_util::Elem;
use crate::lora::{Dims, Group, LoraBatch};
#[cfg(target_arch = "x86_64")]
use crate::simd::Avx2Fma;
use crate::simd::{Flavour, Portable, Simd};
use candle_core::{bail, Result};
use rayon::prelude::*;

/// Tokens of one slot per task.
const CHUNK_TOKENS: usize = 64;
/// Multiply-adds below which a call runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 20;

/// Inputs every task reads.
struct Ctx<'a, T> {
    x: &'a [T],
    a: &'a [T],
    b: &'a [T],
    dims: Dims,
}

/// Some tokens of one slot, with their output rows.
struct Task<'a, T> {
    group: Group,
    tokens: &'a [u32],
    /// Row of the output of each token, initialised to y.
    dst: Vec<&'a mut [T]>,
}

/// Per-thread buffers, reused across tasks.
#[derive(Default)]
struct Scratch {
    /// The slot's `a[s, :r, :]` as f32 (unused for f32 storage).
    a: Vec<f32>,
    /// The slot's `b[s, :, :r]` as f32 (unused for f32 storage).
    b: Vec<f32>,
    /// One token's x as f32 (unused for f32 storage).
    x: Vec<f32>,
    /// One token's shrunk activations, `[r]`.
    h: Vec<f32>,
}

/// `y` with every grouped token's LoRA delta added (see [`crate::lora_apply`]).
pub(crate) fn apply<T: Elem>(
    y: &[T],
    x: &[T],
    a: &[T],
    b: &[T],
    dims: &Dims,
    batch: &LoraBatch,
) -> Result<Vec<T>> {
    apply_with(Flavour::best(), y, x, a, b, dims, batch)
}

/// [`apply`] with the given inner loops.
fn apply_with<T: Elem>(
    flavour: Flavour,
    y: &[T],
    x: &[T],
    a: &[T],
    b: &[T],
    dims: &Dims,
    batch: &LoraBatch,
) -> Result<Vec<T>> {
    let Dims {
        num_tokens,
        in_dim,
        out_dim,
        num_slots,
        max_rank,
    } = *dims;
    if y.len() != num_tokens * out_dim
        || x.len() != num_tokens * in_dim
        || a.len() != num_slots * max_rank * in_dim
        || b.len() != num_slots * out_dim * max_rank
    {
        bail!("lora_apply: storage sizes disagree with the shapes checked");
    }
    let mut out = y.to_vec();
    if out_dim == 0 || batch.is_empty() {
        return Ok(out);
    }
    let mut rows: Vec<Option<&mut [T]>> = out.chunks_exact_mut(out_dim).map(Some).collect();
    let mut tasks = Vec::new();
    let mut work = 0;
    for g in batch.groups() {
        if g.slot >= num_slots || g.rank == 0 {
            bail!(
                "lora_apply: slot {} of rank {} does not fit stacks of {num_slots} slots",
                g.slot,
                g.rank
            );
        }
        // The stacks hold rank R: a larger slot rank reads R rows (see `lora_apply`).
        let g = Group {
            rank: g.rank.min(max_rank),
            ..*g
        };
        let Some(tokens) = batch.rows().get(g.start..g.end) else {
            bail!("lora_apply: malformed LoraBatch");
        };
        work += tokens.len() * g.rank * (in_dim + out_dim);
        for chunk in tokens.chunks(CHUNK_TOKENS) {
            let mut dst = Vec::with_capacity(chunk.len());
            for &t in chunk {
                match rows.get_mut(t as usize).and_then(Option::take) {
                    Some(row) => dst.push(row),
                    None => bail!("lora_apply: token {t} is outside y or in two groups"),
                }
            }
            tasks.push(Task {
                group: g,
                tokens: chunk,
                dst,
            });
        }
    }
    let ctx = Ctx {
        x,
        a,
        b,
        dims: *dims,
    };
    if work < PARALLEL_MIN_WORK || tasks.len() == 1 {
        let mut scratch = Scratch::default();
        for task in tasks {
            run_task(flavour, &ctx, task, &mut scratch);
        }
    } else {
        tasks
            .into_par_iter()
            .for_each_init(Scratch::default, |scratch, task| {
                run_task(flavour, &ctx, task, scratch)
            });
    }
    drop(rows);
    Ok(out)
}

/// Runs one task with `flavour`'s inner loops.
fn run_task<T: Elem>(flavour: Flavour, ctx: &Ctx<'_, T>, task: Task<'_, T>, scratch: &mut Scratch) {
    match flavour {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `run_task_avx2` requires AVX2 and FMA, which `simd` proves.
        Flavour::Avx2Fma(simd) => unsafe { run_task_avx2(simd, ctx, task, scratch) },
        Flavour::Portable => run_task_with(Portable, ctx, task, scratch),
    }
}

/// [`run_task_with`] compiled for AVX2 + FMA, so the intrinsics inline into its loops.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_task_avx2<T: Elem>(
    simd: Avx2Fma,
    ctx: &Ctx<'_, T>,
    task: Task<'_, T>,
    scratch: &mut Scratch,
) {
    run_task_with(simd, ctx, task, scratch)
}

/// Shrink, expand and add for each token of a task.
#[inline(always)]
fn run_task_with<T: Elem, S: Simd>(
    simd: S,
    ctx: &Ctx<'_, T>,
    task: Task<'_, T>,
    scratch: &mut Scratch,
) {
    let Dims {
        in_dim,
        out_dim,
        max_rank,
        ..
    } = ctx.dims;
    let Group { slot, rank, .. } = task.group;
    let Scratch { a, b, x, h } = scratch;
    // `a[s, k, :]` for k < rank, and `b[s, o, :rank]` for every o.
    let a_rows = T::rows_f32(ctx.a, slot * max_rank * in_dim, in_dim, rank, in_dim, a);
    let b_rows = T::rows_f32(ctx.b, slot * out_dim * max_rank, max_rank, out_dim, rank, b);
    h.resize(rank, 0.0);
    for (&t, dst) in task.tokens.iter().zip(task.dst) {
        let xt = T::rows_f32(ctx.x, t as usize * in_dim, in_dim, 1, in_dim, x);
        let xt = xt.row(0);
        // Shrink: h[k] = x[t] . a[s, k].
        let mut k = 0;
        while k + 8 <= rank {
            let sums = simd.dot8(xt, a_rows.rows_from(k), a_rows.stride());
            h[k..k + 8].copy_from_slice(&sums);
            k += 8;
        }
        for (k, hk) in h.iter_mut().enumerate().skip(k) {
            *hk = simd.dot(xt, a_rows.row(k));
        }
        // Expand and add: y[t, o] += h . b[s, o, :rank].
        let mut o = 0;
        while o + 8 <= out_dim {
            let sums = simd.dot8(h, b_rows.rows_from(o), b_rows.stride());
            T::add_f32(&mut dst[o..o + 8], &sums);
            o += 8;
        }
        for (o, d) in dst.iter_mut().enumerate().skip(o) {
            *d = T::from_f32(d.into_f32() + simd.dot(h, b_rows.row(o)));
        }
    }
}

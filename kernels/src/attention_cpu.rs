//! The CPU kernel of paged attention: the reference the CUDA kernel is checked against,
//! and fast enough to serve from.
//!
//! Work is split into tasks of (sequence, kv head, tile of query rows); rayon runs them in
//! parallel, largest first. A task holds the tile's queries of every head sharing that kv
//! head (the GQA group) and walks the sequence's blocks once: each block's keys and values
//! are loaded (as f32) once and used by every query of the tile, and each query keeps a
//! running max and sum (online softmax) so no score matrix is ever stored. All arithmetic
//! is f32 over contiguous `head_dim` slices, through `simd` (AVX2 + FMA when the CPU has
//! them, detected at run time).
//!
//! Invariants the caller (`paged_attention`) has checked: every sequence's query rows lie
//! within q and follow each other from row 0 in order, `q_len <= seq_len`, its `blocks`
//! cover `seq_len` tokens and are ids below `num_blocks`, and `num_heads` is a positive
//! multiple of `num_kv_heads`. Indexing stays bounds-checked, so a broken invariant is a
//! panic, never a wrong read.

use crate::cpu_util::Elem;
#[cfg(target_arch = "x86_64")]
use crate::simd::Avx2Fma;
use crate::simd::{Flavour, Portable, Simd};
use candle_core::{bail, Result};
use rayon::prelude::*;

/// Query vectors (rows x heads of one GQA group) a task handles per pass over the keys.
const TILE_QUERIES: usize = 32;

/// Shapes of q `[num_tokens, num_heads, head_dim]` and of the caches
/// `[num_blocks, block_size, num_kv_heads, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl Dims {
    /// From the layouts of q `[num_tokens, num_heads, head_dim]` and the key cache
    /// `[num_blocks, block_size, num_kv_heads, head_dim]`.
    pub fn from_layouts(
        q: &candle_core::Layout,
        key_cache: &candle_core::Layout,
    ) -> candle_core::Result<Self> {
        let (num_tokens, num_heads, head_dim) = q.shape().dims3()?;
        let (num_blocks, block_size, num_kv_heads, _) = key_cache.shape().dims4()?;
        Ok(Self {
            num_tokens,
            num_heads,
            num_kv_heads,
            head_dim,
            num_blocks,
            block_size,
        })
    }
}

/// Scalars of the op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub softmax_scale: f32,
    /// Keys a query sees, itself included; `None` for all earlier ones.
    pub sliding_window: Option<usize>,
}

impl Params {
    /// First key position visible from position `pos`.
    #[inline]
    pub(crate) fn first_key(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }
}

/// One sequence of the batch.
#[derive(Debug)]
pub(crate) struct Seq<'a> {
    /// First row of q holding this sequence's queries.
    pub q_start: usize,
    /// Its queries this step: rows `q_start..q_start + q_len`, the last `q_len` positions.
    pub q_len: usize,
    /// Tokens of context, this step's included.
    pub seq_len: usize,
    /// Exactly `ceil(seq_len / block_size)` block ids, in order.
    pub blocks: &'a [u32],
}

/// Inputs every task reads.
struct Ctx<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    dims: Dims,
    params: Params,
    /// Query heads per kv head.
    group: usize,
}

/// A tile of query rows of one sequence against one kv head.
struct Task<'a> {
    seq: &'a Seq<'a>,
    kv_head: usize,
    /// First row of the tile, relative to the sequence's first query.
    row0: usize,
    rows: usize,
    /// `[rows, group, head_dim]` f32 accumulators, zeroed; the tile's normalized output.
    out: &'a mut [f32],
}

impl Task<'_> {
    /// Position of the tile's first query.
    fn first_pos(&self) -> usize {
        self.seq.seq_len - self.seq.q_len + self.row0
    }

    /// Rough work: query rows times keys visible to the last one.
    fn cost(&self, params: &Params) -> usize {
        let last = self.first_pos() + self.rows - 1;
        self.rows * (last + 1 - params.first_key(last))
    }
}

/// Per-thread buffers, reused across tasks.
#[derive(Default)]
struct Scratch {
    /// The tile's queries, scaled, `[rows * group, head_dim]`.
    q: Vec<f32>,
    /// A block's keys / values as f32 (unused for f32 storage).
    k: Vec<f32>,
    v: Vec<f32>,
    /// Scores of one query against one block's keys.
    scores: Vec<f32>,
    /// Running max and sum of exponentials, per query.
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// Attention of every sequence's queries over its cached keys and values; returns the
/// output `[num_tokens, num_heads, head_dim]`, with zeros in rows of no sequence. Uses the
/// best inner loops this CPU has (AVX2 + FMA, detected at run time, so one binary serves
/// every x86-64 machine).
pub(crate) fn attention<T: Elem>(
    q: &[T],
    k: &[T],
    v: &[T],
    dims: &Dims,
    seqs: &[Seq<'_>],
    params: &Params,
) -> Result<Vec<T>> {
    attention_with(Flavour::best(), q, k, v, dims, seqs, params)
}

/// [`attention`] with the given inner loops.
fn attention_with<T: Elem>(
    flavour: Flavour,
    q: &[T],
    k: &[T],
    v: &[T],
    dims: &Dims,
    seqs: &[Seq<'_>],
    params: &Params,
) -> Result<Vec<T>> {
    let Dims {
        num_tokens,
        num_heads,
        num_kv_heads,
        head_dim: d,
        ..
    } = *dims;
    if num_kv_heads == 0 || d == 0 || num_heads % num_kv_heads != 0 {
        bail!("paged_attention: bad head layout {dims:?}");
    }
    let group = num_heads / num_kv_heads;
    let per_kv_head = num_tokens * group * d;
    if per_kv_head == 0 {
        return Ok(vec![T::zero(); num_tokens * num_heads * d]);
    }
    // Accumulators `[num_kv_heads, num_tokens, group, head_dim]`: a task's tile is one
    // contiguous chunk, so tasks get disjoint `&mut` slices without any unsafe.
    let mut acc = vec![0f32; num_kv_heads * per_kv_head];
    let tile_rows = (TILE_QUERIES / group).max(1);
    let mut tasks = Vec::new();
    for (kv_head, mut rest) in acc.chunks_exact_mut(per_kv_head).enumerate() {
        for seq in seqs {
            for row0 in (0..seq.q_len).step_by(tile_rows) {
                let rows = tile_rows.min(seq.q_len - row0);
                let (out, tail) = std::mem::take(&mut rest).split_at_mut(rows * group * d);
                rest = tail;
                tasks.push(Task {
                    seq,
                    kv_head,
                    row0,
                    rows,
                    out,
                });
            }
        }
    }
    tasks.sort_by_cached_key(|t| std::cmp::Reverse(t.cost(params)));
    let ctx = Ctx {
        q,
        k,
        v,
        dims: *dims,
        params: *params,
        group,
    };
    tasks
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| {
            attend_tile(flavour, &ctx, task, scratch)
        });

    // `[kv_head, token, g, d]` -> `[token, kv_head * group + g, d]`, cast to T.
    let mut out = vec![T::zero(); num_tokens * num_heads * d];
    out.par_chunks_mut(num_heads * d)
        .enumerate()
        .for_each(|(t, row)| {
            for (h, o) in row.chunks_exact_mut(d).enumerate() {
                let (kv_head, g) = (h / group, h % group);
                let src = &acc[((kv_head * num_tokens + t) * group + g) * d..][..d];
                for (o, &x) in o.iter_mut().zip(src) {
                    *o = T::from_f32(x);
                }
            }
        });
    Ok(out)
}

/// Runs one task with `flavour`'s inner loops.
fn attend_tile<T: Elem>(flavour: Flavour, ctx: &Ctx<'_, T>, task: Task<'_>, scratch: &mut Scratch) {
    match flavour {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `attend_tile_avx2` requires AVX2 and FMA, which `simd` proves.
        Flavour::Avx2Fma(simd) => unsafe { attend_tile_avx2(simd, ctx, task, scratch) },
        Flavour::Portable => attend_tile_with(Portable, ctx, task, scratch),
    }
}

/// [`attend_tile_with`] compiled for AVX2 + FMA, so the intrinsics inline into its loops.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_tile_avx2<T: Elem>(
    simd: Avx2Fma,
    ctx: &Ctx<'_, T>,
    task: Task<'_>,
    scratch: &mut Scratch,
) {
    attend_tile_with(simd, ctx, task, scratch)
}

/// Online softmax of a task's queries over the keys they may see.
#[inline(always)]
fn attend_tile_with<T: Elem, S: Simd>(
    simd: S,
    ctx: &Ctx<'_, T>,
    task: Task<'_>,
    scratch: &mut Scratch,
) {
    let Dims {
        num_heads,
        num_kv_heads,
        head_dim: d,
        block_size: bs,
        ..
    } = ctx.dims;
    let g = ctx.group;
    let nq = task.rows * g;
    let first_pos = task.first_pos();
    let Scratch {
        q,
        k,
        v,
        scores,
        max,
        sum,
    } = scratch;

    // The tile's queries: for each row, the group's heads are contiguous in q.
    q.clear();
    for r in 0..task.rows {
        let t = task.seq.q_start + task.row0 + r;
        let src = &ctx.q[(t * num_heads + task.kv_head * g) * d..][..g * d];
        q.extend(src.iter().map(|&x| x.into_f32() * ctx.params.softmax_scale));
    }
    max.clear();
    max.resize(nq, f32::NEG_INFINITY);
    sum.clear();
    sum.resize(nq, 0.0);
    scores.resize(bs, 0.0);
    let out = task.out;

    // Keys the tile needs: from the first query's window start to the last query.
    let key_start = ctx.params.first_key(first_pos);
    let key_end = first_pos + task.rows;
    let row_stride = num_kv_heads * d;
    for b in key_start / bs..key_end.div_ceil(bs) {
        let block_pos = b * bs;
        let lo = key_start.max(block_pos);
        let hi = key_end.min(block_pos + bs);
        let block = task.seq.blocks[b] as usize;
        let base = ((block * bs + lo - block_pos) * num_kv_heads + task.kv_head) * d;
        let keys = T::rows_f32(ctx.k, base, row_stride, hi - lo, d, k);
        let vals = T::rows_f32(ctx.v, base, row_stride, hi - lo, d, v);
        for qi in 0..nq {
            let pos = first_pos + qi / g;
            // This query's keys within the block: [a, e).
            let a = lo.max(ctx.params.first_key(pos));
            let e = hi.min(pos + 1);
            if a >= e {
                continue;
            }
            let qv = &q[qi * d..][..d];
            let s = &mut scores[..e - a];
            let mut block_max = f32::NEG_INFINITY;
            for (j, s) in s.iter_mut().enumerate() {
                *s = simd.dot(qv, keys.row(a - lo + j));
                block_max = block_max.max(*s);
            }
            let acc = &mut out[qi * d..][..d];
            let m = max[qi].max(block_max);
            if m > max[qi] && sum[qi] > 0.0 {
                let alpha = (max[qi] - m).exp();
                sum[qi] *= alpha;
                simd.scale(acc, alpha);
            }
            max[qi] = m;
            for (j, &s) in s.iter().enumerate() {
                let p = (s - m).exp();
                sum[qi] += p;
                simd.axpy(acc, p, vals.row(a - lo + j));
            }
        }
    }
    // Every query sees at least itself, so its sum is >= 1.
    for (acc, &l) in out.chunks_exact_mut(d).zip(sum.iter()) {
        simd.scale(acc, 1.0 / l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable inner loops give what the CPU's best ones give (the integration tests
    /// check the best ones against a dense reference).
    #[test]
    fn flavours_agree() -> Result<()> {
        let dims = Dims {
            num_tokens: 12,
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 42,
            num_blocks: 6,
            block_size: 4,
        };
        let wave =
            |n: usize, f: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin()).collect() };
        let q = wave(dims.num_tokens * dims.num_heads * dims.head_dim, 0.7);
        let cache = dims.num_blocks * dims.block_size * dims.num_kv_heads * dims.head_dim;
        let (k, v) = (wave(cache, 0.3), wave(cache, 0.9));
        let blocks = [5u32, 0, 3, 1, 4, 2];
        let seqs = [
            Seq {
                q_start: 0,
                q_len: 9,
                seq_len: 13,
                blocks: &blocks[..4],
            },
            Seq {
                q_start: 9,
                q_len: 1,
                seq_len: 6,
                blocks: &blocks[4..],
            },
            Seq {
                q_start: 10,
                q_len: 2,
                seq_len: 2,
                blocks: &blocks[3..4],
            },
        ];
        for sliding_window in [None, Some(3)] {
            let params = Params {
                softmax_scale: 0.3,
                sliding_window,
            };
            let best = attention(&q, &k, &v, &dims, &seqs, &params)?;
            let portable = attention_with(Flavour::Portable, &q, &k, &v, &dims, &seqs, &params)?;
            for (a, b) in best.iter().zip(&portable) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        Ok(())
    }
}

//! The paged attention op ([`paged_attention`]): its metadata, its checks and its candle
//! plumbing. The CPU kernel itself lives in `attention_cpu`, the CUDA one in `cuda`.
//!
//! Invariants checked here before any kernel runs (errors, never panics):
//! - q is `[num_tokens, num_heads, head_dim]`; the caches are
//!   `[num_blocks, block_size, num_kv_heads, head_dim]`, contiguous, one shape, and one
//!   float dtype shared with q; `num_heads` is a multiple of `num_kv_heads`.
//! - the metadata (its host copy): `cu_seqlens_q` starts at 0, never decreases and ends at
//!   most at `num_tokens`; each sequence has `q_len <= seq_len`; its block table row is at
//!   least `ceil(seq_len / block_size)` wide and those entries are block ids below
//!   `num_blocks` (later entries are ignored).
//!
//! Rows of q after `cu_seqlens_q[num_seqs]` (padding tokens) belong to no sequence and come
//! out as zeros.

use crate::attention_cpu::{self, Dims, Params, Seq};
use crate::cpu_util::{contiguous_slice, is_float, Elem};
use crate::work_list;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// Batch description shared by every layer of one step, built once on the host: the host
/// copies the ops check and plan from (so a GPU step reads nothing back), and the block
/// tables on the model's device, which the kernels read.
#[derive(Debug, Clone)]
pub struct PagedAttentionMetadata {
    host: Arc<HostMetadata>,
    /// u32 `[num_seqs, width]` on the model's device.
    block_tables: Tensor,
    /// The step's work lists on the model's device, when the caller uploaded them with the
    /// rest of the step ([`PagedAttentionMetadata::with_work_lists`]).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) lists: Option<DeviceWorkLists>,
    /// The CUDA work lists made from this metadata (one per kernel choice), shared by the
    /// layers of the step.
    #[cfg(feature = "cuda")]
    pub(crate) plans: crate::cuda::attention::PlanCache,
}

/// A step's work lists made once for every layer ([`PagedAttentionMetadata::work_lists`]),
/// four u32 per item as the CUDA kernels read them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkLists {
    /// One item per query row: first the rows of sequences with at most 8 queries
    /// (`short_rows` of them), then every row of the longer sequences.
    pub rows: Vec<u32>,
    /// Number of leading row items that belong to sequences of at most 8 queries.
    pub short_rows: usize,
    /// The longer sequences' rows as tiles of up to 64 rows.
    pub tiles: Vec<u32>,
}

/// A step's work lists on the device (see [`PagedAttentionMetadata::with_work_lists`]).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct DeviceWorkLists {
    /// u32 `[rows * 4]`, the short rows first.
    pub rows: Tensor,
    pub num_rows: usize,
    pub short_rows: usize,
    /// u32 `[tiles * 4]`.
    pub tiles: Tensor,
    pub num_tiles: usize,
    /// Partitions the row kernel's grid provides (at least what the longest row needs).
    pub splits: usize,
}

#[derive(Debug)]
struct HostMetadata {
    block_tables: Vec<u32>,
    width: usize,
    cu_seqlens_q: Vec<u32>,
    seq_lens: Vec<u32>,
    max_seqlen_q: usize,
    max_seq_len: usize,
}

impl PagedAttentionMetadata {
    /// The metadata of `seq_lens.len()` sequences: `block_tables` row-major
    /// `[num_seqs, width]` (row s lists seq s's blocks in order; unused entries arbitrary),
    /// `cu_seqlens_q` `[num_seqs + 1]` (queries of seq s are rows `cu[s]..cu[s+1]` of q),
    /// `seq_lens` (tokens in seq s's context INCLUDING this step's new ones). Uploads the
    /// block tables to `device` (one copy). Errors if the lengths disagree; the values are
    /// checked against q and the cache by [`paged_attention`].
    pub fn new(
        block_tables: Vec<u32>,
        width: usize,
        cu_seqlens_q: Vec<u32>,
        seq_lens: Vec<u32>,
        device: &Device,
    ) -> Result<Self> {
        check_lengths(&block_tables, width, &cu_seqlens_q, &seq_lens)?;
        let rows = seq_lens.len();
        let tensor = Tensor::from_slice(&block_tables, (rows, width), device)?;
        Self::from_parts(block_tables, width, cu_seqlens_q, seq_lens, tensor)
    }

    /// As [`PagedAttentionMetadata::new`], with the block tables already on the model's
    /// device as `block_tables_tensor` (u32 `[num_seqs, width]`, the same values; e.g. a
    /// view into a step's one upload).
    pub fn from_parts(
        block_tables: Vec<u32>,
        width: usize,
        cu_seqlens_q: Vec<u32>,
        seq_lens: Vec<u32>,
        block_tables_tensor: Tensor,
    ) -> Result<Self> {
        check_lengths(&block_tables, width, &cu_seqlens_q, &seq_lens)?;
        let n = seq_lens.len();
        if block_tables_tensor.dims() != [n, width] || block_tables_tensor.dtype() != DType::U32 {
            bail!(
                "paged_attention: the device block tables must be u32 [{n}, {width}], got {:?} {:?}",
                block_tables_tensor.dtype(),
                block_tables_tensor.dims()
            );
        }
        let max_seqlen_q = (cu_seqlens_q.windows(2))
            .map(|w| w[1].saturating_sub(w[0]) as usize)
            .max()
            .unwrap_or(0);
        let max_seq_len = seq_lens.iter().copied().max().unwrap_or(0) as usize;
        Ok(Self {
            host: Arc::new(HostMetadata {
                block_tables,
                width,
                cu_seqlens_q,
                seq_lens,
                max_seqlen_q,
                max_seq_len,
            }),
            block_tables: block_tables_tensor,
            lists: None,
            #[cfg(feature = "cuda")]
            plans: Default::default(),
        })
    }

    /// The work lists of a step, as the CUDA kernels read them, made once for every layer
    /// (whatever its sliding window, which the kernels apply, and whether it takes tiles,
    /// which depends on its dtype): so that a caller can upload them with the rest of the
    /// step's metadata ([`Self::with_work_lists`]) and the op uploads nothing.
    /// `cu_seqlens_q` and `seq_lens` as for [`Self::new`]; lengths the op would refuse give
    /// empty lists.
    pub fn work_lists(cu_seqlens_q: &[u32], seq_lens: &[u32]) -> WorkLists {
        let Some((rows, short_rows, tiles)) = work_list::step_lists(cu_seqlens_q, seq_lens) else {
            return WorkLists::default();
        };
        // Every value is at most a row index, a sequence index or a sequence length: u32.
        let flat = |items: Vec<[usize; 4]>| items.iter().flatten().map(|&x| x as u32).collect();
        WorkLists {
            rows: flat(rows),
            short_rows,
            tiles: flat(tiles),
        }
    }

    /// Keys of one partition of the row kernel.
    pub const PARTITION_KEYS: usize = work_list::PARTITION;

    /// Partitions of the row kernel that a context of `keys` keys spans: a step whose
    /// longest context is `keys` needs at least this many from [`Self::with_work_lists`].
    pub fn partitions(keys: usize) -> usize {
        work_list::partitions(keys)
    }

    /// This metadata with its work lists already on the device: `rows` and `tiles` hold
    /// exactly [`Self::work_lists`]' (u32, e.g. views into the step's one upload), and the
    /// row kernel's grid gets `splits` partitions (at least [`Self::partitions`] of the
    /// longest context; more lets steps of one shape share one launch shape, as a CUDA
    /// graph needs). Errors on the wrong lengths, dtypes or devices, or too few partitions.
    pub fn with_work_lists(mut self, rows: Tensor, tiles: Tensor, splits: usize) -> Result<Self> {
        let host = Self::work_lists(self.cu_seqlens_q(), self.seq_lens());
        for (what, t, len) in [
            ("row items", &rows, host.rows.len()),
            ("tiles", &tiles, host.tiles.len()),
        ] {
            if t.dims() != [len] || t.dtype() != DType::U32 {
                bail!(
                    "paged_attention: {what} must be u32 [{len}], got {:?} {:?}",
                    t.dtype(),
                    t.dims()
                );
            }
            if !t.device().same_device(self.block_tables.device()) {
                bail!("paged_attention: {what} are on another device than the block tables");
            }
        }
        let needed = Self::partitions(self.max_seq_len());
        if splits < needed {
            bail!("paged_attention: {splits} partitions for a context needing {needed}");
        }
        self.lists = Some(DeviceWorkLists {
            rows,
            num_rows: host.rows.len() / 4,
            short_rows: host.short_rows,
            tiles,
            num_tiles: host.tiles.len() / 4,
            splits,
        });
        Ok(self)
    }

    /// Number of sequences.
    pub fn num_seqs(&self) -> usize {
        self.host.seq_lens.len()
    }

    /// Row s of the block tables (all `width` entries).
    pub fn block_table(&self, s: usize) -> &[u32] {
        &self.host.block_tables[s * self.host.width..(s + 1) * self.host.width]
    }

    /// `cu_seqlens_q`.
    pub fn cu_seqlens_q(&self) -> &[u32] {
        &self.host.cu_seqlens_q
    }

    /// `seq_lens`.
    pub fn seq_lens(&self) -> &[u32] {
        &self.host.seq_lens
    }

    /// Largest number of queries of one sequence.
    pub fn max_seqlen_q(&self) -> usize {
        self.host.max_seqlen_q
    }

    /// Largest context of one sequence.
    pub fn max_seq_len(&self) -> usize {
        self.host.max_seq_len
    }

    /// The block tables on the model's device (u32 `[num_seqs, width]`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn block_tables_tensor(&self) -> &Tensor {
        &self.block_tables
    }
}

/// Errors unless the metadata's lengths fit `seq_lens.len()` sequences.
fn check_lengths(
    block_tables: &[u32],
    width: usize,
    cu_seqlens_q: &[u32],
    seq_lens: &[u32],
) -> Result<()> {
    let n = seq_lens.len();
    if cu_seqlens_q.len() != n + 1 || block_tables.len() != n * width {
        bail!(
            "paged_attention: {n} sequences need {} cu_seqlens_q and {n} x {width} block \
             table entries, got {} and {}",
            n + 1,
            cu_seqlens_q.len(),
            block_tables.len()
        );
    }
    Ok(())
}

/// One attention op for prefill, chunked prefill and decode over a ragged batch.
///
/// `q`: `[num_tokens, num_heads, head_dim]`; returns the same shape and dtype.
/// `key_cache`, `value_cache`: `[num_blocks, block_size, num_kv_heads, head_dim]`,
/// contiguous, q's dtype (f32, f16 or bf16).
///
/// Causal by position: seq s has `q_len = cu[s+1] - cu[s]` queries; query j of seq s sits at
/// position `p = seq_lens[s] - q_len + j` and attends to keys at positions `0..=p`, or only
/// positions `> p - window` when `sliding_window = Some(window)` (Mistral semantics: the
/// window counts the query itself, i.e. keys `p-window+1..=p`).
/// GQA: query head h reads kv head `h / (num_heads / num_kv_heads)`.
/// Scores are scaled by `softmax_scale`; softmax runs in f32 (online, numerically stable);
/// the output is cast to q's dtype.
///
/// Rows of q after `cu[num_seqs]` (padding tokens) belong to no sequence and come out as
/// zeros. Block table entries past `ceil(seq_lens[s] / block_size)` are never read.
///
/// Errors (never panics) on: mismatched shapes, dtypes or devices; non-contiguous caches;
/// `num_heads` not a multiple of `num_kv_heads`; metadata whose `cu_seqlens_q` does not
/// start at 0, decreases, or runs past q; a sequence with `q_len > seq_len`; a block table row
/// too short for its `seq_len`, or a used block id `>= num_blocks`; a zero
/// `sliding_window`; a non-finite `softmax_scale`.
pub fn paged_attention(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &PagedAttentionMetadata,
    softmax_scale: f32,
    sliding_window: Option<usize>,
) -> Result<Tensor> {
    check_shapes(q, key_cache, value_cache, meta)?;
    if !softmax_scale.is_finite() {
        bail!("paged_attention: softmax_scale must be finite, got {softmax_scale}");
    }
    if sliding_window == Some(0) {
        bail!("paged_attention: sliding_window must be at least 1 (it counts the query itself)");
    }
    let op = PagedAttention {
        meta: meta.clone(),
        params: Params {
            softmax_scale,
            sliding_window,
        },
    };
    q.contiguous()?
        .apply_op3_no_bwd(key_cache, value_cache, &op)
}

/// Checks dims, dtypes, devices and contiguity (everything but the metadata's values).
fn check_shapes(
    q: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    meta: &PagedAttentionMetadata,
) -> Result<()> {
    let Ok((_, num_heads, head_dim)) = q.dims3() else {
        bail!(
            "paged_attention: q must be [num_tokens, num_heads, head_dim], got {:?}",
            q.dims()
        );
    };
    let Ok((num_blocks, block_size, num_kv_heads, cache_head_dim)) = key_cache.dims4() else {
        bail!(
            "paged_attention: key_cache must be [blocks, block_size, kv_heads, head_dim], got {:?}",
            key_cache.dims()
        );
    };
    if value_cache.dims() != key_cache.dims() {
        bail!(
            "paged_attention: value_cache {:?} differs from key_cache {:?}",
            value_cache.dims(),
            key_cache.dims()
        );
    }
    if num_blocks == 0 || block_size == 0 || num_kv_heads == 0 || head_dim == 0 {
        bail!(
            "paged_attention: empty cache dimension in {:?}",
            key_cache.dims()
        );
    }
    if cache_head_dim != head_dim {
        bail!("paged_attention: q head_dim {head_dim} but cache head_dim {cache_head_dim}");
    }
    if num_heads == 0 || num_heads % num_kv_heads != 0 {
        bail!(
            "paged_attention: num_heads {num_heads} is not a positive multiple of {num_kv_heads}"
        );
    }
    if !is_float(q.dtype()) || key_cache.dtype() != q.dtype() || value_cache.dtype() != q.dtype() {
        bail!(
            "paged_attention: q and caches need one dtype (f32, f16, bf16), got {:?}, {:?}, {:?}",
            q.dtype(),
            key_cache.dtype(),
            value_cache.dtype()
        );
    }
    if !key_cache.is_contiguous() || !value_cache.is_contiguous() {
        bail!("paged_attention: the caches must be contiguous");
    }
    let device = q.device();
    for (what, t) in [
        ("key_cache", key_cache),
        ("value_cache", value_cache),
        ("block_tables", &meta.block_tables),
    ] {
        if !t.device().same_device(device) {
            bail!("paged_attention: {what} is on another device than q");
        }
    }
    Ok(())
}

/// The candle op: (q, key_cache, value_cache) -> output, holding the step's metadata.
pub(crate) struct PagedAttention {
    pub(crate) meta: PagedAttentionMetadata,
    pub(crate) params: Params,
}

impl PagedAttention {
    /// Checks the metadata's values against `dims` and describes each sequence.
    pub(crate) fn sequences(&self, dims: &Dims) -> Result<Vec<Seq<'_>>> {
        self.meta
            .sequences(dims.num_tokens, dims.num_blocks, dims.block_size)
    }
}

impl PagedAttentionMetadata {
    /// Checks the metadata's values as the op does before any kernel runs, for a step of
    /// `num_tokens` query rows over a cache of `num_blocks` blocks of `block_size` tokens:
    /// for a caller that launches the step's kernels without the op (a CUDA graph's
    /// replay), so that nothing runs on metadata the op would refuse.
    pub fn check(&self, num_tokens: usize, num_blocks: usize, block_size: usize) -> Result<()> {
        if block_size == 0 {
            bail!("paged_attention: block_size must be positive");
        }
        self.sequences(num_tokens, num_blocks, block_size)
            .map(|_| ())
    }

    /// Checks the metadata's values (see [`Self::check`]) and describes each sequence.
    pub(crate) fn sequences(
        &self,
        num_tokens: usize,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Vec<Seq<'_>>> {
        let host = &*self.host;
        let (block_tables, width) = (&host.block_tables, host.width);
        let (cu_seqlens_q, seq_lens) = (&host.cu_seqlens_q, &host.seq_lens);
        if cu_seqlens_q.first().copied().unwrap_or(0) != 0 {
            bail!("paged_attention: cu_seqlens_q must start at 0");
        }
        let mut seqs = Vec::with_capacity(seq_lens.len());
        for (s, (&seq_len, w)) in seq_lens.iter().zip(cu_seqlens_q.windows(2)).enumerate() {
            let (q_start, q_end, seq_len) = (w[0] as usize, w[1] as usize, seq_len as usize);
            if q_end < q_start || q_end > num_tokens {
                bail!(
                    "paged_attention: seq {s}: rows {q_start}..{q_end}: not a range within q's {}",
                    num_tokens
                );
            }
            let q_len = q_end - q_start;
            if q_len > seq_len {
                bail!(
                    "paged_attention: seq {s} has {q_len} queries but a context of only {seq_len}"
                );
            }
            let needed = seq_len.div_ceil(block_size);
            if needed > width {
                bail!("paged_attention: seq {s} needs {needed} blocks, its table row has {width}");
            }
            let blocks = &block_tables[s * width..s * width + needed];
            if let Some(b) = blocks.iter().find(|&&b| b as usize >= num_blocks) {
                bail!(
                    "paged_attention: seq {s} uses block {b}, the cache has {} blocks",
                    num_blocks
                );
            }
            seqs.push(Seq {
                q_start,
                q_len,
                seq_len,
                blocks,
            });
        }
        Ok(seqs)
    }
}

impl CustomOp3 for PagedAttention {
    fn name(&self) -> &'static str {
        "wick_paged_attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = Dims::from_layouts(q_l, k_l)?;
        let seqs = self.sequences(&dims)?;
        let out = match q {
            CpuStorage::F32(_) => self.run::<f32>(&dims, &seqs, (q, q_l), (k, k_l), (v, v_l))?,
            CpuStorage::F16(_) => {
                self.run::<half::f16>(&dims, &seqs, (q, q_l), (k, k_l), (v, v_l))?
            }
            CpuStorage::BF16(_) => {
                self.run::<half::bf16>(&dims, &seqs, (q, q_l), (k, k_l), (v, v_l))?
            }
            _ => bail!("paged_attention: q must be f32, f16 or bf16"),
        };
        Ok((out, q_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::attention::forward(self, (q, q_l), (k, k_l), (v, v_l))
    }
}

impl PagedAttention {
    fn run<T: Elem>(
        &self,
        dims: &Dims,
        seqs: &[Seq<'_>],
        q: (&CpuStorage, &Layout),
        k: (&CpuStorage, &Layout),
        v: (&CpuStorage, &Layout),
    ) -> Result<CpuStorage> {
        let q = contiguous_slice::<T>(q.0, q.1, "q")?;
        let k = contiguous_slice::<T>(k.0, k.1, "key_cache")?;
        let v = contiguous_slice::<T>(v.0, v.1, "value_cache")?;
        let out = attention_cpu::attention(q, k, v, dims, seqs, &self.params)?;
        Ok(T::to_cpu_storage_owned(out))
    }
}

//! The paged attention op ([`paged_attention`]): its metadata, its checks and its candle
//! plumbing. The CPU kernel itself lives in `attention_cpu`, the CUDA one in `cuda`.
//!
//! Invariants checked here before any kernel runs (errors, never panics):
//! - q is `[num_tokens, num_heads, head_dim]`; the caches are
//!   `[num_blocks, block_size, num_kv_heads, head_dim]`, contiguous, one shape, and one
//!   float dtype shared with q; `num_heads` is a multiple of `num_kv_heads`.
//! - metadata is u32: `cu_seqlens_q` starts at 0, never decreases and ends at most at
//!   `num_tokens`; each sequence has `q_len <= seq_len`, `q_len <= max_seqlen_q`,
//!   `seq_len <= max_seq_len`; its block table row is at least `ceil(seq_len / block_size)`
//!   wide and those entries are block ids below `num_blocks` (later entries are ignored).
//!
//! Rows of q after `cu_seqlens_q[num_seqs]` (padding tokens) belong to no sequence and come
//! out as zeros.

use crate::attention_cpu::{self, Dims, Params, Seq};
use crate::cpu_util::{contiguous_slice, is_float, storage_slice, Elem};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Batch description shared by every layer of one step (plain tensors on the model's device).
#[derive(Debug, Clone)]
pub struct PagedAttentionMetadata {
    /// u32 `[num_seqs, max_blocks_per_seq]`; row s lists seq s's blocks in order (unused
    /// entries arbitrary).
    pub block_tables: Tensor,
    /// u32 `[num_seqs + 1]`; queries of seq s are rows `cu[s]..cu[s+1]` of q.
    pub cu_seqlens_q: Tensor,
    /// u32 `[num_seqs]`; tokens in seq s's context INCLUDING this step's new ones.
    pub seq_lens: Tensor,
    /// Largest `cu[s+1] - cu[s]` (an upper bound is fine).
    pub max_seqlen_q: usize,
    /// Largest `seq_lens[s]` (an upper bound is fine).
    pub max_seq_len: usize,
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
/// `num_heads` not a multiple of `num_kv_heads`; metadata that is not u32 or whose
/// `cu_seqlens_q` does not start at 0, decreases, or runs past q; a sequence with
/// `q_len > seq_len`, `q_len > max_seqlen_q` or `seq_len > max_seq_len`; a block table row
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
        block_tables: meta.block_tables.contiguous()?,
        cu_seqlens_q: meta.cu_seqlens_q.contiguous()?,
        seq_lens: meta.seq_lens.contiguous()?,
        max_seqlen_q: meta.max_seqlen_q,
        max_seq_len: meta.max_seq_len,
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
    let want = [
        ("block_tables", &meta.block_tables, 2),
        ("cu_seqlens_q", &meta.cu_seqlens_q, 1),
        ("seq_lens", &meta.seq_lens, 1),
    ];
    for (what, t, rank) in want {
        if t.dtype() != DType::U32 {
            bail!("paged_attention: {what} must be u32, got {:?}", t.dtype());
        }
        if t.rank() != rank {
            bail!(
                "paged_attention: {what} must have rank {rank}, got {:?}",
                t.dims()
            );
        }
    }
    let num_seqs = meta.seq_lens.dim(0)?;
    if meta.block_tables.dim(0)? != num_seqs || meta.cu_seqlens_q.dim(0)? != num_seqs + 1 {
        bail!(
            "paged_attention: seq_lens {:?}, block_tables {:?}, cu_seqlens_q {:?} disagree",
            meta.seq_lens.dims(),
            meta.block_tables.dims(),
            meta.cu_seqlens_q.dims()
        );
    }
    let device = q.device();
    for (what, t) in [
        ("key_cache", key_cache),
        ("value_cache", value_cache),
        ("block_tables", &meta.block_tables),
        ("cu_seqlens_q", &meta.cu_seqlens_q),
        ("seq_lens", &meta.seq_lens),
    ] {
        if !t.device().same_device(device) {
            bail!("paged_attention: {what} is on another device than q");
        }
    }
    Ok(())
}

/// The candle op: (q, key_cache, value_cache) -> output, holding the step's metadata.
pub(crate) struct PagedAttention {
    pub(crate) block_tables: Tensor,
    pub(crate) cu_seqlens_q: Tensor,
    pub(crate) seq_lens: Tensor,
    pub(crate) max_seqlen_q: usize,
    pub(crate) max_seq_len: usize,
    pub(crate) params: Params,
}

impl PagedAttention {
    /// Checks the metadata's values against `dims` and describes each sequence.
    pub(crate) fn sequences<'a>(
        &self,
        dims: &Dims,
        block_tables: &'a [u32],
        cu_seqlens_q: &[u32],
        seq_lens: &[u32],
    ) -> Result<Vec<Seq<'a>>> {
        let width = match seq_lens.len() {
            0 => 0,
            n => block_tables.len() / n,
        };
        if cu_seqlens_q.len() != seq_lens.len() + 1 || block_tables.len() != seq_lens.len() * width
        {
            bail!("paged_attention: metadata lengths disagree with the number of sequences");
        }
        if cu_seqlens_q.first().copied().unwrap_or(0) != 0 {
            bail!("paged_attention: cu_seqlens_q must start at 0");
        }
        let mut seqs = Vec::with_capacity(seq_lens.len());
        for (s, (&seq_len, w)) in seq_lens.iter().zip(cu_seqlens_q.windows(2)).enumerate() {
            let (q_start, q_end, seq_len) = (w[0] as usize, w[1] as usize, seq_len as usize);
            if q_end < q_start || q_end > dims.num_tokens {
                bail!(
                    "paged_attention: seq {s}: rows {q_start}..{q_end}: not a range within q's {}",
                    dims.num_tokens
                );
            }
            let q_len = q_end - q_start;
            if q_len > seq_len {
                bail!(
                    "paged_attention: seq {s} has {q_len} queries but a context of only {seq_len}"
                );
            }
            if q_len > self.max_seqlen_q {
                bail!(
                    "paged_attention: seq {s}: q_len {q_len} > max_seqlen_q {}",
                    self.max_seqlen_q
                );
            }
            if seq_len > self.max_seq_len {
                bail!(
                    "paged_attention: seq {s}: seq_len {seq_len} > max_seq_len {}",
                    self.max_seq_len
                );
            }
            let num_blocks = seq_len.div_ceil(dims.block_size);
            if num_blocks > width {
                bail!(
                    "paged_attention: seq {s} needs {num_blocks} blocks, its table row has {width}"
                );
            }
            let blocks = &block_tables[s * width..s * width + num_blocks];
            if let Some(b) = blocks.iter().find(|&&b| b as usize >= dims.num_blocks) {
                bail!(
                    "paged_attention: seq {s} uses block {b}, the cache has {} blocks",
                    dims.num_blocks
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
        let (bt_storage, bt_l) = self.block_tables.storage_and_layout();
        let (cu_storage, cu_l) = self.cu_seqlens_q.storage_and_layout();
        let (sl_storage, sl_l) = self.seq_lens.storage_and_layout();
        let seqs = self.sequences(
            &dims,
            storage_slice(&bt_storage, bt_l, "block_tables")?,
            storage_slice(&cu_storage, cu_l, "cu_seqlens_q")?,
            storage_slice(&sl_storage, sl_l, "seq_lens")?,
        )?;
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

//! The CUDA path of [`crate::paged_attention`]: checks the step's metadata on the host (its
//! host copy: nothing is read back) once per step (the plan is kept in the metadata every
//! layer shares), takes the work lists the caller uploaded with the step
//! ([`crate::PagedAttentionMetadata::with_work_lists`]; else makes and uploads them) and
//! launches the kernels of kernels/paged_attention.cu.
//!
//! Which kernel serves a sequence:
//! - the tile kernel (tensor-core MMA, online softmax) for f16/bf16 with head_dim 64 or 128
//!   and more than `work_list::ROWS_MAX_Q` queries (prefill, chunked prefill), when q and
//!   the caches are 16-byte aligned;
//! - the row kernel (split-K over `work_list::PARTITION`-key partitions, then a reduce) for
//!   every other sequence: decode, short chunks, f32, other head sizes up to
//!   [`MAX_HEAD_DIM`].
//!
//! Both write disjoint rows of one output, zeroed only when rows past the last sequence
//! (padding) would otherwise stay unwritten, and each
//! sequence's result depends only on that sequence (batch invariance).

use super::{aligned16, as_u32, view};
use crate::attention_cpu::Dims;
use crate::paged_attention::PagedAttention;
use crate::work_list::WorkList;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use candle_core::cuda_backend::{CudaDType, DeviceId, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Query heads of one kv head that one row-kernel block serves.
const HEADS_PER_BLOCK: usize = 8;
/// Largest head_dim the row kernel takes.
const MAX_HEAD_DIM: usize = 256;
/// Threads per block of every attention kernel.
const THREADS: u32 = 128;

/// Shapes and scalars of every attention kernel; matches `wick::Geometry` in the .cu file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Geometry {
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    block_size: u32,
    table_width: u32,
    scale: f32,
    window: u32,
}

// SAFETY: plain `#[repr(C)]` data of u32/f32 fields, laid out as `wick::Geometry`.
unsafe impl DeviceRepr for Geometry {}

/// One step's work lists on the GPU, four u32 per item (see the .cu file).
struct Plan {
    /// `{token, seq, key_start, key_end}` per query row for the row kernel: u32
    /// `[num_rows * 4]`, uploaded with the step's metadata or by [`make_plan`].
    rows: Option<Tensor>,
    num_rows: u32,
    /// Most partitions any row needs (grid z of the row kernel).
    max_splits: u32,
    /// `{q_row0, seq, rows, pos0}` per tile for the tile kernel: u32 `[num_tiles * 4]`.
    tiles: Option<Tensor>,
    num_tiles: u32,
}

/// What a plan depends on besides the metadata it is kept in.
#[derive(Debug, Clone, PartialEq)]
struct PlanKey {
    device: DeviceId,
    dims: [usize; 6],
    window: Option<usize>,
    tiled: bool,
}

/// The plans made from one step's metadata, kept in it (shared by its clones, so by every
/// layer of the step) and dropped with it.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlanCache(Arc<Mutex<Vec<(PlanKey, Arc<Plan>)>>>);

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("num_rows", &self.num_rows)
            .field("num_tiles", &self.num_tiles)
            .finish()
    }
}

/// `cuda_fwd` of the paged attention op.
pub(crate) fn forward(
    op: &PagedAttention,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dims = Dims::from_layouts(q.1, k.1)?;
    if dims.head_dim > MAX_HEAD_DIM {
        bail!(
            "paged_attention: head_dim {} > {MAX_HEAD_DIM} is not supported on CUDA",
            dims.head_dim
        );
    }
    let dtype = q.0.dtype();
    let size = dtype.size_in_bytes();
    let tiled = dtype != DType::F32
        && matches!(dims.head_dim, 64 | 128)
        && [q.1, k.1, v.1].into_iter().all(|l| aligned16(l, size));
    let plan = plan(op, &dims, tiled, &q.0.device)?;
    let out = match dtype {
        DType::F32 => launch::<f32>("f32", op, &dims, &plan, q, k, v)?,
        DType::F16 => launch::<half::f16>("f16", op, &dims, &plan, q, k, v)?,
        DType::BF16 => launch::<half::bf16>("bf16", op, &dims, &plan, q, k, v)?,
        other => bail!("paged_attention: q must be f32, f16 or bf16, got {other:?}"),
    };
    Ok((out, q.1.shape().clone()))
}

/// The step's checked work lists: made by an earlier layer of the step, or now.
fn plan(
    op: &PagedAttention,
    dims: &Dims,
    tiled: bool,
    dev: &candle_core::CudaDevice,
) -> Result<Arc<Plan>> {
    let key = PlanKey {
        device: dev.id(),
        dims: [
            dims.num_tokens,
            dims.num_heads,
            dims.num_kv_heads,
            dims.head_dim,
            dims.num_blocks,
            dims.block_size,
        ],
        window: op.params.sliding_window,
        tiled,
    };
    let Ok(mut plans) = op.meta.plans.0.lock() else {
        bail!("paged_attention: the metadata's plan cache was poisoned");
    };
    if let Some((_, plan)) = plans.iter().find(|(k, _)| *k == key) {
        return Ok(plan.clone());
    }
    let plan = Arc::new(make_plan(op, dims, tiled, dev)?);
    plans.push((key, plan.clone()));
    Ok(plan)
}

/// Checks the metadata's host copy as the CPU path does; takes the step's uploaded work
/// lists, or makes and uploads them.
fn make_plan(
    op: &PagedAttention,
    dims: &Dims,
    tiled: bool,
    dev: &candle_core::CudaDevice,
) -> Result<Plan> {
    as_u32(dims.num_tokens, "num_tokens")?;
    as_u32(op.meta.max_seq_len(), "max_seq_len")?;
    let seqs = op.sequences(dims)?;
    if let Some(lists) = &op.meta.lists {
        // Made and uploaded with the step, for every layer: a layer with tiles takes the
        // short rows and the tiles, one without every row. The launch shapes depend only
        // on the step's shape.
        let (num_rows, num_tiles) = match tiled {
            true => (lists.short_rows, lists.num_tiles),
            false => (lists.num_rows, 0),
        };
        if lists.splits > u16::MAX as usize {
            bail!(
                "paged_attention: {} partitions are too many for CUDA",
                lists.splits
            );
        }
        return Ok(Plan {
            rows: (num_rows > 0)
                .then(|| lists.rows.narrow(0, 0, 4 * num_rows))
                .transpose()?,
            num_rows: as_u32(num_rows, "query rows")?,
            max_splits: as_u32(lists.splits, "partitions")?,
            tiles: (num_tiles > 0).then(|| lists.tiles.clone()),
            num_tiles: as_u32(num_tiles, "query tiles")?,
        });
    }
    let list = WorkList::new(&seqs, &op.params, tiled);
    let max_splits = list.max_splits;
    if max_splits > u16::MAX as usize {
        bail!(
            "paged_attention: a context of {} keys is too long for CUDA",
            op.meta.max_seq_len()
        );
    }
    // Every value is at most num_tokens, num_seqs or max_seq_len, checked to fit in u32.
    let flat =
        |items: &[[usize; 4]]| -> Vec<u32> { items.iter().flatten().map(|&x| x as u32).collect() };
    let rows = match list.rows.is_empty() {
        true => None,
        false => {
            let device = candle_core::Device::Cuda(dev.clone());
            Some(Tensor::from_vec(
                flat(&list.rows),
                list.rows.len() * 4,
                &device,
            )?)
        }
    };
    let tiles = match list.tiles.is_empty() {
        true => None,
        false => {
            let device = candle_core::Device::Cuda(dev.clone());
            Some(Tensor::from_vec(
                flat(&list.tiles),
                list.tiles.len() * 4,
                &device,
            )?)
        }
    };
    Ok(Plan {
        num_rows: as_u32(list.rows.len(), "query rows")?,
        num_tiles: as_u32(list.tiles.len(), "query tiles")?,
        max_splits: max_splits as u32,
        rows,
        tiles,
    })
}

/// Runs the plan's kernels; returns the output they fill (padding rows zero).
fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
    name: &str,
    op: &PagedAttention,
    dims: &Dims,
    plan: &Plan,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = q.0.device.clone();
    let qv = view::<T>(q.0, q.1, "q")?;
    let kv = view::<T>(k.0, k.1, "key_cache")?;
    let vv = view::<T>(v.0, v.1, "value_cache")?;
    let table_t = op.meta.block_tables_tensor();
    let (table_storage, table_l) = table_t.storage_and_layout();
    let Storage::Cuda(table_storage) = &*table_storage else {
        bail!("paged_attention: block_tables must be on the GPU like q");
    };
    let table = view::<u32>(table_storage, table_l, "block_tables")?;
    let geo = Geometry {
        num_heads: as_u32(dims.num_heads, "num_heads")?,
        num_kv_heads: as_u32(dims.num_kv_heads, "num_kv_heads")?,
        head_dim: as_u32(dims.head_dim, "head_dim")?,
        block_size: as_u32(dims.block_size, "block_size")?,
        table_width: as_u32(table_t.dim(1)?, "block table width")?,
        scale: op.params.softmax_scale,
        window: match op.params.sliding_window {
            Some(w) => as_u32(w, "sliding_window")?,
            None => 0,
        },
    };
    let out_len = dims.num_tokens * dims.num_heads * dims.head_dim;
    let covered = op.meta.cu_seqlens_q().last().map_or(0, |&e| e as usize);
    let mut out = if covered == dims.num_tokens {
        // SAFETY: uninitialised, but every row belongs to a sequence (the last sequence
        // ends at the last row), and the kernels write every (row, head) of every sequence.
        unsafe { dev.alloc::<T>(out_len)? }
    } else {
        // Padding rows past the last sequence must read as zeros.
        dev.alloc_zeros::<T>(out_len)?
    };
    let block = (THREADS, 1, 1);

    if let Some(rows) = &plan.rows {
        let (rows_storage, rows_l) = rows.storage_and_layout();
        let Storage::Cuda(rows_storage) = &*rows_storage else {
            bail!("paged_attention: row items must be on the GPU like q");
        };
        let items = &view::<u32>(rows_storage, rows_l, "row items")?;
        let splits = plan.max_splits as usize;
        let parts = if splits > 1 {
            plan.num_rows as usize * dims.num_heads * splits
        } else {
            1 // unused, but the kernel takes a valid pointer
        };
        // SAFETY: uninitialised f32 buffers; the row kernel writes every (row, head,
        // partition) entry that the reduce kernel reads (partitions below the row's count).
        let (mut part_out, mut part_ml) = unsafe {
            (
                dev.alloc::<f32>(parts * dims.head_dim)?,
                dev.alloc::<f32>(parts * 2)?,
            )
        };
        let subgroups = dims.num_heads / dims.num_kv_heads;
        let subgroups = subgroups.div_ceil(HEADS_PER_BLOCK);
        let func = super::kernel(
            &dev,
            &super::PAGED_ATTENTION,
            &format!("wick_pa_rows_{name}"),
        )?;
        let cfg = LaunchConfig {
            grid_dim: (
                plan.num_rows,
                as_u32(dims.num_kv_heads * subgroups, "kv head blocks")?,
                plan.max_splits,
            ),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        {
            let mut b = func.builder();
            b.arg(&mut out);
            b.arg(&mut part_out);
            b.arg(&mut part_ml);
            b.arg(&qv);
            b.arg(&kv);
            b.arg(&vv);
            b.arg(&table);
            b.arg(items);
            b.arg(&plan.max_splits);
            b.arg(&geo);
            // SAFETY: arguments match `wick_pa_rows_*`; every row item was built from
            // checked metadata (its keys lie within its sequence's checked blocks, its token
            // within q), and the buffers have the sizes the grid indexes.
            unsafe { b.launch(cfg) }.w()?;
        }
        if splits > 1 {
            let func = super::kernel(
                &dev,
                &super::PAGED_ATTENTION,
                &format!("wick_pa_reduce_{name}"),
            )?;
            let cfg = LaunchConfig {
                grid_dim: (plan.num_rows, geo.num_heads, 1),
                block_dim: block,
                shared_mem_bytes: 0,
            };
            let mut b = func.builder();
            b.arg(&mut out);
            b.arg(&part_out);
            b.arg(&part_ml);
            b.arg(items);
            b.arg(&plan.max_splits);
            b.arg(&geo.num_heads);
            b.arg(&geo.head_dim);
            b.arg(&geo.window);
            // SAFETY: arguments match `wick_pa_reduce_*`; it reads the partials the row
            // kernel above wrote, on the same stream.
            unsafe { b.launch(cfg) }.w()?;
        }
    }

    if let Some(tiles) = &plan.tiles {
        let (tiles_storage, tiles_l) = tiles.storage_and_layout();
        let Storage::Cuda(tiles_storage) = &*tiles_storage else {
            bail!("paged_attention: tiles must be on the GPU like q");
        };
        let items = &view::<u32>(tiles_storage, tiles_l, "tiles")?;
        let func = super::kernel(
            &dev,
            &super::PAGED_ATTENTION,
            &format!("wick_pa_tile_{name}_hd{}", dims.head_dim),
        )?;
        let cfg = LaunchConfig {
            grid_dim: (plan.num_tiles, geo.num_heads, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&mut out);
        b.arg(&qv);
        b.arg(&kv);
        b.arg(&vv);
        b.arg(&table);
        b.arg(items);
        b.arg(&geo);
        // SAFETY: arguments match `wick_pa_tile_*_hd*` for this dtype and head_dim; tiles
        // come only from checked metadata, and `forward` chose tiles only for 16-byte
        // aligned q and caches.
        unsafe { b.launch(cfg) }.w()?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

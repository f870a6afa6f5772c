//! The CUDA path of [`crate::lora_apply`]: launches the shrink and expand kernels of
//! kernels/lora.cu over the [`crate::LoraBatch`]'s device tables (each token's slot, each
//! slot's rank). Nothing is copied to or from the host, so a step using it can be captured
//! as a CUDA graph; the grids depend on the shapes only.
//!
//! The public function has checked shapes, dtypes and devices; the kernels read a slot
//! outside the stacks as no adapter and a rank above the stacks' as theirs. Sizes are
//! checked here to fit the kernels' u32 arithmetic and grid limits.

use super::{as_u32, view};
use crate::lora::LoraApply;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, Storage};

/// Threads per block of both kernels (four warps).
const THREADS: u32 = 128;
/// Warps per block; each shrink warp computes one (token, k).
const WARPS: u32 = THREADS / 32;
/// Largest grid y dimension CUDA allows.
const MAX_GRID_Y: usize = 65_535;

/// Shapes of one application; matches `wick::LoraGeometry` in the .cu file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Geometry {
    num_tokens: u32,
    in_dim: u32,
    out_dim: u32,
    num_slots: u32,
    max_rank: u32,
}

// SAFETY: plain `#[repr(C)]` data of u32 fields, laid out as `wick::LoraGeometry`.
unsafe impl DeviceRepr for Geometry {}

/// `cuda_fwd` of the LoRA op: (x, a, b) -> y + delta.
pub(crate) fn forward(
    op: &LoraApply<'_>,
    x: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let out = match x.0.dtype() {
        DType::F32 => launch::<f32>("f32", op, x, a, b)?,
        DType::F16 => launch::<half::f16>("f16", op, x, a, b)?,
        DType::BF16 => launch::<half::bf16>("bf16", op, x, a, b)?,
        other => bail!("lora_apply: x must be f32, f16 or bf16, got {other:?}"),
    };
    Ok((out, op.y.shape().clone()))
}

/// Runs shrink then expand; returns the output, every element of which expand writes.
fn launch<T: CudaDType + DeviceRepr>(
    name: &str,
    op: &LoraApply<'_>,
    x: (&CudaStorage, &Layout),
    a: (&CudaStorage, &Layout),
    b: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let d = op.dims;
    let Some((slots, ranks)) = op.batch.tables() else {
        bail!("lora_apply: the LoraBatch holds no GPU tables (built for the CPU?)");
    };
    let sizes = [
        (x.1, d.num_tokens * d.in_dim, "x"),
        (a.1, d.num_slots * d.max_rank * d.in_dim, "a"),
        (b.1, d.num_slots * d.out_dim * d.max_rank, "b"),
        (op.y.layout(), d.num_tokens * d.out_dim, "y"),
        (slots.layout(), d.num_tokens, "the slot table"),
        (ranks.layout(), d.num_slots, "the rank table"),
    ];
    for (layout, want, what) in sizes {
        if layout.shape().elem_count() != want {
            bail!("lora_apply: {what} has a size other than the shapes checked");
        }
    }
    let geo = Geometry {
        num_tokens: as_u32(d.num_tokens, "num_tokens")?,
        in_dim: as_u32(d.in_dim, "in")?,
        out_dim: as_u32(d.out_dim, "out")?,
        num_slots: as_u32(d.num_slots, "slots")?,
        max_rank: as_u32(d.max_rank, "max_rank")?,
    };
    let out_blocks = d.out_dim.div_ceil(THREADS as usize);
    let rank_blocks = d.max_rank.div_ceil(WARPS as usize);
    if out_blocks > MAX_GRID_Y || rank_blocks > MAX_GRID_Y {
        bail!(
            "lora_apply: out = {} or max_rank = {} is too large for the CUDA kernels",
            d.out_dim,
            d.max_rank
        );
    }
    if d.num_tokens == 0 || d.out_dim == 0 || d.max_rank == 0 {
        bail!("lora_apply: empty application reached the CUDA kernels");
    }

    let dev = x.0.device.clone();
    let xv = view::<T>(x.0, x.1, "x")?;
    let av = view::<T>(a.0, a.1, "a")?;
    let bv = view::<T>(b.0, b.1, "b")?;
    let (y_storage, y_l) = op.y.storage_and_layout();
    let Storage::Cuda(y_storage) = &*y_storage else {
        bail!("lora_apply: y must be on the GPU like x");
    };
    let yv = view::<T>(y_storage, y_l, "y")?;
    let (slots_storage, slots_l) = slots.storage_and_layout();
    let (ranks_storage, ranks_l) = ranks.storage_and_layout();
    let (Storage::Cuda(slots_storage), Storage::Cuda(ranks_storage)) =
        (&*slots_storage, &*ranks_storage)
    else {
        bail!("lora_apply: the LoraBatch's tables must be on the GPU like x");
    };
    let sv = view::<u32>(slots_storage, slots_l, "the slot table")?;
    let rv = view::<u32>(ranks_storage, ranks_l, "the rank table")?;

    let mut h = dev.alloc_zeros::<f32>(d.num_tokens * d.max_rank)?;
    // SAFETY: uninitialised, but the expand kernel's grid covers every (token, o) and each
    // thread writes its element on every path.
    let mut out = unsafe { dev.alloc::<T>(d.num_tokens * d.out_dim)? };
    {
        let func = super::kernel(&dev, &super::LORA, &format!("wick_lora_shrink_{name}"))?;
        let cfg = LaunchConfig {
            grid_dim: (geo.num_tokens, rank_blocks as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut builder = func.builder();
        builder.arg(&mut h);
        builder.arg(&xv);
        builder.arg(&av);
        builder.arg(&sv);
        builder.arg(&rv);
        builder.arg(&geo);
        // SAFETY: the arguments match `wick_lora_shrink_{name}` for element type T; `h` holds
        // num_tokens * max_rank f32, x, a and the tables have the sizes checked above, and
        // the kernel skips slots outside num_slots and reads at most max_rank rows.
        unsafe { builder.launch(cfg) }.w()?;
    }
    let func = super::kernel(&dev, &super::LORA, &format!("wick_lora_expand_{name}"))?;
    let cfg = LaunchConfig {
        grid_dim: (geo.num_tokens, out_blocks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&mut out);
    builder.arg(&yv);
    builder.arg(&h);
    builder.arg(&bv);
    builder.arg(&sv);
    builder.arg(&rv);
    builder.arg(&geo);
    // SAFETY: the arguments match `wick_lora_expand_{name}` for element type T; `out` and y
    // hold num_tokens * out_dim elements, b and the tables the sizes checked above; it reads
    // the h entries the shrink kernel wrote before it on the same stream.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

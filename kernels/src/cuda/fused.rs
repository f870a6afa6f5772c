//! The CUDA path of the fused layer ops ([`crate::add_rms_norm`], [`crate::silu_mul`],
//! [`crate::qkv_rotary`]): launches of kernels/fused.cu. The public functions checked
//! shapes, dtypes and devices; sizes are checked here against the storages and the
//! kernels' u32 arithmetic. Every output element is written by the kernels, so outputs are
//! allocated uninitialised.

use super::{as_u32, view};
use crate::fused::{AddRmsNorm, QkvRotary, SiluMul};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape, Storage};

/// Threads per block of the norm and SiLU kernels.
const THREADS: u32 = 256;
/// Warps per block of the q/k/v kernel (one (token, head) each).
const QKV_WARPS: u32 = 4;
/// Largest grid y dimension CUDA allows.
const MAX_GRID_Y: usize = 65_535;

/// Shapes of a q/k/v row; matches `wick::QkvGeometry` in the .cu file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct QkvGeometry {
    tokens: u32,
    num_heads: u32,
    num_kv_heads: u32,
    head_dim: u32,
    eps: f32,
    norm: u32,
}

// SAFETY: plain `#[repr(C)]` data of 4-byte fields, laid out as `wick::QkvGeometry`.
unsafe impl DeviceRepr for QkvGeometry {}

/// The kernel-name suffix of a dtype.
fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => bail!("{op}: inputs must be f32, f16 or bf16, got {other:?}"),
    })
}

/// Fails unless `layout` has `want` elements.
fn check_size(layout: &Layout, want: usize, op: &str, what: &str) -> Result<()> {
    if layout.shape().elem_count() != want {
        bail!("{op}: {what} has a size other than the shapes checked");
    }
    Ok(())
}

pub(crate) fn add_rms_norm(
    op: &AddRmsNorm,
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let out = match x.0.dtype() {
        DType::F32 => add_rms_norm_t::<f32>(op, x, r, w)?,
        DType::F16 => add_rms_norm_t::<half::f16>(op, x, r, w)?,
        DType::BF16 => add_rms_norm_t::<half::bf16>(op, x, r, w)?,
        other => bail!("add_rms_norm: x must be f32, f16 or bf16, got {other:?}"),
    };
    Ok((out, Shape::from((2, op.tokens, op.hidden))))
}

fn add_rms_norm_t<T: CudaDType + DeviceRepr>(
    op: &AddRmsNorm,
    x: (&CudaStorage, &Layout),
    r: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (n, h) = (op.tokens, op.hidden);
    check_size(x.1, n * h, "add_rms_norm", "x")?;
    check_size(r.1, n * h, "add_rms_norm", "residual")?;
    check_size(w.1, h, "add_rms_norm", "weight")?;
    let dev = x.0.device.clone();
    // SAFETY: uninitialised; the kernel's grid covers every token and its block writes
    // both the sum and the normalised row, every element of each.
    let mut out = unsafe { dev.alloc::<T>(2 * n * h)? };
    if n == 0 || h == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let name = suffix(x.0.dtype(), "add_rms_norm")?;
    let func = super::kernel(&dev, &super::FUSED, &format!("wick_add_rms_norm_{name}"))?;
    let (xv, rv, wv) = (
        view::<T>(x.0, x.1, "x")?,
        view::<T>(r.0, r.1, "residual")?,
        view::<T>(w.0, w.1, "weight")?,
    );
    let (tokens, hidden) = (as_u32(n, "tokens")?, as_u32(h, "hidden")?);
    let cfg = LaunchConfig {
        grid_dim: (tokens, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&mut out);
    builder.arg(&xv);
    builder.arg(&rv);
    builder.arg(&wv);
    builder.arg(&tokens);
    builder.arg(&hidden);
    builder.arg(&op.eps);
    // SAFETY: the arguments match `wick_add_rms_norm_{name}` for element type T; `out`
    // holds 2 * tokens * hidden elements, x and residual tokens * hidden, weight hidden.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub(crate) fn silu_mul(op: &SiluMul, gu: (&CudaStorage, &Layout)) -> Result<(CudaStorage, Shape)> {
    let out = match gu.0.dtype() {
        DType::F32 => silu_mul_t::<f32>(op, gu)?,
        DType::F16 => silu_mul_t::<half::f16>(op, gu)?,
        DType::BF16 => silu_mul_t::<half::bf16>(op, gu)?,
        other => bail!("silu_mul: gate_up must be f32, f16 or bf16, got {other:?}"),
    };
    Ok((out, Shape::from((op.tokens, op.inner))))
}

fn silu_mul_t<T: CudaDType + DeviceRepr>(
    op: &SiluMul,
    gu: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let (n, inner) = (op.tokens, op.inner);
    check_size(gu.1, n * 2 * inner, "silu_mul", "gate_up")?;
    let dev = gu.0.device.clone();
    // SAFETY: uninitialised; the grid covers every (token, j) and each thread writes its
    // element.
    let mut out = unsafe { dev.alloc::<T>(n * inner)? };
    if n == 0 || inner == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let blocks = inner.div_ceil(THREADS as usize);
    if blocks > MAX_GRID_Y {
        bail!("silu_mul: inner = {inner} is too large for the CUDA kernel");
    }
    let name = suffix(gu.0.dtype(), "silu_mul")?;
    let func = super::kernel(&dev, &super::FUSED, &format!("wick_silu_mul_{name}"))?;
    let guv = view::<T>(gu.0, gu.1, "gate_up")?;
    let (tokens, inner32) = (as_u32(n, "tokens")?, as_u32(inner, "inner")?);
    let cfg = LaunchConfig {
        grid_dim: (tokens, blocks as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&mut out);
    builder.arg(&guv);
    builder.arg(&tokens);
    builder.arg(&inner32);
    // SAFETY: the arguments match `wick_silu_mul_{name}` for element type T; `out` holds
    // tokens * inner elements, gate_up tokens * 2 * inner.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

pub(crate) fn qkv_rotary(
    op: &QkvRotary,
    qkv: (&CudaStorage, &Layout),
    cos: (&CudaStorage, &Layout),
    sin: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let out = match qkv.0.dtype() {
        DType::F32 => qkv_rotary_t::<f32>(op, qkv, cos, sin)?,
        DType::F16 => qkv_rotary_t::<half::f16>(op, qkv, cos, sin)?,
        DType::BF16 => qkv_rotary_t::<half::bf16>(op, qkv, cos, sin)?,
        other => bail!("qkv_rotary: qkv must be f32, f16 or bf16, got {other:?}"),
    };
    let h = op.heads;
    let total = h.num_heads + 2 * h.num_kv_heads;
    Ok((out, Shape::from(op.tokens * total * h.head_dim)))
}

fn qkv_rotary_t<T: CudaDType + DeviceRepr>(
    op: &QkvRotary,
    qkv: (&CudaStorage, &Layout),
    cos: (&CudaStorage, &Layout),
    sin: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let h = op.heads;
    let (n, d) = (op.tokens, h.head_dim);
    let total = h.num_heads + 2 * h.num_kv_heads;
    check_size(qkv.1, n * total * d, "qkv_rotary", "qkv")?;
    check_size(cos.1, n * d / 2, "qkv_rotary", "cos")?;
    check_size(sin.1, n * d / 2, "qkv_rotary", "sin")?;
    let dev = qkv.0.device.clone();
    // SAFETY: uninitialised; the grid covers every (token, head) and each warp writes its
    // head's d elements at the head's place, the places tiling the output.
    let mut out = unsafe { dev.alloc::<T>(n * total * d)? };
    if n == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let blocks = total.div_ceil(QKV_WARPS as usize);
    if blocks > MAX_GRID_Y {
        bail!("qkv_rotary: {total} heads is too many for the CUDA kernel");
    }
    let name = suffix(qkv.0.dtype(), "qkv_rotary")?;
    let func = super::kernel(&dev, &super::FUSED, &format!("wick_qkv_rotary_{name}"))?;
    let geo = QkvGeometry {
        tokens: as_u32(n, "tokens")?,
        num_heads: as_u32(h.num_heads, "num_heads")?,
        num_kv_heads: as_u32(h.num_kv_heads, "num_kv_heads")?,
        head_dim: as_u32(d, "head_dim")?,
        eps: op.norm.as_ref().map_or(0.0, |n| n.eps),
        norm: u32::from(op.norm.is_some()),
    };
    let qkv_v = view::<T>(qkv.0, qkv.1, "qkv")?;
    let cos_v = view::<T>(cos.0, cos.1, "cos")?;
    let sin_v = view::<T>(sin.0, sin.1, "sin")?;
    let cfg = LaunchConfig {
        grid_dim: (geo.tokens, blocks as u32, 1),
        block_dim: (QKV_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    };
    let guards = op.norm.as_ref().map(|n| {
        (
            n.q_weight.storage_and_layout(),
            n.k_weight.storage_and_layout(),
        )
    });
    let (q_w, k_w) = match &guards {
        // Not read (`geo.norm` is 0), but the kernel takes valid pointers.
        None => (
            view::<T>(qkv.0, qkv.1, "qkv")?,
            view::<T>(qkv.0, qkv.1, "qkv")?,
        ),
        Some(((qs, ql), (ks, kl))) => {
            let (Storage::Cuda(qs), Storage::Cuda(ks)) = (&**qs, &**ks) else {
                bail!("qkv_rotary: the q/k norm weights must be on the GPU like qkv");
            };
            check_size(ql, d, "qkv_rotary", "the q norm weight")?;
            check_size(kl, d, "qkv_rotary", "the k norm weight")?;
            (view::<T>(qs, ql, "q norm")?, view::<T>(ks, kl, "k norm")?)
        }
    };
    let mut builder = func.builder();
    builder.arg(&mut out);
    builder.arg(&qkv_v);
    builder.arg(&cos_v);
    builder.arg(&sin_v);
    builder.arg(&q_w);
    builder.arg(&k_w);
    builder.arg(&geo);
    // SAFETY: the arguments match `wick_qkv_rotary_{name}` for element type T; `out` holds
    // tokens * heads * head_dim elements as does qkv, cos and sin tokens * head_dim / 2;
    // the norm weights hold head_dim each and are read only when `geo.norm` is 1 (else
    // they point at qkv).
    unsafe { builder.launch(cfg) }.w()?;
    drop(builder);
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

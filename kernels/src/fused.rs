//! The small fused ops of a decoder layer, each one pass over its data where the unfused
//! model needed several:
//!
//! - [`add_rms_norm`]: the residual addition and the RMSNorm after it, returning both the
//!   new residual stream and its normalised copy;
//! - [`silu_mul`]: `silu(gate) * up` from the fused gate/up projection's output;
//! - [`qkv_rotary`]: from the fused q/k/v projection's output, the optional per-head RMSNorm
//!   of queries and keys (Qwen3), the rotary embedding of both, and the split into
//!   contiguous queries and stacked keys/values (the layout the cache write takes).
//!
//! Numerics are those of Hugging Face's modules in the storage dtype: arithmetic in f32, a
//! result rounded to the dtype where transformers holds one in it (the residual sum; the
//! normalised value before the weight multiplies it), once per element otherwise. In f32
//! every rounding is exact, so the CPU twin equals the unfused candle path up to the order
//! of the sum of squares.
//!
//! Each op checks shapes, dtypes and devices here (errors, never panics); the CPU twin is
//! in this file, the CUDA kernels in kernels/fused.cu (launched from `cuda::fused`). Rows
//! are independent: a row's result depends only on that row (batch invariance).

use crate::cpu_util::{contiguous_slice, is_float, storage_slice, Elem};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements below which the CPU twin runs on one thread (a decode step's few rows).
const PARALLEL_MIN: usize = 1 << 16;

/// `x + residual` and its RMSNorm: returns `(sum, normed)`, both `[tokens, hidden]` in the
/// input dtype, where `sum = round(x + residual)` and
/// `normed = round(round(sum * rsqrt(mean(sum^2) + eps)) * weight)`.
///
/// `x`, `residual`: `[tokens, hidden]`; `weight`: `[hidden]`; one float dtype and device.
/// Inputs need not be contiguous. Both outputs are contiguous views of one `[2, tokens,
/// hidden]` allocation (one kernel writes both).
pub fn add_rms_norm(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (tokens, hidden) = x.dims2().map_err(|_| {
        candle_core::Error::msg(format!(
            "add_rms_norm: x must be [tokens, hidden], got {:?}",
            x.dims()
        ))
    })?;
    if residual.dims() != x.dims() {
        bail!(
            "add_rms_norm: residual {:?} differs from x {:?}",
            residual.dims(),
            x.dims()
        );
    }
    if weight.dims() != [hidden] {
        bail!(
            "add_rms_norm: weight must be [{hidden}], got {:?}",
            weight.dims()
        );
    }
    same_float("add_rms_norm", &[x, residual, weight])?;
    if !(eps.is_finite() && eps >= 0.0) {
        bail!("add_rms_norm: eps must be finite and non-negative, got {eps}");
    }
    let op = AddRmsNorm {
        tokens,
        hidden,
        eps,
    };
    let both =
        x.contiguous()?
            .apply_op3_no_bwd(&residual.contiguous()?, &weight.contiguous()?, &op)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// `silu(gate) * up` for `gate_up = [gate | up]` of shape `[tokens, 2 * inner]` (the fused
/// gate/up projection's output); returns `[tokens, inner]`, rounded once.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (tokens, width) = gate_up.dims2().map_err(|_| {
        candle_core::Error::msg(format!(
            "silu_mul: gate_up must be [tokens, 2 * inner], got {:?}",
            gate_up.dims()
        ))
    })?;
    if width % 2 != 0 {
        bail!("silu_mul: gate_up's width {width} is odd; it must be [gate | up]");
    }
    same_float("silu_mul", &[gate_up])?;
    let op = SiluMul {
        tokens,
        inner: width / 2,
    };
    gate_up.contiguous()?.apply_op1_no_bwd(&op)
}

/// Heads of a fused q/k/v projection's output row: `num_heads` query heads, then
/// `num_kv_heads` key heads, then as many value heads, each `head_dim` wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvHeads {
    /// Query heads.
    pub num_heads: usize,
    /// Key heads (and as many value heads).
    pub num_kv_heads: usize,
    /// Width of every head.
    pub head_dim: usize,
}

impl QkvHeads {
    /// Heads in one row (queries, keys and values).
    fn total(&self) -> usize {
        self.num_heads + 2 * self.num_kv_heads
    }
}

/// Per-head RMSNorm of queries and keys before the rotary embedding (Qwen3): `[head_dim]`
/// weights for queries and for keys, and epsilon.
#[derive(Debug, Clone)]
pub struct QkNorm {
    /// `[head_dim]`, for every query head.
    pub q_weight: Tensor,
    /// `[head_dim]`, for every key head.
    pub k_weight: Tensor,
    /// Added to the mean square.
    pub eps: f32,
}

/// Queries and keys/values split out of a fused q/k/v row, rotated.
#[derive(Debug, Clone)]
pub struct RotatedQkv {
    /// `[tokens, num_heads, head_dim]`, contiguous.
    pub q: Tensor,
    /// `[2, tokens, num_kv_heads, head_dim]` (keys, then values), contiguous: what
    /// [`crate::reshape_and_cache`] writes.
    pub kv: Tensor,
}

/// From `qkv` (`[tokens, (num_heads + 2 * num_kv_heads) * head_dim]`, the fused
/// projection's output): each query and key head normalised by `qk_norm` if given (as
/// [`add_rms_norm`] normalises, without the addition), then rotated by the rotary embedding
/// in its rotate-half form (`cos`, `sin`: `[tokens, head_dim / 2]`, the rows of each
/// token's position); value heads copied. All in one pass, one rounding per element.
pub fn qkv_rotary(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: QkvHeads,
    qk_norm: Option<&QkNorm>,
) -> Result<RotatedQkv> {
    let QkvHeads {
        num_heads,
        num_kv_heads,
        head_dim,
    } = heads;
    if num_heads == 0 || num_kv_heads == 0 || head_dim == 0 || head_dim % 2 != 0 {
        bail!("qkv_rotary: heads {heads:?} need positive counts and an even head_dim");
    }
    let width = heads.total() * head_dim;
    let tokens = match qkv.dims2() {
        Ok((t, w)) if w == width => t,
        _ => bail!(
            "qkv_rotary: qkv must be [tokens, {width}] for {heads:?}, got {:?}",
            qkv.dims()
        ),
    };
    for (what, t) in [("cos", cos), ("sin", sin)] {
        if t.dims() != [tokens, head_dim / 2] {
            bail!(
                "qkv_rotary: {what} must be [{tokens}, {}], got {:?}",
                head_dim / 2,
                t.dims()
            );
        }
    }
    let mut all = vec![qkv, cos, sin];
    if let Some(n) = qk_norm {
        for (what, w) in [("q", &n.q_weight), ("k", &n.k_weight)] {
            if w.dims() != [head_dim] {
                bail!(
                    "qkv_rotary: the {what} norm weight must be [{head_dim}], got {:?}",
                    w.dims()
                );
            }
        }
        if !(n.eps.is_finite() && n.eps >= 0.0) {
            bail!(
                "qkv_rotary: eps must be finite and non-negative, got {}",
                n.eps
            );
        }
        all.extend([&n.q_weight, &n.k_weight]);
    }
    same_float("qkv_rotary", &all)?;
    let op = QkvRotary {
        tokens,
        heads,
        norm: match qk_norm {
            Some(n) => Some(QkNorm {
                q_weight: n.q_weight.contiguous()?,
                k_weight: n.k_weight.contiguous()?,
                eps: n.eps,
            }),
            None => None,
        },
    };
    let flat = qkv
        .contiguous()?
        .apply_op3_no_bwd(&cos.contiguous()?, &sin.contiguous()?, &op)?;
    let q_len = tokens * num_heads * head_dim;
    let kv_len = 2 * tokens * num_kv_heads * head_dim;
    Ok(RotatedQkv {
        q: flat
            .narrow(0, 0, q_len)?
            .reshape((tokens, num_heads, head_dim))?,
        kv: flat
            .narrow(0, q_len, kv_len)?
            .reshape((2, tokens, num_kv_heads, head_dim))?,
    })
}

/// Checks that every tensor has one float dtype (f32, f16, bf16) and one device.
fn same_float(op: &str, ts: &[&Tensor]) -> Result<()> {
    let first = ts[0];
    if !is_float(first.dtype()) {
        bail!(
            "{op}: inputs must be f32, f16 or bf16, got {:?}",
            first.dtype()
        );
    }
    for t in &ts[1..] {
        if t.dtype() != first.dtype() {
            bail!(
                "{op}: inputs must share one dtype, got {:?} and {:?}",
                first.dtype(),
                t.dtype()
            );
        }
        if !t.device().same_device(first.device()) {
            bail!("{op}: inputs must be on one device");
        }
    }
    Ok(())
}

/// `1 / sqrt(mean(x^2) + eps)` of one row, the sum of squares in f32 in order.
#[inline]
fn inv_rms<T: Elem>(row: &[T], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v.into_f32() * v.into_f32()).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

/// `round(round(x * inv) * w)`: a normalised element times its weight, rounded as
/// transformers' RMSNorm rounds.
#[inline]
fn scaled<T: Elem>(x: f32, inv: f32, w: T) -> f32 {
    T::from_f32(x * inv).into_f32() * w.into_f32()
}

/// Runs `f(row_index, out_row)` over `out`'s rows of `row_len`, in parallel when large.
fn for_rows<T: Elem>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    }
}

/// Storage of a CPU result from a typed vector.
fn cpu_storage<T: Elem>(v: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(v)
}

/// The fused add + RMSNorm op: (x, residual, weight) -> `[2, tokens, hidden]`.
pub(crate) struct AddRmsNorm {
    pub tokens: usize,
    pub hidden: usize,
    pub eps: f32,
}

impl AddRmsNorm {
    fn cpu<T: Elem>(&self, x: &[T], r: &[T], w: &[T]) -> Vec<T> {
        let h = self.hidden;
        let mut out = vec![T::from_f32(0.0); 2 * self.tokens * h];
        if h == 0 {
            return out;
        }
        let (sum, normed) = out.split_at_mut(self.tokens * h);
        for_rows(sum, h, |i, s| {
            for ((d, a), b) in s.iter_mut().zip(&x[i * h..]).zip(&r[i * h..]) {
                *d = T::from_f32(a.into_f32() + b.into_f32());
            }
        });
        let sum = &*sum;
        for_rows(normed, h, |i, n| {
            let s = &sum[i * h..(i + 1) * h];
            let inv = inv_rms(s, self.eps);
            for ((d, v), wt) in n.iter_mut().zip(s).zip(w) {
                *d = T::from_f32(scaled(v.into_f32(), inv, *wt));
            }
        });
        out
    }
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "wick_add_rms_norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        r: &CpuStorage,
        r_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        macro_rules! go {
            ($t:ty) => {{
                let x = contiguous_slice::<$t>(x, x_l, "x")?;
                let r = contiguous_slice::<$t>(r, r_l, "residual")?;
                let w = contiguous_slice::<$t>(w, w_l, "weight")?;
                cpu_storage(self.cpu(x, r, w))
            }};
        }
        let out = match x {
            CpuStorage::F32(_) => go!(f32),
            CpuStorage::F16(_) => go!(half::f16),
            CpuStorage::BF16(_) => go!(half::bf16),
            _ => bail!("add_rms_norm: x must be f32, f16 or bf16"),
        };
        Ok((out, Shape::from((2, self.tokens, self.hidden))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        r: &candle_core::CudaStorage,
        r_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fused::add_rms_norm(self, (x, x_l), (r, r_l), (w, w_l))
    }
}

/// The fused SiLU * up op: `[tokens, 2 * inner]` -> `[tokens, inner]`.
pub(crate) struct SiluMul {
    pub tokens: usize,
    pub inner: usize,
}

/// `silu(g) * u` in f32.
#[inline]
fn silu_times(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

impl SiluMul {
    fn cpu<T: Elem>(&self, gu: &[T]) -> Vec<T> {
        let n = self.inner;
        let mut out = vec![T::from_f32(0.0); self.tokens * n];
        if n == 0 {
            return out;
        }
        for_rows(&mut out, n, |i, o| {
            let (gate, up) = gu[i * 2 * n..(i + 1) * 2 * n].split_at(n);
            for ((d, g), u) in o.iter_mut().zip(gate).zip(up) {
                *d = T::from_f32(silu_times(g.into_f32(), u.into_f32()));
            }
        });
        out
    }
}

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "wick_silu_mul"
    }

    fn cpu_fwd(&self, gu: &CpuStorage, gu_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match gu {
            CpuStorage::F32(_) => {
                cpu_storage(self.cpu(contiguous_slice::<f32>(gu, gu_l, "gate_up")?))
            }
            CpuStorage::F16(_) => {
                cpu_storage(self.cpu(contiguous_slice::<half::f16>(gu, gu_l, "gate_up")?))
            }
            CpuStorage::BF16(_) => {
                cpu_storage(self.cpu(contiguous_slice::<half::bf16>(gu, gu_l, "gate_up")?))
            }
            _ => bail!("silu_mul: gate_up must be f32, f16 or bf16"),
        };
        Ok((out, Shape::from((self.tokens, self.inner))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gu: &candle_core::CudaStorage,
        gu_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fused::silu_mul(self, (gu, gu_l))
    }
}

/// The fused q/k norm + rotary + split op: (qkv, cos, sin) -> flat
/// `[q (tokens * num_heads * head_dim) | k | v (tokens * num_kv_heads * head_dim each)]`.
pub(crate) struct QkvRotary {
    pub tokens: usize,
    pub heads: QkvHeads,
    pub norm: Option<QkNorm>,
}

impl QkvRotary {
    /// Where head `h` of token `t` goes in the flat output.
    pub(crate) fn out_offset(&self, t: usize, h: usize) -> usize {
        let QkvHeads {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        } = self.heads;
        let n = self.tokens;
        if h < nh {
            (t * nh + h) * d
        } else if h < nh + nkv {
            n * nh * d + (t * nkv + h - nh) * d
        } else {
            n * (nh + nkv) * d + (t * nkv + h - nh - nkv) * d
        }
    }

    fn cpu<T: Elem>(&self, qkv: &[T], cos: &[T], sin: &[T], norm: Option<(&[T], &[T])>) -> Vec<T> {
        let QkvHeads {
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        } = self.heads;
        let (total, half) = (self.heads.total(), d / 2);
        let eps = self.norm.as_ref().map_or(0.0, |n| n.eps);
        let mut out = vec![T::from_f32(0.0); self.tokens * total * d];
        let mut row = vec![0f32; d];
        for t in 0..self.tokens {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for h in 0..total {
                let src = &qkv[(t * total + h) * d..(t * total + h + 1) * d];
                let at = self.out_offset(t, h);
                let dst = &mut out[at..at + d];
                if h >= nh + nkv {
                    dst.copy_from_slice(src);
                    continue;
                }
                match norm {
                    Some((qw, kw)) => {
                        let w = if h < nh { qw } else { kw };
                        let inv = inv_rms(src, eps);
                        for ((r, v), wt) in row.iter_mut().zip(src).zip(w) {
                            *r = T::from_f32(scaled(v.into_f32(), inv, *wt)).into_f32();
                        }
                    }
                    None => {
                        for (r, v) in row.iter_mut().zip(src) {
                            *r = v.into_f32();
                        }
                    }
                }
                for i in 0..half {
                    let (x1, x2) = (row[i], row[i + half]);
                    let (ci, si) = (c[i].into_f32(), s[i].into_f32());
                    dst[i] = T::from_f32(x1 * ci - x2 * si);
                    dst[i + half] = T::from_f32(x1 * si + x2 * ci);
                }
            }
        }
        out
    }

    fn cpu_typed<T: Elem>(
        &self,
        qkv: (&CpuStorage, &Layout),
        cos: (&CpuStorage, &Layout),
        sin: (&CpuStorage, &Layout),
    ) -> Result<CpuStorage> {
        let qkv = contiguous_slice::<T>(qkv.0, qkv.1, "qkv")?;
        let cos = contiguous_slice::<T>(cos.0, cos.1, "cos")?;
        let sin = contiguous_slice::<T>(sin.0, sin.1, "sin")?;
        let out = match &self.norm {
            None => self.cpu(qkv, cos, sin, None),
            Some(n) => {
                let (qs, ql) = n.q_weight.storage_and_layout();
                let (ks, kl) = n.k_weight.storage_and_layout();
                let qw = storage_slice::<T>(&qs, ql, "q norm weight")?;
                let kw = storage_slice::<T>(&ks, kl, "k norm weight")?;
                self.cpu(qkv, cos, sin, Some((qw, kw)))
            }
        };
        Ok(cpu_storage(out))
    }
}

impl CustomOp3 for QkvRotary {
    fn name(&self) -> &'static str {
        "wick_qkv_rotary"
    }

    fn cpu_fwd(
        &self,
        qkv: &CpuStorage,
        qkv_l: &Layout,
        cos: &CpuStorage,
        cos_l: &Layout,
        sin: &CpuStorage,
        sin_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let args = ((qkv, qkv_l), (cos, cos_l), (sin, sin_l));
        let out = match qkv {
            CpuStorage::F32(_) => self.cpu_typed::<f32>(args.0, args.1, args.2)?,
            CpuStorage::F16(_) => self.cpu_typed::<half::f16>(args.0, args.1, args.2)?,
            CpuStorage::BF16(_) => self.cpu_typed::<half::bf16>(args.0, args.1, args.2)?,
            _ => bail!("qkv_rotary: qkv must be f32, f16 or bf16"),
        };
        let n = self.tokens * self.heads.total() * self.heads.head_dim;
        Ok((out, Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qkv: &candle_core::CudaStorage,
        qkv_l: &Layout,
        cos: &candle_core::CudaStorage,
        cos_l: &Layout,
        sin: &candle_core::CudaStorage,
        sin_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fused::qkv_rotary(self, (qkv, qkv_l), (cos, cos_l), (sin, sin_l))
    }
}

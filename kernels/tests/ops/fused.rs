//! The fused layer ops (`add_rms_norm`, `silu_mul`, `qkv_rotary`) against references
//! written here with plain candle tensor ops in f32, rounding where the op's documented
//! numerics round; batch invariance (a row alone equals the same row in a batch, bit for
//! bit); and bad input refused.

use crate::support::{assert_close, device_tests, expect_err, rand_tensor, rng, tolerance};
use candle_core::{DType, Device, Result, Tensor, D};
use wick_kernels::{add_rms_norm, qkv_rotary, silu_mul, QkNorm, QkvHeads};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// `t` in f32.
fn f32_of(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

/// `t` (f32) rounded to `dtype` and back.
fn round(t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_dtype(DType::F32)
}

/// Reference RMSNorm over the last dim in f32, rounded as documented:
/// `round(round(x * rsqrt(mean(x^2) + eps)) * w)`, returned in f32.
fn rms_norm_ref(x: &Tensor, w: &Tensor, eps: f64, dtype: DType) -> Result<Tensor> {
    let x = f32_of(x)?;
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    let n = round(&x.broadcast_mul(&inv)?, dtype)?;
    round(&n.broadcast_mul(&f32_of(w)?)?, dtype)
}

fn add_rms_norm_matches_reference(dev: &Device) -> Result<()> {
    let mut rng = rng(500);
    for dtype in DTYPES {
        // 576: SmolLM2's hidden size; 1000: not a multiple of the block; 3: tiny.
        for (tokens, hidden) in [(5, 576), (2, 1000), (1, 3), (0, 64)] {
            let x = rand_tensor(&mut rng, &[tokens, hidden], dtype, dev)?;
            let r = (rand_tensor(&mut rng, &[tokens, hidden], dtype, dev)? * 4.0)?;
            let w = rand_tensor(&mut rng, &[hidden], dtype, dev)?;
            let (sum, normed) = add_rms_norm(&x, &r, &w, 1e-5)?;
            assert_eq!((sum.dtype(), normed.dtype()), (dtype, dtype));
            assert!(sum.is_contiguous() && normed.is_contiguous());
            // The sum is exactly candle's add (one rounding of the f32 sum).
            let want_sum = (&x + &r)?;
            assert_close(&sum, &want_sum, (0.0, 0.0), &format!("sum {dtype:?}"));
            let want = rms_norm_ref(&want_sum, &w, 1e-5, dtype)?;
            let what = format!("normed {dtype:?} {tokens}x{hidden}");
            assert_close(&f32_of(&normed)?, &want, tolerance(dtype), &what);
        }
    }
    // Strided inputs are taken.
    let x = rand_tensor(&mut rng, &[8, 4], DType::F32, dev)?.t()?;
    let r = rand_tensor(&mut rng, &[4, 8], DType::F32, dev)?;
    let w = rand_tensor(&mut rng, &[8], DType::F32, dev)?;
    let (sum, normed) = add_rms_norm(&x, &r, &w, 1e-6)?;
    let want_sum = (x.contiguous()? + &r)?;
    assert_close(&sum, &want_sum, (0.0, 0.0), "strided sum");
    let want = rms_norm_ref(&want_sum, &w, 1e-6, DType::F32)?;
    assert_close(&normed, &want, tolerance(DType::F32), "strided normed");
    Ok(())
}

fn silu_mul_matches_reference(dev: &Device) -> Result<()> {
    let mut rng = rng(501);
    for dtype in DTYPES {
        for (tokens, inner) in [(4, 1536), (3, 300), (1, 1), (0, 8)] {
            let gu = (rand_tensor(&mut rng, &[tokens, 2 * inner], dtype, dev)? * 6.0)?;
            let got = silu_mul(&gu)?;
            let g = f32_of(&gu.narrow(1, 0, inner)?)?;
            let u = f32_of(&gu.narrow(1, inner, inner)?)?;
            let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
            let want = round(&(silu * u)?, dtype)?;
            let what = format!("silu_mul {dtype:?} {tokens}x{inner}");
            assert_eq!(got.dims(), &[tokens, inner]);
            assert_close(&f32_of(&got)?, &want, tolerance(dtype), &what);
        }
    }
    Ok(())
}

/// Reference of `qkv_rotary`: (q `[t, nh, d]`, kv `[2, t, nkv, d]`) in f32.
fn qkv_rotary_ref(
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    h: QkvHeads,
    norm: Option<&QkNorm>,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    let (nh, nkv, d) = (h.num_heads, h.num_kv_heads, h.head_dim);
    let t = qkv.dim(0)?;
    let all = f32_of(qkv)?.reshape((t, nh + 2 * nkv, d))?;
    let (q, k, v) = (
        all.narrow(1, 0, nh)?,
        all.narrow(1, nh, nkv)?,
        all.narrow(1, nh + nkv, nkv)?,
    );
    let (q, k) = match norm {
        Some(n) => (
            rms_norm_ref(&q, &n.q_weight, f64::from(n.eps), dtype)?,
            rms_norm_ref(&k, &n.k_weight, f64::from(n.eps), dtype)?,
        ),
        None => (q, k),
    };
    let (c, s) = (f32_of(cos)?.unsqueeze(1)?, f32_of(sin)?.unsqueeze(1)?);
    let rotate = |x: &Tensor| -> Result<Tensor> {
        let (x1, x2) = (x.narrow(2, 0, d / 2)?, x.narrow(2, d / 2, d / 2)?);
        let y1 = (x1.broadcast_mul(&c)? - x2.broadcast_mul(&s)?)?;
        let y2 = (x1.broadcast_mul(&s)? + x2.broadcast_mul(&c)?)?;
        round(&Tensor::cat(&[y1, y2], 2)?, dtype)
    };
    let kv = Tensor::stack(&[rotate(&k)?, v.contiguous()?], 0)?;
    Ok((rotate(&q)?, kv))
}

fn qkv_rotary_matches_reference(dev: &Device) -> Result<()> {
    let mut rng = rng(502);
    for dtype in DTYPES {
        // SmolLM2's heads (9 q, 3 kv, 64 wide), Llama-like (32/8/128), an odd count and
        // a head_dim that is not a multiple of the warp.
        let shapes = [(9, 3, 64), (32, 8, 128), (5, 1, 20)];
        for (nh, nkv, d) in shapes {
            let h = QkvHeads {
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: d,
            };
            for tokens in [6, 1, 0] {
                let width = (nh + 2 * nkv) * d;
                let qkv = (rand_tensor(&mut rng, &[tokens, width], dtype, dev)? * 3.0)?;
                let cos = rand_tensor(&mut rng, &[tokens, d / 2], dtype, dev)?;
                let sin = rand_tensor(&mut rng, &[tokens, d / 2], dtype, dev)?;
                let norm = QkNorm {
                    q_weight: rand_tensor(&mut rng, &[d], dtype, dev)?,
                    k_weight: rand_tensor(&mut rng, &[d], dtype, dev)?,
                    eps: 1e-6,
                };
                for norm in [None, Some(&norm)] {
                    let got = qkv_rotary(&qkv, &cos, &sin, h, norm)?;
                    if tokens == 0 {
                        // An empty step; candle cannot compute the reference on empty
                        // views at an offset.
                        assert_eq!(got.q.dims(), &[0, nh, d]);
                        assert_eq!(got.kv.dims(), &[2, 0, nkv, d]);
                        continue;
                    }
                    let (q, kv) = qkv_rotary_ref(&qkv, &cos, &sin, h, norm, dtype)?;
                    let what = format!("{dtype:?} {h:?} {tokens} tokens norm {}", norm.is_some());
                    assert!(got.q.is_contiguous() && got.kv.is_contiguous());
                    assert_close(&f32_of(&got.q)?, &q, tolerance(dtype), &what);
                    assert_close(&f32_of(&got.kv)?, &kv, tolerance(dtype), &what);
                    // Values are copied bit for bit.
                    let v = qkv.narrow(1, (nh + nkv) * d, nkv * d)?;
                    let v = v.reshape((tokens, nkv, d))?;
                    assert_close(&got.kv.get(1)?, &v, (0.0, 0.0), &what);
                }
            }
        }
    }
    Ok(())
}

fn rows_do_not_depend_on_the_batch(dev: &Device) -> Result<()> {
    let mut rng = rng(503);
    let dtype = DType::BF16;
    let (tokens, hidden) = (16, 576);
    let x = rand_tensor(&mut rng, &[tokens, hidden], dtype, dev)?;
    let r = rand_tensor(&mut rng, &[tokens, hidden], dtype, dev)?;
    let w = rand_tensor(&mut rng, &[hidden], dtype, dev)?;
    let (_, batch) = add_rms_norm(&x, &r, &w, 1e-5)?;
    let h = QkvHeads {
        num_heads: 9,
        num_kv_heads: 3,
        head_dim: 64,
    };
    let qkv = rand_tensor(&mut rng, &[tokens, 15 * 64], dtype, dev)?;
    let cos = rand_tensor(&mut rng, &[tokens, 32], dtype, dev)?;
    let sin = rand_tensor(&mut rng, &[tokens, 32], dtype, dev)?;
    let rot = qkv_rotary(&qkv, &cos, &sin, h, None)?;
    for t in [0, 7, 15] {
        let one = |x: &Tensor| x.narrow(0, t, 1);
        let (_, alone) = add_rms_norm(&one(&x)?, &one(&r)?, &w, 1e-5)?;
        assert_close(&alone, &one(&batch)?, (0.0, 0.0), "add_rms_norm row");
        let rot1 = qkv_rotary(&one(&qkv)?, &one(&cos)?, &one(&sin)?, h, None)?;
        assert_close(&rot1.q, &one(&rot.q)?, (0.0, 0.0), "q row");
        assert_close(&rot1.kv, &rot.kv.narrow(1, t, 1)?, (0.0, 0.0), "kv row");
    }
    Ok(())
}

fn bad_input_is_refused(dev: &Device) -> Result<()> {
    let x = Tensor::zeros((2, 8), DType::F32, dev)?;
    let w = Tensor::zeros(8, DType::F32, dev)?;
    expect_err(add_rms_norm(&x, &x.narrow(0, 0, 1)?, &w, 1e-5), "residual");
    expect_err(add_rms_norm(&x, &x, &w.narrow(0, 0, 4)?, 1e-5), "weight");
    expect_err(
        add_rms_norm(&x, &x.to_dtype(DType::BF16)?, &w, 1e-5),
        "dtype",
    );
    expect_err(add_rms_norm(&x, &x, &w, f32::NAN), "eps");
    expect_err(add_rms_norm(&w, &w, &w, 1e-5), "[tokens, hidden]");
    let ints = Tensor::zeros((2, 8), DType::U32, dev)?;
    expect_err(add_rms_norm(&ints, &ints, &w, 1e-5), "f32, f16 or bf16");
    expect_err(silu_mul(&Tensor::zeros((2, 7), DType::F32, dev)?), "odd");
    expect_err(silu_mul(&w), "[tokens, 2 * inner]");
    let h = QkvHeads {
        num_heads: 2,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let qkv = Tensor::zeros((3, 16), DType::F32, dev)?;
    let cs = Tensor::zeros((3, 2), DType::F32, dev)?;
    qkv_rotary(&qkv, &cs, &cs, h, None)?;
    expect_err(
        qkv_rotary(&qkv.narrow(1, 0, 12)?, &cs, &cs, h, None),
        "qkv must be",
    );
    expect_err(qkv_rotary(&qkv, &cs.narrow(0, 0, 2)?, &cs, h, None), "cos");
    let odd = QkvHeads { head_dim: 3, ..h };
    expect_err(qkv_rotary(&qkv, &cs, &cs, odd, None), "even head_dim");
    let norm = QkNorm {
        q_weight: Tensor::zeros(4, DType::F32, dev)?,
        k_weight: Tensor::zeros(3, DType::F32, dev)?,
        eps: 1e-6,
    };
    expect_err(qkv_rotary(&qkv, &cs, &cs, h, Some(&norm)), "k norm weight");
    Ok(())
}

device_tests!(
    add_rms_norm_matches_reference,
    silu_mul_matches_reference,
    qkv_rotary_matches_reference,
    rows_do_not_depend_on_the_batch,
    bad_input_is_refused,
);

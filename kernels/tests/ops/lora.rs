//! `lora_apply` against a naive per-token loop written here (f64 accumulation): random
//! batches (proptest), half precision against f32, tokens without adapter left bit for bit,
//! and bad input rejected with an error.
//!
//! The stacks' entries past each slot's rank are NaN, so a kernel that reads them fails.

use crate::support::{assert_close, device_tests, expect_err, rng, tolerance};
use candle_core::{DType, Device, Result, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use rand::rngs::StdRng;
use rand::Rng;
use wick_kernels::{lora_apply, LoraBatch};

/// One random application: shapes, ranks per slot (0 = empty), slot per token (-1 = none).
#[derive(Debug, Clone)]
struct Case {
    in_dim: usize,
    out_dim: usize,
    max_rank: usize,
    ranks: Vec<usize>,
    slots: Vec<i32>,
    seed: u64,
}

/// Host values of y, x and the stacks, as f32 (NaN past each slot's rank).
struct Data {
    y: Vec<f32>,
    x: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Case {
    fn tokens(&self) -> usize {
        self.slots.len()
    }

    fn data(&self) -> Data {
        let mut rng = rng(self.seed);
        let (t, i, o, r, s) = (
            self.tokens(),
            self.in_dim,
            self.out_dim,
            self.max_rank,
            self.ranks.len(),
        );
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (y, x, mut a, mut b) = (
            uniform(t * o),
            uniform(t * i),
            uniform(s * r * i),
            uniform(s * o * r),
        );
        for (slot, &rank) in self.ranks.iter().enumerate() {
            a[(slot * r + rank) * i..(slot + 1) * r * i].fill(f32::NAN);
            for row in b[slot * o * r..(slot + 1) * o * r].chunks_exact_mut(r) {
                row[rank..].fill(f32::NAN);
            }
        }
        Data { y, x, a, b }
    }

    /// y, x, a, b as tensors of `dtype` on `dev`.
    fn tensors(&self, d: &Data, dtype: DType, dev: &Device) -> Result<[Tensor; 4]> {
        let (t, s) = (self.tokens(), self.ranks.len());
        let (i, o, r) = (self.in_dim, self.out_dim, self.max_rank);
        let make = |v: &[f32], dims: &[usize]| Tensor::from_slice(v, dims, dev)?.to_dtype(dtype);
        Ok([
            make(&d.y, &[t, o])?,
            make(&d.x, &[t, i])?,
            make(&d.a, &[s, r, i])?,
            make(&d.b, &[s, o, r])?,
        ])
    }

    fn batch(&self, dev: &Device) -> Result<LoraBatch> {
        LoraBatch::new(&self.slots, &self.ranks, dev)
    }
}

/// The naive per-token loop in f64: `y[t] + (x[t] a_s^T) b_s^T` over each slot's rank.
fn reference(c: &Case, d: &Data) -> Vec<f64> {
    let (i, o, r) = (c.in_dim, c.out_dim, c.max_rank);
    let mut out: Vec<f64> = d.y.iter().map(|&v| f64::from(v)).collect();
    for (t, &slot) in c.slots.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        let s = slot as usize;
        let h: Vec<f64> = (0..c.ranks[s])
            .map(|k| {
                (0..i)
                    .map(|j| f64::from(d.x[t * i + j]) * f64::from(d.a[(s * r + k) * i + j]))
                    .sum()
            })
            .collect();
        for (q, out) in out[t * o..(t + 1) * o].iter_mut().enumerate() {
            let b_row = &d.b[(s * o + q) * r..];
            *out += h
                .iter()
                .zip(b_row)
                .map(|(h, &b)| h * f64::from(b))
                .sum::<f64>();
        }
    }
    out
}

/// Runs the op on `dev` in f32 and compares it with [`reference`]: within 1e-4 relative
/// where a token has an adapter, bit for bit where it has none.
fn check_f32(c: &Case, dev: &Device) -> std::result::Result<(), TestCaseError> {
    let fail = |e: candle_core::Error| TestCaseError::fail(e.to_string());
    let d = c.data();
    let [y, x, a, b] = c.tensors(&d, DType::F32, dev).map_err(fail)?;
    let out = lora_apply(&y, &x, &a, &b, &c.batch(dev).map_err(fail)?).map_err(fail)?;
    prop_assert_eq!(out.dims(), y.dims());
    let got = out
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(fail)?;
    let want = reference(c, &d);
    let o = c.out_dim;
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        let t = n / o;
        if c.slots[t] < 0 || c.ranks[c.slots[t] as usize] == 0 {
            prop_assert_eq!(g.to_bits(), d.y[n].to_bits(), "token {} changed", t);
        } else {
            let err = (f64::from(*g) - w).abs();
            prop_assert!(
                err <= 1e-4 * (1.0 + w.abs()),
                "token {} out {}: got {} want {} (err {})",
                t,
                n % o,
                g,
                w,
                err
            );
        }
    }
    Ok(())
}

/// Random cases: T in 1..40, in/out in 1..70, 1..5 slots of max rank 1..=16, each slot
/// empty (rank 0) one time in five, else a rank in 1..=R; each token on -1 or any slot.
fn cases() -> impl Strategy<Value = Case> {
    (
        1usize..40,
        1usize..70,
        1usize..70,
        1usize..5,
        1usize..=16,
        any::<u64>(),
    )
        .prop_flat_map(|(t, in_dim, out_dim, s, max_rank, seed)| {
            let ranks = prop::collection::vec(
                prop::option::weighted(0.8, 1..=max_rank).prop_map(|r| r.unwrap_or(0)),
                s,
            );
            let slots = prop::collection::vec(-1..s as i32, t);
            (ranks, slots).prop_map(move |(ranks, slots)| Case {
                in_dim,
                out_dim,
                max_rank,
                ranks,
                slots,
                seed,
            })
        })
}

fn random_batches_match_naive_loop(dev: &Device) -> Result<()> {
    let config = Config {
        cases: if dev.is_cpu() { 256 } else { 64 },
        failure_persistence: None,
        ..Config::default()
    };
    let result = TestRunner::new(config).run(&cases(), |c| check_f32(&c, dev));
    if let Err(e) = result {
        panic!("{e}");
    }
    Ok(())
}

/// A case of `t` tokens over `s` slots of rank `r` (token t on slot t % (s + 1) - 1).
fn even_case(t: usize, in_dim: usize, out_dim: usize, s: usize, r: usize, seed: u64) -> Case {
    Case {
        in_dim,
        out_dim,
        max_rank: r,
        ranks: vec![r; s],
        slots: (0..t).map(|t| (t % (s + 1)) as i32 - 1).collect(),
        seed,
    }
}

fn large_and_degenerate_batches_match_naive_loop(dev: &Device) -> Result<()> {
    let check = |c: &Case| check_f32(c, dev).map_err(|e| candle_core::Error::msg(e.to_string()));
    // Enough work for the CPU kernel to split slots into chunks and run them in parallel.
    let mut c = even_case(400, 200, 300, 3, 16, 600);
    c.ranks[1] = 5;
    check(&c)?;
    // No input features: the delta is zero.
    check(&even_case(5, 0, 7, 2, 4, 605))?;
    // One token, rank 1, one output.
    check(&even_case(2, 3, 1, 1, 1, 606))
}

fn half_precision_matches_f32(dev: &Device) -> Result<()> {
    let mut gen = rng(601);
    for dtype in [DType::F16, DType::BF16] {
        for (t, i, o, r) in [(16, 64, 96, 16), (9, 33, 70, 7), (130, 72, 40, 8)] {
            let mut c = even_case(t, i, o, 4, r, gen.random());
            c.ranks[2] = r / 2;
            let d = c.data();
            let half = c.tensors(&d, dtype, dev)?;
            // The same (rounded) inputs in f32.
            let wide = half
                .iter()
                .map(|t| t.to_dtype(DType::F32))
                .collect::<Result<Vec<_>>>()?;
            let batch = c.batch(dev)?;
            let got = lora_apply(&half[0], &half[1], &half[2], &half[3], &batch)?;
            assert_eq!(got.dtype(), dtype);
            let want = lora_apply(&wide[0], &wide[1], &wide[2], &wide[3], &batch)?;
            assert_close(&got, &want, tolerance(dtype), &format!("{dtype:?} {c:?}"));
        }
    }
    Ok(())
}

fn non_contiguous_inputs_are_accepted(dev: &Device) -> Result<()> {
    let c = even_case(12, 24, 40, 2, 8, 602);
    let d = c.data();
    let [y, x, a, b] = c.tensors(&d, DType::F32, dev)?;
    let batch = c.batch(dev)?;
    let want = lora_apply(&y, &x, &a, &b, &batch)?;
    // The same values behind transposed layouts.
    let strided = |t: &Tensor| -> Result<Tensor> { t.t()?.contiguous()?.t() };
    let (ys, xs) = (strided(&y)?, strided(&x)?);
    assert!(!ys.is_contiguous() && !xs.is_contiguous());
    let got = lora_apply(&ys, &xs, &a, &b, &batch)?;
    assert_close(&got, &want, (0.0, 0.0), "strided");
    Ok(())
}

fn no_adapter_returns_y_bit_for_bit(dev: &Device) -> Result<()> {
    let mut gen = rng(603);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Every token on -1 (no kernel runs), or on an empty slot (they run, adding nothing).
        for slots in [vec![-1; 7], vec![-1, 1, -1, 1, 1, -1, 1]] {
            let c = Case {
                in_dim: 20,
                out_dim: 30,
                max_rank: 4,
                ranks: vec![4, 0],
                slots,
                seed: gen.random(),
            };
            let batch = c.batch(dev)?;
            assert_eq!(batch.is_empty(), c.slots.iter().all(|&s| s == -1));
            let [y, x, a, b] = c.tensors(&c.data(), dtype, dev)?;
            let out = lora_apply(&y, &x, &a, &b, &batch)?;
            let bits = |t: &Tensor| -> Result<Vec<u8>> {
                Ok(t.flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_bits().to_le_bytes())
                    .collect())
            };
            assert_eq!(bits(&out)?, bits(&y)?, "{dtype:?}");
        }
    }
    // No tokens at all.
    let batch = LoraBatch::new(&[], &[4], dev)?;
    assert!(batch.is_empty());
    let y = Tensor::zeros((0, 8), DType::F32, dev)?;
    let x = Tensor::zeros((0, 5), DType::F32, dev)?;
    let (a, b) = (
        Tensor::zeros((1, 4, 5), DType::F32, dev)?,
        Tensor::zeros((1, 8, 4), DType::F32, dev)?,
    );
    assert_eq!(lora_apply(&y, &x, &a, &b, &batch)?.dims(), [0, 8]);
    assert!(!LoraBatch::new(&[-1, 0], &[4, 0], dev)?.is_empty());
    // Stacks of rank 0 (nothing loaded yet) with a token naming a slot: y, on every device.
    let y = rand_f32(&mut rng(607), &[2, 8], dev)?;
    let x = Tensor::zeros((2, 5), DType::F32, dev)?;
    let (a, b) = (
        Tensor::zeros((1, 0, 5), DType::F32, dev)?,
        Tensor::zeros((1, 8, 0), DType::F32, dev)?,
    );
    let batch = LoraBatch::new(&[0, -1], &[4], dev)?;
    let out = lora_apply(&y, &x, &a, &b, &batch)?;
    assert_eq!(out.to_vec2::<f32>()?, y.to_vec2::<f32>()?);
    Ok(())
}

/// Uniform `[-1, 1)` values of `dims`.
fn rand_f32(gen: &mut StdRng, dims: &[usize], dev: &Device) -> Result<Tensor> {
    crate::support::rand_tensor(gen, dims, DType::F32, dev)
}

fn bad_input_is_an_error(dev: &Device) -> Result<()> {
    let mut gen = rng(604);
    expect_err(LoraBatch::new(&[0, 2], &[4, 4], dev), "slot 2");
    expect_err(LoraBatch::new(&[-2], &[4], dev), "slot -2");
    expect_err(LoraBatch::new(&[0], &[], dev), "slot 0");

    // T 3, in 6, out 5, 2 slots, max rank 4.
    let batch = LoraBatch::new(&[0, -1, 1], &[4, 2], dev)?;
    let y = rand_f32(&mut gen, &[3, 5], dev)?;
    let x = rand_f32(&mut gen, &[3, 6], dev)?;
    let a = rand_f32(&mut gen, &[2, 4, 6], dev)?;
    let b = rand_f32(&mut gen, &[2, 5, 4], dev)?;
    lora_apply(&y, &x, &a, &b, &batch)?;

    let three_slots = LoraBatch::new(&[0, -1, 1], &[4, 2, 1], dev)?;
    expect_err(lora_apply(&y, &x, &a, &b, &three_slots), "slots");
    let two_tokens = LoraBatch::new(&[0, 1], &[4, 2], dev)?;
    expect_err(lora_apply(&y, &x, &a, &b, &two_tokens), "tokens");

    let x7 = rand_f32(&mut gen, &[3, 7], dev)?;
    expect_err(lora_apply(&y, &x7, &a, &b, &batch), "inputs");
    let x4 = rand_f32(&mut gen, &[4, 6], dev)?;
    expect_err(lora_apply(&y, &x4, &a, &b, &batch), "tokens");
    let y4 = rand_f32(&mut gen, &[4, 5], dev)?;
    expect_err(lora_apply(&y4, &x, &a, &b, &batch), "tokens");
    let b_out = rand_f32(&mut gen, &[2, 6, 4], dev)?;
    expect_err(lora_apply(&y, &x, &a, &b_out, &batch), "b must be");
    let b_rank = rand_f32(&mut gen, &[2, 5, 3], dev)?;
    expect_err(lora_apply(&y, &x, &a, &b_rank, &batch), "b must be");
    expect_err(
        lora_apply(&y, &x.flatten_all()?, &a, &b, &batch),
        "x must be",
    );
    expect_err(
        lora_apply(&y.unsqueeze(0)?, &x, &a, &b, &batch),
        "y must be",
    );
    expect_err(lora_apply(&y, &x, &a.get(0)?, &b, &batch), "a must be");

    let b16 = b.to_dtype(DType::F16)?;
    expect_err(lora_apply(&y, &x, &a, &b16, &batch), "dtype");
    let x16 = x.to_dtype(DType::BF16)?;
    expect_err(lora_apply(&y, &x16, &a, &b, &batch), "dtype");
    let as_u32 = |t: &Tensor| t.to_dtype(DType::U32);
    expect_err(
        lora_apply(
            &as_u32(&y)?,
            &as_u32(&x)?,
            &as_u32(&a)?,
            &as_u32(&b)?,
            &batch,
        ),
        "dtype",
    );
    // Device tables of the wrong shape, dtype or device.
    let slots_t = Tensor::new(&[0u32, u32::MAX, 1], dev)?;
    let ranks_t = Tensor::new(&[4u32, 2], dev)?;
    let tables = |s: &Tensor, r: &Tensor| LoraBatch::with_tables(&[0, -1, 1], &[4, 2], s, r);
    tables(&slots_t, &ranks_t)?;
    expect_err(tables(&slots_t.narrow(0, 0, 2)?, &ranks_t), "slot table");
    expect_err(tables(&slots_t, &slots_t), "rank table");
    expect_err(tables(&slots_t.to_dtype(DType::F32)?, &ranks_t), "u32");
    if !dev.is_cpu() {
        let cpu_ranks = ranks_t.to_device(&Device::Cpu)?;
        expect_err(tables(&slots_t, &cpu_ranks), "different devices");
        // A batch built for the CPU cannot serve GPU tensors, nor the other way round.
        let cpu_batch = LoraBatch::new(&[0, -1, 1], &[4, 2], &Device::Cpu)?;
        expect_err(lora_apply(&y, &x, &a, &b, &cpu_batch), "device");
        let x_cpu = x.to_device(&Device::Cpu)?;
        expect_err(lora_apply(&y, &x_cpu, &a, &b, &batch), "device");
    }
    Ok(())
}

/// A slot whose rank is above the stacks' reads the stacks' rank of rows (a projection the
/// larger adapter does not target), exactly as a batch naming that rank; and a batch over
/// device tables the caller keeps gives what one that uploads its own does.
fn ranks_above_the_stacks_and_caller_tables(dev: &Device) -> Result<()> {
    let c = even_case(9, 24, 40, 2, 8, 605);
    let [y, x, a, b] = c.tensors(&c.data(), DType::F32, dev)?;
    let want = lora_apply(&y, &x, &a, &b, &c.batch(dev)?)?;
    let larger: Vec<usize> = c.ranks.iter().map(|r| r + 24).collect();
    let got = lora_apply(&y, &x, &a, &b, &LoraBatch::new(&c.slots, &larger, dev)?)?;
    assert_close(&got, &want, (0.0, 0.0), "rank above the stacks'");

    let ranks: Vec<u32> = c.ranks.iter().map(|&r| r as u32).collect();
    let slots_t = Tensor::new(LoraBatch::device_slots(&c.slots).as_slice(), dev)?;
    let ranks_t = Tensor::new(ranks.as_slice(), dev)?;
    let batch = LoraBatch::with_tables(&c.slots, &c.ranks, &slots_t, &ranks_t)?;
    let got = lora_apply(&y, &x, &a, &b, &batch)?;
    assert_close(&got, &want, (0.0, 0.0), "caller's tables");
    assert_eq!(LoraBatch::device_slots(&[-1, 0, 3]), [u32::MAX, 0, 3]);
    Ok(())
}

device_tests!(
    ranks_above_the_stacks_and_caller_tables,
    random_batches_match_naive_loop,
    large_and_degenerate_batches_match_naive_loop,
    half_precision_matches_f32,
    non_contiguous_inputs_are_accepted,
    no_adapter_returns_y_bit_for_bit,
    bad_input_is_an_error,
);

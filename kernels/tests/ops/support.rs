//! Test support: random batches written into a paged cache, the naive dense attention the
//! ops are compared with, and tolerant comparison.
//!
//! A [`Batch`] gives each sequence its own random keys and values for every position of its
//! context, writes them into a NaN-filled cache through `reshape_and_cache` (with padding
//! rows of slot -1 mixed in), and keeps the dense per-sequence copies. The reference
//! attends over those dense copies, so any paging mistake in either op shows up, and any
//! read of a slot no token owns turns the output into NaN.

use candle_core::{DType, Device, Result, Tensor, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use wick_kernels::{paged_attention, reshape_and_cache, PagedAttentionMetadata, SlotMapping};

/// Defines, for each listed body `fn name(&Device) -> Result<()>`, a CPU test (and a CUDA
/// one under the `cuda` feature) of the same name. The CUDA test passes without running
/// when no GPU is present, unless `WICK_REQUIRE_GPU=1` (as on the GPU machine) makes that
/// a failure.
macro_rules! device_tests {
    ($($name:ident),* $(,)?) => {
        mod cpu {
            $(
                #[test]
                fn $name() -> candle_core::Result<()> {
                    super::$name(&candle_core::Device::Cpu)
                }
            )*
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                fn $name() -> candle_core::Result<()> {
                    match $crate::support::gpu()? {
                        Some(dev) => super::$name(&dev),
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}
pub(crate) use device_tests;

/// CUDA device 0, or `None` (with a note) when there is none and `WICK_REQUIRE_GPU` is
/// not `1`.
#[cfg(feature = "cuda")]
pub fn gpu() -> Result<Option<Device>> {
    match Device::new_cuda(0) {
        Ok(dev) => Ok(Some(dev)),
        Err(e) if std::env::var("WICK_REQUIRE_GPU").as_deref() != Ok("1") => {
            eprintln!("no CUDA device, CUDA test skipped: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A seeded generator, so failures reproduce.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in `[-1, 1)` of `dtype`.
pub fn rand_tensor(rng: &mut StdRng, dims: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(data, dims, dev)?.to_dtype(dtype)
}

/// One sequence of a test batch: `q_len` queries at the end of a `seq_len` context.
#[derive(Debug, Clone, Copy)]
pub struct SeqSpec {
    pub seq_len: usize,
    pub q_len: usize,
}

/// Shorthand for a [`SeqSpec`].
pub fn seq(seq_len: usize, q_len: usize) -> SeqSpec {
    SeqSpec { seq_len, q_len }
}

/// Everything that shapes a test batch.
#[derive(Debug, Clone)]
pub struct Case {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub dtype: DType,
    pub seqs: Vec<SeqSpec>,
    /// Rows of q after the last sequence's queries (padding; must come out zero).
    pub pad_rows: usize,
    pub sliding_window: Option<usize>,
    /// Multiplies the usual `1 / sqrt(head_dim)` scale (large = sharp softmax).
    pub scale_mul: f32,
}

impl Case {
    /// A case with the given heads and sequences, f32, block size 16, no window.
    pub fn new(num_heads: usize, num_kv_heads: usize, head_dim: usize, seqs: &[SeqSpec]) -> Self {
        Self {
            num_heads,
            num_kv_heads,
            head_dim,
            block_size: 16,
            dtype: DType::F32,
            seqs: seqs.to_vec(),
            pad_rows: 0,
            sliding_window: None,
            scale_mul: 1.0,
        }
    }

    pub fn softmax_scale(&self) -> f32 {
        self.scale_mul / (self.head_dim as f32).sqrt()
    }
}

/// A batch laid out in a paged cache, with dense copies for the reference.
pub struct Batch {
    pub case: Case,
    pub q: Tensor,
    pub key_cache: Tensor,
    pub value_cache: Tensor,
    pub meta: PagedAttentionMetadata,
    /// Per sequence: its whole context's keys and values, `[seq_len, num_kv_heads, head_dim]`.
    pub keys: Vec<Tensor>,
    pub values: Vec<Tensor>,
    /// Per sequence: its block ids.
    pub blocks: Vec<Vec<u32>>,
}

impl Batch {
    /// Builds `case` with blocks handed out in shuffled order, a spare block or two, and a
    /// block table one column wider than needed whose unused entries are garbage.
    pub fn new(case: &Case, rng: &mut StdRng, dev: &Device) -> Result<Self> {
        let (kvh, d, bs) = (case.num_kv_heads, case.head_dim, case.block_size);
        let needed: Vec<usize> = case.seqs.iter().map(|s| s.seq_len.div_ceil(bs)).collect();
        let num_blocks = needed.iter().sum::<usize>() + 2;
        let mut ids: Vec<u32> = (0..num_blocks as u32).collect();
        ids.shuffle(rng);
        let width = needed.iter().copied().max().unwrap_or(0) + 1;
        let mut table = vec![u32::MAX; case.seqs.len() * width];
        let mut blocks = Vec::new();
        let mut next = ids.into_iter();
        for (s, &n) in needed.iter().enumerate() {
            let b: Vec<u32> = next.by_ref().take(n).collect();
            table[s * width..s * width + n].copy_from_slice(&b);
            blocks.push(b);
        }

        let cache_dims = [2, num_blocks, bs, kvh, d];
        let kv_cache = Tensor::full(f32::NAN, &cache_dims[..], dev)?.to_dtype(case.dtype)?;

        // Every context token's K/V, written in one step with padding rows between seqs.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        let (mut k_rows, mut v_rows, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (s, spec) in case.seqs.iter().enumerate() {
            let k = rand_tensor(rng, &[spec.seq_len, kvh, d], case.dtype, dev)?;
            let v = rand_tensor(rng, &[spec.seq_len, kvh, d], case.dtype, dev)?;
            k_rows.push(k.clone());
            v_rows.push(v.clone());
            slots.extend(
                (0..spec.seq_len).map(|p| (blocks[s][p / bs] as usize * bs + p % bs) as i64),
            );
            keys.push(k);
            values.push(v);
            k_rows.push(rand_tensor(rng, &[1, kvh, d], case.dtype, dev)?);
            v_rows.push(rand_tensor(rng, &[1, kvh, d], case.dtype, dev)?);
            slots.push(-1);
        }
        let slots = SlotMapping::new(slots, dev)?;
        let k_rows = Tensor::cat(&k_rows, 0)?;
        let v_rows = Tensor::cat(&v_rows, 0)?;
        reshape_and_cache(&Tensor::stack(&[k_rows, v_rows], 0)?, &kv_cache, &slots)?;
        // The attention op reads the two halves as views into the one allocation.
        let (key_cache, value_cache) = (kv_cache.get(0)?, kv_cache.get(1)?);

        let mut cu = vec![0u32];
        for spec in &case.seqs {
            cu.push(cu[cu.len() - 1] + spec.q_len as u32);
        }
        let num_tokens = cu[cu.len() - 1] as usize + case.pad_rows;
        let q = rand_tensor(rng, &[num_tokens, case.num_heads, d], case.dtype, dev)?;
        let seq_lens = case.seqs.iter().map(|s| s.seq_len as u32).collect();
        let meta = PagedAttentionMetadata::new(table, width, cu, seq_lens, dev)?;
        Ok(Self {
            case: case.clone(),
            q,
            key_cache,
            value_cache,
            meta,
            keys,
            values,
            blocks,
        })
    }

    /// The op under test.
    pub fn run(&self) -> Result<Tensor> {
        paged_attention(
            &self.q,
            &self.key_cache,
            &self.value_cache,
            &self.meta,
            self.case.softmax_scale(),
            self.case.sliding_window,
        )
    }

    /// Naive dense attention in f32: per sequence, explicit mask, plain softmax.
    pub fn reference(&self) -> Result<Tensor> {
        let c = &self.case;
        let dev = self.q.device();
        let group = c.num_heads / c.num_kv_heads;
        let kv_of_head: Vec<u32> = (0..c.num_heads).map(|h| (h / group) as u32).collect();
        let kv_of_head = Tensor::from_vec(kv_of_head, c.num_heads, dev)?;
        let q = self.q.to_dtype(DType::F32)?;
        let mut outs = Vec::new();
        let mut row = 0;
        for (s, spec) in c.seqs.iter().enumerate() {
            let (l, ql) = (spec.seq_len, spec.q_len);
            if ql == 0 {
                continue;
            }
            // [heads, len, d], each query head next to its kv head's keys.
            let per_head = |t: &Tensor| -> Result<Tensor> {
                t.to_dtype(DType::F32)?
                    .index_select(&kv_of_head, 1)?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let k = per_head(&self.keys[s])?;
            let v = per_head(&self.values[s])?;
            let qs = q.narrow(0, row, ql)?.transpose(0, 1)?.contiguous()?;
            let scores = (qs.matmul(&k.t()?.contiguous()?)? * c.softmax_scale() as f64)?;
            let mut mask = vec![0f32; ql * l];
            for j in 0..ql {
                let p = l - ql + j;
                for key in 0..l {
                    let hidden = key > p || c.sliding_window.is_some_and(|w| key + w <= p);
                    if hidden {
                        mask[j * l + key] = f32::NEG_INFINITY;
                    }
                }
            }
            let mask = Tensor::from_vec(mask, (1, ql, l), dev)?;
            let scores = scores.broadcast_add(&mask)?;
            let e = scores
                .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
                .exp()?;
            let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
            outs.push(probs.matmul(&v)?.transpose(0, 1)?);
            row += ql;
        }
        if c.pad_rows > 0 {
            outs.push(Tensor::zeros(
                (c.pad_rows, c.num_heads, c.head_dim),
                DType::F32,
                dev,
            )?);
        }
        if outs.is_empty() {
            return Tensor::zeros((0, c.num_heads, c.head_dim), DType::F32, dev);
        }
        Tensor::cat(&outs, 0)
    }

    /// Runs the op and compares it with the reference at the dtype's tolerance.
    pub fn check(&self) -> Result<()> {
        self.check_with(tolerance(self.case.dtype))
    }

    /// Runs the op and compares it with the reference at `(atol, rtol)`.
    pub fn check_with(&self, tol: (f32, f32)) -> Result<()> {
        let out = self.run()?;
        assert_eq!(out.dims(), self.q.dims());
        assert_eq!(out.dtype(), self.q.dtype());
        assert_close(&out, &self.reference()?, tol, &format!("{:?}", self.case));
        Ok(())
    }
}

/// `(atol, rtol)` for outputs stored as `dtype`.
pub fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-5, 1e-5),
        _ => (1e-2, 1e-2),
    }
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise (NaN fails).
pub fn assert_close(got: &Tensor, want: &Tensor, (atol, rtol): (f32, f32), what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let flat = |t: &Tensor| -> Vec<f32> {
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("tensor to host")
    };
    let (g, w) = (flat(got), flat(want));
    let mut worst = (0usize, 0f32);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let excess = (a - b).abs() - (atol + rtol * b.abs());
        let excess = if excess.is_nan() {
            f32::INFINITY
        } else {
            excess
        };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 == 0.0,
        "{what}: element {i} is {} but the reference says {} (atol {atol}, rtol {rtol})",
        g.get(i).copied().unwrap_or(f32::NAN),
        w.get(i).copied().unwrap_or(f32::NAN)
    );
}

/// Asserts `r` is an error whose message contains `needle`.
pub fn expect_err<T>(r: Result<T>, needle: &str) {
    match r {
        Ok(_) => panic!("expected an error mentioning {needle:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

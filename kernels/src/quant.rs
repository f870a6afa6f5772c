//! Quantized matmul on the CPU: [`QuantMatrix`] multiplies f32 activations by a GGUF
//! block-quantized weight, reading the blocks where candle's `QTensor` keeps them (no copy:
//! a tied `lm_head` and the token embedding share one table), with wick's own AVX2 dot
//! products (a portable path elsewhere).
//!
//! Two block types ([`WeightBlock`]): Q4_1, whose candle 0.11 dot product on x86 is scalar
//! (`vec_dot_unopt`), and Q8_0, which candle has in AVX2 but one activation row at a time
//! (each weight block loaded and made unsigned again for every row), where wick does that
//! once per four rows: 2x candle at 1 row and 4x at 4-16 on SmolLM2's Q8_0 token embedding,
//! which is its tied `lm_head` and the largest matmul of a decode step. Both share one
//! path: rows of weight blocks spread over rayon, each against every activation row. Other
//! types stay with candle's `QMatMul` (Q4_0 and the K-quants have AVX2 there); Q5_0/Q5_1
//! would be next. AVX-512 is not used: the machines this was written and measured on report
//! none, and code that no machine here can run is not written.
//!
//! The arithmetic is ggml's. Each row of activations is quantized to Q8_1 blocks (32 int8
//! values, a scale `d` and `s = d * sum(q)`, both rounded through f16 as ggml stores them;
//! without `s` that is exactly ggml's Q8_0 activation). A block's dot product is
//! `d_w * d_x * sum(q_w * q_x) + m_w * s_x` for Q4_1 (`ggml_vec_dot_q4_1_q8_1`) and
//! `d_w * d_x * sum(q_w * q_x)` for Q8_0 (`ggml_vec_dot_q8_0_q8_0`). The AVX2 and portable
//! paths compute the same integer sums; they differ only in the order of the f32 additions.
//!
//! Invariant: a [`QuantMatrix`] is a 2-D CPU tensor of a supported type whose bytes are
//! exactly `rows * cols / 32` aligned blocks; `cols` is a multiple of 32 (all checked in
//! [`QuantMatrix::from_gguf`]).

use crate::quant_avx2::{self, Avx2Block};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

/// Values per quantization block (every type here).
pub(crate) const BLOCK: usize = 32;

/// A GGUF weight block type [`QuantMatrix`] multiplies.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs of `f16`, `u8` and `i8` fields without padding,
/// laid out as GGUF (and candle's `QTensor`) stores the type, `BYTES` long: every bit
/// pattern is a block, so [`QuantMatrix`] reads them straight from the tensor's bytes.
pub(crate) unsafe trait WeightBlock: Copy + Send + Sync + Avx2Block {
    /// The GGUF type.
    const DTYPE: GgmlDType;
    /// Bytes of one block.
    const BYTES: usize;
    /// From this many activation rows on (prefill chunks, large batches),
    /// [`QuantMatrix::forward`] dequantizes the weight and runs candle's f32 matmul instead.
    const DENSE_MIN_ROWS: usize;
    /// The block's 32 values.
    fn dequantize(&self) -> [f32; BLOCK];
    /// One weight row against one activation row of as many blocks, in plain Rust.
    fn dot(w: &[Self], x: &[BlockQ8_1]) -> f32;
}

/// One Q4_1 block, as stored in GGUF: value `i` is `d * q_i + m`; byte `j` of `qs` holds
/// `q_j` in its low nibble and `q_{j+16}` in its high nibble.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ4_1 {
    pub(crate) d: f16,
    pub(crate) m: f16,
    pub(crate) qs: [u8; 16],
}

// SAFETY: `repr(C)`, two f16 then 16 bytes: 20 bytes, no padding, GGUF's layout.
unsafe impl WeightBlock for BlockQ4_1 {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BYTES: usize = 20;
    /// SmolLM2's projections: at 64 rows the two paths cost the same and at 256 the dense
    /// one takes 2/3 of the time (quant_matmul_bench, 2-core x86-64 with AVX2).
    const DENSE_MIN_ROWS: usize = 64;

    fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        std::array::from_fn(|i| {
            let q = self.qs[i % 16];
            f32::from(if i < 16 { q & 0x0F } else { q >> 4 }) * d + m
        })
    }

    fn dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0f32;
        for (w, x) in w.iter().zip(x) {
            let mut sumi = 0i32;
            for (j, &q) in w.qs.iter().enumerate() {
                sumi += i32::from(q & 0x0F) * i32::from(x.qs[j])
                    + i32::from(q >> 4) * i32::from(x.qs[j + 16]);
            }
            sum += sumi as f32 * w.d.to_f32() * x.d + w.m.to_f32() * x.s;
        }
        sum
    }
}

/// One Q8_0 block, as stored in GGUF: value `i` is `d * qs[i]`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ8_0 {
    pub(crate) d: f16,
    pub(crate) qs: [i8; BLOCK],
}

// SAFETY: `repr(C)`, an f16 then 32 bytes: 34 bytes, no padding, GGUF's layout.
unsafe impl WeightBlock for BlockQ8_0 {
    const DTYPE: GgmlDType = GgmlDType::Q8_0;
    const BYTES: usize = 34;
    /// SmolLM2's `lm_head` (49152 x 576): dequantizing its 28M values alone takes longer
    /// than wick's kernel at 64 rows, so the dense path takes twice the time at 64 rows,
    /// 93% at 128, 87% at 256 (quant_matmul_bench, 2-core x86-64 with AVX2).
    const DENSE_MIN_ROWS: usize = 128;

    fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        self.qs.map(|q| f32::from(q) * d)
    }

    fn dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        let mut sum = 0f32;
        for (w, x) in w.iter().zip(x) {
            let sumi: i32 =
                w.qs.iter()
                    .zip(&x.qs)
                    .map(|(&a, &b)| i32::from(a) * i32::from(b))
                    .sum();
            sum += sumi as f32 * (w.d.to_f32() * x.d);
        }
        sum
    }
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == BlockQ4_1::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == BlockQ8_0::BYTES);

/// One block of 32 activations quantized to int8 (ggml's Q8_1), with its scales widened
/// to f32 after rounding them through f16.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct BlockQ8_1 {
    pub(crate) qs: [i8; BLOCK],
    pub(crate) d: f32,
    /// `d * sum(qs)`.
    pub(crate) s: f32,
}

/// The block type of a [`QuantMatrix`] (one variant per [`WeightBlock`]).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Q4_1,
    Q8_0,
}

/// A `[rows, cols]` weight kept in its GGUF block type, multiplied on the CPU.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    kind: Kind,
    q: Arc<QTensor>,
}

impl QuantMatrix {
    /// True if `dtype` has a wick CPU kernel (candle's `QMatMul` serves the others).
    pub fn supports(dtype: GgmlDType) -> bool {
        matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q8_0)
    }

    /// Wraps a 2-D CPU `QTensor` of a supported type (`[rows, cols]`, the `[out, in]` of a
    /// projection), sharing its storage.
    pub fn from_gguf(q: Arc<QTensor>) -> Result<Self> {
        let kind = match q.dtype() {
            GgmlDType::Q4_1 => Kind::Q4_1,
            GgmlDType::Q8_0 => Kind::Q8_0,
            other => bail!("QuantMatrix: no CPU kernel for {other:?}"),
        };
        if !q.device().is_cpu() {
            bail!("QuantMatrix: the tensor is not on the CPU");
        }
        let (rows, cols) = q.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            bail!("QuantMatrix: {cols} columns are not a multiple of {BLOCK}");
        }
        let m = Self {
            rows,
            cols,
            kind,
            q,
        };
        // Checks the bytes' length and alignment once; they cannot change.
        match kind {
            Kind::Q4_1 => m.with_blocks::<BlockQ4_1, _>(|_| ())?,
            Kind::Q8_0 => m.with_blocks::<BlockQ8_0, _>(|_| ())?,
        }
        Ok(m)
    }

    /// The block type's [`WeightBlock::DENSE_MIN_ROWS`].
    fn dense_min_rows(&self) -> usize {
        match self.kind {
            Kind::Q4_1 => BlockQ4_1::DENSE_MIN_ROWS,
            Kind::Q8_0 => BlockQ8_0::DENSE_MIN_ROWS,
        }
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes of the blocks (the GGUF tensor's size).
    pub fn byte_size(&self) -> usize {
        self.q.storage_size_in_bytes()
    }

    /// Calls `f` with the tensor's bytes seen as blocks of type `B`.
    fn with_blocks<B: WeightBlock, R>(&self, f: impl FnOnce(&[B]) -> R) -> Result<R> {
        debug_assert_eq!(B::DTYPE, self.q.dtype());
        let bytes = self.q.data()?;
        let n = self.rows * self.cols / BLOCK;
        let ptr = bytes.as_ptr().cast::<B>();
        if bytes.len() != n * B::BYTES || !ptr.is_aligned() {
            bail!(
                "QuantMatrix: {} bytes at {ptr:p} for [{}, {}] {:?}",
                bytes.len(),
                self.rows,
                self.cols,
                B::DTYPE
            );
        }
        // SAFETY: `bytes` holds exactly `n` blocks' worth, aligned for `B`, and lives for
        // this call; `WeightBlock`'s contract makes any bytes valid blocks.
        let blocks = unsafe { std::slice::from_raw_parts(ptr, n) };
        Ok(f(blocks))
    }

    /// The weight dequantized to f32 `[rows, cols]` (the dense path, and tests).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        fn run<B: WeightBlock>(blocks: &[B]) -> Vec<f32> {
            let mut out = Vec::with_capacity(blocks.len() * BLOCK);
            for b in blocks {
                out.extend_from_slice(&b.dequantize());
            }
            out
        }
        match self.kind {
            Kind::Q4_1 => self.with_blocks(run::<BlockQ4_1>),
            Kind::Q8_0 => self.with_blocks(run::<BlockQ8_0>),
        }
    }

    /// `x W^T` for f32 `x` of shape `[tokens, cols]` on the CPU; returns `[tokens, rows]`.
    /// With many rows the weight is dequantized and multiplied in f32 (same weights, exact
    /// activations).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            bail!(
                "QuantMatrix: input has {k} features, the weight {}",
                self.cols
            );
        }
        if x.dtype() != DType::F32 || !x.device().is_cpu() {
            bail!("QuantMatrix: takes f32 activations on the CPU");
        }
        if m >= self.dense_min_rows() {
            let w = Tensor::from_vec(self.dequantize()?, (self.rows, self.cols), &Device::Cpu)?;
            return x.matmul(&w.t()?);
        }
        let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.matmul(&x, m, Kernel::detect())?;
        Tensor::from_vec(out, (m, self.rows), &Device::Cpu)
    }

    /// `x W^T` for `x` of `m` rows, with the given kernel; `[m, rows]` row-major.
    pub(crate) fn matmul(&self, x: &[f32], m: usize, kernel: Kernel) -> Result<Vec<f32>> {
        if x.len() != m * self.cols {
            bail!(
                "QuantMatrix: {} activations for {m} rows of {}",
                x.len(),
                self.cols
            );
        }
        let xq: Vec<BlockQ8_1> = x.chunks_exact(BLOCK).map(quantize_q8_1).collect();
        let (rows, cols) = (self.rows, self.cols);
        match self.kind {
            Kind::Q4_1 => self.with_blocks(|w: &[BlockQ4_1]| matmul(w, rows, cols, &xq, kernel)),
            Kind::Q8_0 => self.with_blocks(|w: &[BlockQ8_0]| matmul(w, rows, cols, &xq, kernel)),
        }
    }
}

/// `x W^T` for a `[rows, cols]` weight `w` and quantized activations `xq` (whole rows of
/// `cols / 32` blocks); `[m, rows]` row-major.
fn matmul<B: WeightBlock>(
    w: &[B],
    rows: usize,
    cols: usize,
    xq: &[BlockQ8_1],
    kernel: Kernel,
) -> Vec<f32> {
    let kb = cols / BLOCK;
    let m = xq.len() / kb;
    if m == 0 {
        return Vec::new();
    }
    // Transposed output: one weight row's dot products with every activation row are
    // contiguous, so each task owns a plain slice.
    let mut out_t = vec![0f32; rows * m];
    // About 16k multiply-adds per task at least, so short rows do not drown in overhead.
    let min_rows = (16384 / (cols * m).max(1)).max(1);
    out_t
        .par_chunks_mut(m)
        .with_min_len(min_rows)
        .zip(w.par_chunks(kb).with_min_len(min_rows))
        .for_each(|(dst, w)| kernel.dot_rows(w, xq, kb, dst));
    if m == 1 {
        return out_t;
    }
    let mut out = vec![0f32; m * rows];
    for (j, row) in out_t.chunks_exact(m).enumerate() {
        for (i, v) in row.iter().enumerate() {
            out[i * rows + j] = *v;
        }
    }
    out
}

/// Quantizes 32 activations to Q8_1 as ggml does (`quantize_row_q8_1_ref`; its `qs` and
/// `d` are `quantize_row_q8_0_ref`'s).
pub(crate) fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; BLOCK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 {
        qs,
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(sum as f32 * d).to_f32(),
    }
}

/// Which inner loop computes the dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// Plain Rust.
    Portable,
    /// AVX2 + FMA (only constructed on a CPU that has them).
    Avx2(quant_avx2::Avx2),
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn detect() -> Self {
        match quant_avx2::Avx2::detect() {
            Some(k) => Kernel::Avx2(k),
            None => Kernel::Portable,
        }
    }

    /// `dst[i] = dot(w, xq row i)` for one weight row `w` of `kb` blocks.
    fn dot_rows<B: WeightBlock>(self, w: &[B], xq: &[BlockQ8_1], kb: usize, dst: &mut [f32]) {
        match self {
            Kernel::Portable => {
                for (d, x) in dst.iter_mut().zip(xq.chunks_exact(kb)) {
                    *d = B::dot(w, x);
                }
            }
            Kernel::Avx2(k) => k.dot_rows(w, xq, kb, dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    use rand::{Rng, SeedableRng};

    const TYPES: [GgmlDType; 2] = [GgmlDType::Q4_1, GgmlDType::Q8_0];

    fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// A random `[rows, cols]` weight: Q4_1 quantized from uniform values, Q8_0 made of
    /// random blocks (every int8 value, -128 included; scales from 1/1000 to 1/100).
    fn weight(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> (Arc<QTensor>, QuantMatrix) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let q = if dtype == GgmlDType::Q8_0 {
            let mut bytes = Vec::new();
            for _ in 0..rows * cols / BLOCK {
                bytes.extend(f16::from_f32(rng.random_range(1e-3..1e-2)).to_le_bytes());
                bytes.extend((0..BLOCK).map(|_| rng.random::<u8>()));
            }
            qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &Device::Cpu).unwrap()
        } else {
            let w = random(&mut rng, rows * cols);
            let w = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
            QTensor::quantize(&w, dtype).unwrap()
        };
        let q = Arc::new(q);
        (q.clone(), QuantMatrix::from_gguf(q).unwrap())
    }

    fn values(t: Result<Tensor>) -> Vec<f32> {
        t.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Whether candle 0.11 multiplies Q8_0 weights with its repacked VNNI kernels here
    /// (its `repack_x86::level`: AVX512-VNNI, or AVX-VNNI with AVX2).
    fn candle_repacks_q8_0() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni"))
                || (is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2"))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn dequantize_equals_candles() {
        for dtype in TYPES {
            let (q, m) = weight(dtype, 7, 96, 1);
            let theirs = values(q.dequantize(&Device::Cpu));
            assert_eq!(m.dequantize().unwrap(), theirs, "{dtype:?}");
            assert_eq!(m.byte_size(), q.storage_size_in_bytes());
            assert_eq!(m.dims(), (7, 96));
        }
    }

    #[test]
    fn every_kernel_matches_candles_qmatmul_and_the_dequantized_matmul() {
        let avx2 = quant_avx2::Avx2::detect().map(Kernel::Avx2);
        let mut kernels = vec![Kernel::Portable];
        kernels.extend(avx2);
        // Weight rows not a multiple of anything; activation rows around the 4-row groups
        // and the dense switch (`matmul` itself has none).
        let shapes = [(37, 64), (130, 576), (64, 1536)];
        for dtype in TYPES {
            for (i, m) in [1, 3, 4, 5, 63, 64, 65].into_iter().enumerate() {
                let (rows, cols) = shapes[i % shapes.len()];
                let (q, w) = weight(dtype, rows, cols, (rows + m) as u64);
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let x = random(&mut rng, m * cols);
                let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
                let candle = values(QMatMul::from_arc(q).unwrap().forward(&xt));
                let wd = Tensor::from_vec(w.dequantize().unwrap(), (rows, cols), &Device::Cpu);
                let dense = values(xt.matmul(&wd.unwrap().t().unwrap()));
                let case = format!("{dtype:?} [{rows}, {cols}] x {m} rows");
                for &k in &kernels {
                    let ours = w.matmul(&x, m, k).unwrap();
                    // Q8_0: ggml's arithmetic, as candle's (except on CPUs with AVX-VNNI,
                    // where candle repacks Q8_0 weights and quantizes activations to
                    // 256-value Q8_K blocks instead); Q4_1: the same integer sums as
                    // candle's scalar path, whose activation scales are not rounded through
                    // f16. Either way f32 sums in another order.
                    let tol = match dtype {
                        GgmlDType::Q8_0 if candle_repacks_q8_0() => 1e-2,
                        GgmlDType::Q8_0 => 1e-5,
                        _ => 2e-3,
                    };
                    let e = max_rel_err(&ours, &candle);
                    assert!(e < tol, "{k:?} vs candle, {case}: {e}");
                    // Against exact weights: the activations' 8-bit quantization error.
                    assert!(max_rel_err(&ours, &dense) < 3e-2, "{k:?} vs dense, {case}");
                }
                if let Some(k) = avx2 {
                    let (a, p) = (w.matmul(&x, m, k), w.matmul(&x, m, Kernel::Portable));
                    assert!(
                        max_rel_err(&a.unwrap(), &p.unwrap()) < 1e-5,
                        "avx2 vs portable, {case}"
                    );
                    // candle's AVX2 Q8_0 dot product is ggml's, summed in the same order: the
                    // same bits (where candle does not take its VNNI path instead).
                    if dtype == GgmlDType::Q8_0 && !candle_repacks_q8_0() {
                        assert_eq!(
                            w.matmul(&x, m, k).unwrap(),
                            candle,
                            "avx2 vs candle, {case}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn forward_checks_its_input() {
        for dtype in TYPES {
            let (_, w) = weight(dtype, 4, 64, 3);
            let x = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
            assert!(w.forward(&x).is_err());
            let x = Tensor::zeros((2, 64), DType::F16, &Device::Cpu).unwrap();
            assert!(w.forward(&x).is_err());
            let x = Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(w.forward(&x).unwrap().dims(), &[2, 4]);
            let x = Tensor::ones((0, 64), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(w.forward(&x).unwrap().dims(), &[0, 4]);
            // Both sides of the dense switch give the same product, up to the 8-bit
            // activations.
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            let rows = w.dense_min_rows() + 1;
            let x = random(&mut rng, rows * 64);
            let xt = Tensor::from_vec(x.clone(), (rows, 64), &Device::Cpu).unwrap();
            let dense = values(w.forward(&xt));
            assert_eq!(dense.len(), rows * 4);
            let ours = w.matmul(&x, rows, Kernel::Portable).unwrap();
            assert!(max_rel_err(&ours, &dense) < 3e-2, "{dtype:?}");
        }
    }

    #[test]
    fn from_gguf_takes_only_2d_tensors_of_a_supported_type() {
        let w = Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(QuantMatrix::from_gguf(Arc::new(q)).is_err());
        let w = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert!(QuantMatrix::from_gguf(Arc::new(q)).is_err());
        assert!(QuantMatrix::supports(GgmlDType::Q8_0));
        assert!(!QuantMatrix::supports(GgmlDType::Q4K));
    }
}

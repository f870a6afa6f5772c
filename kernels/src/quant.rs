//! Quantized matmul on the CPU for the GGUF block types whose candle CPU path is scalar
//! code: [`QuantMatrix`] holds a weight's blocks exactly as the GGUF file stores them and
//! multiplies f32 activations by it with wick's own AVX2 dot products (a portable path
//! elsewhere).
//!
//! Q4_1 is the only such type so far (our test model's type; candle 0.11's Q4_1 dot product
//! on x86 is `vec_dot_unopt`). candle already has AVX2 for Q4_0, Q8_0 and Q2_K-Q6_K, so
//! those stay with candle's `QMatMul`; Q5_0/Q5_1 would be next. AVX-512 is not used: the
//! machines this was written and measured on report none, and code that no machine here
//! can run is not written.
//!
//! The arithmetic is ggml's (`ggml_vec_dot_q4_1_q8_1`): each row of activations is
//! quantized to Q8_1 blocks (32 int8 values, a scale `d` and `s = d * sum(q)`, both rounded
//! through f16 as ggml stores them), and a block's dot product is
//! `d_w * d_x * sum(q_w * q_x) + m_w * s_x`. The AVX2 and portable paths compute the same
//! integer sums; they differ from each other only in the order of the f32 additions.
//!
//! Invariant: a [`QuantMatrix`] holds exactly `rows * cols / 32` blocks; `cols` is a
//! multiple of 32 (checked in [`QuantMatrix::from_gguf`]).

use crate::quant_avx2;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::f16;
use rayon::prelude::*;

/// Values per quantization block (Q4_1 and Q8_1).
pub(crate) const BLOCK: usize = 32;
/// Bytes of one Q4_1 block: f16 `d`, f16 `m`, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

/// From this many activation rows on (prefill chunks), [`QuantMatrix::forward`] dequantizes
/// the weight and runs candle's f32 matmul instead: at 64 rows the two cost the same and at
/// 256 the dense path takes 2/3 of the time (quant_matmul_bench, 2-core x86-64 with AVX2).
const DENSE_MIN_ROWS: usize = 64;

/// One Q4_1 block, as stored in GGUF: value `i` is `d * q_i + m`; byte `j` of `qs` holds
/// `q_j` in its low nibble and `q_{j+16}` in its high nibble.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct BlockQ4_1 {
    pub(crate) d: f16,
    pub(crate) m: f16,
    pub(crate) qs: [u8; 16],
}

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

/// A `[rows, cols]` weight kept in its GGUF block type, multiplied on the CPU.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    blocks: Vec<BlockQ4_1>,
}

impl QuantMatrix {
    /// True if `dtype` has a wick CPU kernel (candle's `QMatMul` serves the others).
    pub fn supports(dtype: GgmlDType) -> bool {
        dtype == GgmlDType::Q4_1
    }

    /// Takes a copy of a 2-D CPU `QTensor` of a supported type (`[rows, cols]`, the
    /// `[out, in]` of a projection).
    pub fn from_gguf(q: &QTensor) -> Result<Self> {
        if !Self::supports(q.dtype()) {
            bail!("QuantMatrix: no CPU kernel for {:?}", q.dtype());
        }
        if !q.device().is_cpu() {
            bail!("QuantMatrix: the tensor is not on the CPU");
        }
        let (rows, cols) = q.shape().dims2()?;
        Self::from_q4_1_bytes(&q.data()?, rows, cols)
    }

    /// From the raw bytes of a `[rows, cols]` Q4_1 tensor.
    pub(crate) fn from_q4_1_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK) {
            bail!("QuantMatrix: {cols} columns are not a multiple of {BLOCK}");
        }
        let n = rows * cols / BLOCK;
        if bytes.len() != n * Q4_1_BYTES {
            bail!(
                "QuantMatrix: {} bytes for [{rows}, {cols}] Q4_1 (expected {})",
                bytes.len(),
                n * Q4_1_BYTES
            );
        }
        let blocks = bytes
            .chunks_exact(Q4_1_BYTES)
            .map(|b| {
                let mut qs = [0u8; 16];
                qs.copy_from_slice(&b[4..]);
                BlockQ4_1 {
                    d: f16::from_le_bytes([b[0], b[1]]),
                    m: f16::from_le_bytes([b[2], b[3]]),
                    qs,
                }
            })
            .collect();
        Ok(Self { rows, cols, blocks })
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes of the blocks (the GGUF tensor's size).
    pub fn byte_size(&self) -> usize {
        self.blocks.len() * Q4_1_BYTES
    }

    /// The weight dequantized to f32 `[rows, cols]` (for tests).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in &self.blocks {
            let (d, m) = (b.d.to_f32(), b.m.to_f32());
            out.extend(b.qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
            out.extend(b.qs.iter().map(|&q| f32::from(q >> 4) * d + m));
        }
        out
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
        if m >= DENSE_MIN_ROWS {
            let w = Tensor::from_vec(self.dequantize(), (self.rows, self.cols), &Device::Cpu)?;
            return x.matmul(&w.t()?);
        }
        let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let out = self.matmul(&x, m, Kernel::detect());
        Tensor::from_vec(out, (m, self.rows), &Device::Cpu)
    }

    /// `x W^T` for `x` of `m` rows, with the given kernel; `[m, rows]` row-major.
    pub(crate) fn matmul(&self, x: &[f32], m: usize, kernel: Kernel) -> Vec<f32> {
        let kb = self.cols / BLOCK;
        let xq: Vec<BlockQ8_1> = x.chunks_exact(BLOCK).map(quantize_q8_1).collect();
        // Transposed output: one weight row's dot products with every activation row are
        // contiguous, so each task owns a plain slice.
        let mut out_t = vec![0f32; self.rows * m];
        // About 16k multiply-adds per task at least, so short rows do not drown in overhead.
        let min_rows = (16384 / (self.cols * m).max(1)).max(1);
        out_t
            .par_chunks_mut(m)
            .with_min_len(min_rows)
            .zip(self.blocks.par_chunks(kb).with_min_len(min_rows))
            .for_each(|(dst, w)| kernel.dot_rows(w, &xq, kb, dst));
        if m == 1 {
            return out_t;
        }
        let mut out = vec![0f32; m * self.rows];
        for (j, row) in out_t.chunks_exact(m).enumerate() {
            for (i, v) in row.iter().enumerate() {
                out[i * self.rows + j] = *v;
            }
        }
        out
    }
}

/// Quantizes 32 activations to Q8_1 as ggml does (`quantize_row_q8_1_ref`).
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
    fn dot_rows(self, w: &[BlockQ4_1], xq: &[BlockQ8_1], kb: usize, dst: &mut [f32]) {
        match self {
            Kernel::Portable => {
                for (d, x) in dst.iter_mut().zip(xq.chunks_exact(kb)) {
                    *d = dot_portable(w, x);
                }
            }
            Kernel::Avx2(k) => k.dot_rows(w, xq, kb, dst),
        }
    }
}

/// One Q4_1 row against one Q8_1 row, in plain Rust.
fn dot_portable(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    use rand::{Rng, SeedableRng};

    fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn q4_1(rows: usize, cols: usize, seed: u64) -> (QTensor, QuantMatrix) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let w =
            Tensor::from_vec(random(&mut rng, rows * cols), (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let m = QuantMatrix::from_gguf(&q).unwrap();
        (q, m)
    }

    fn values(t: Result<Tensor>) -> Vec<f32> {
        t.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    #[test]
    fn dequantize_equals_candles() {
        let (q, m) = q4_1(7, 96, 1);
        let theirs = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
        assert_eq!(m.dequantize(), theirs.to_vec1::<f32>().unwrap());
        assert_eq!(m.byte_size(), q.storage_size_in_bytes());
    }

    #[test]
    fn every_kernel_matches_candles_qmatmul_and_the_dequantized_matmul() {
        let mut kernels = vec![Kernel::Portable];
        kernels.extend(quant_avx2::Avx2::detect().map(Kernel::Avx2));
        // Rows not a multiple of anything; 1, 3 and 17 activation rows (decode, a tail of
        // the 4-row groups, prefill).
        for (rows, cols, m) in [(37, 64, 1), (130, 576, 3), (64, 1536, 17)] {
            let (q, w) = q4_1(rows, cols, rows as u64);
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let x = random(&mut rng, m * cols);
            let xt = Tensor::from_vec(x.clone(), (m, cols), &Device::Cpu).unwrap();
            let candle = values(QMatMul::from_qtensor(q).unwrap().forward(&xt));
            let wd = Tensor::from_vec(w.dequantize(), (rows, cols), &Device::Cpu).unwrap();
            let dense = values(xt.matmul(&wd.t().unwrap()));
            for &k in &kernels {
                let ours = w.matmul(&x, m, k);
                // Same integer sums as candle's scalar path; only f32 rounding differs
                // (activation scales rounded as ggml does, f32 sums in another order).
                assert!(max_rel_err(&ours, &candle) < 2e-3, "{k:?} vs candle");
                // Against exact weights: the activations' 8-bit quantization error.
                assert!(max_rel_err(&ours, &dense) < 3e-2, "{k:?} vs dense");
            }
            if kernels.len() == 2 {
                let (a, p) = (
                    w.matmul(&x, m, kernels[1]),
                    w.matmul(&x, m, Kernel::Portable),
                );
                assert!(max_rel_err(&a, &p) < 1e-5, "avx2 vs portable");
            }
        }
    }

    #[test]
    fn forward_checks_its_input() {
        let (_, w) = q4_1(4, 64, 3);
        let x = Tensor::zeros((2, 32), DType::F32, &Device::Cpu).unwrap();
        assert!(w.forward(&x).is_err());
        let x = Tensor::zeros((2, 64), DType::F16, &Device::Cpu).unwrap();
        assert!(w.forward(&x).is_err());
        let x = Tensor::ones((2, 64), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(w.forward(&x).unwrap().dims(), &[2, 4]);
        // Both sides of the dense switch give the same product, up to the 8-bit activations.
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let rows = DENSE_MIN_ROWS + 1;
        let x = random(&mut rng, rows * 64);
        let xt = Tensor::from_vec(x.clone(), (rows, 64), &Device::Cpu).unwrap();
        let dense = values(w.forward(&xt));
        assert_eq!(dense.len(), rows * 4);
        assert!(max_rel_err(&w.matmul(&x, rows, Kernel::Portable), &dense) < 3e-2);
        assert!(QuantMatrix::from_q4_1_bytes(&[0; 19], 1, 32).is_err());
        assert!(QuantMatrix::from_q4_1_bytes(&[0; 20], 1, 31).is_err());
    }
}

//! The AVX2 inner loop of [`crate::quant`]: one weight row (Q4_1 or Q8_0 blocks) against
//! Q8_1 activation rows, four rows at a time so that each weight block is loaded and
//! unpacked once per four activation rows.
//!
//! Per block, the weight's 32 values become 32 unsigned bytes that `maddubs` multiplies
//! with 32 signed activation bytes into pairwise i16 sums, `madd` widens them to eight i32
//! sums, and one FMA adds those, scaled by `d_w * d_x`, to an f32 accumulator:
//!
//! - Q4_1: the 16 bytes of nibbles unpack to 32 unsigned bytes (low nibbles, then high: the
//!   activations' order); pair sums are at most 2 * 15 * 128, no saturation. `m_w * s_x`
//!   is summed apart.
//! - Q8_0: signed times signed, which `maddubs` does not take, so (ggml's trick) the weight
//!   goes in as `|w|` and the activation as `sign(x, w)`: `x` negated where `w < 0`, zeroed
//!   where `w == 0`. `|w|` is computed once per block; activations lie in [-127, 127], so
//!   pair sums are at most 2 * 128 * 127, no saturation.
//!
//! Invariant: an [`Avx2`] exists only on an x86-64 CPU with AVX2, FMA and F16C
//! ([`Avx2::detect`] is its only constructor); that is what makes calling the
//! `#[target_feature]` functions sound.

use crate::quant::BlockQ8_1;

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx2Block;

/// A weight block the AVX2 loop can multiply. Off x86-64 no [`Avx2`] exists, so every type
/// is one.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Avx2Block {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Avx2Block for T {}

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Avx2(Private);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Private {
    #[cfg(target_arch = "x86_64")]
    Detected,
}

impl Avx2 {
    /// `Some` on a CPU with AVX2, FMA and F16C.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            return Some(Avx2(Private::Detected));
        }
        None
    }

    /// `dst[i] = dot(w, xq[i * kb..][..kb])` for every `i < dst.len()`.
    ///
    /// Panics if `w` has fewer than `kb` blocks or `xq` fewer than `dst.len() * kb`.
    pub(crate) fn dot_rows<B: Avx2Block>(
        self,
        w: &[B],
        xq: &[BlockQ8_1],
        kb: usize,
        dst: &mut [f32],
    ) {
        let (w, xq) = (&w[..kb], &xq[..dst.len() * kb]);
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only constructed by `detect`, on a CPU with the features
            // `x86::dot_rows` is compiled for; the slices' lengths were checked above.
            Private::Detected => unsafe { x86::dot_rows(w, xq, kb, dst) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
    use std::arch::x86_64::*;

    /// A weight block the AVX2 loop can multiply: unpacked into registers once, then
    /// multiplied with up to four activation blocks.
    pub(crate) trait Avx2Block: Sized {
        /// The block as the loop keeps it.
        type Unpacked: Copy;

        /// # Safety
        /// The CPU has AVX2, FMA and F16C.
        unsafe fn unpack(&self) -> Self::Unpacked;

        /// Adds the block's dot product with `x` to `acc`.
        ///
        /// # Safety
        /// As [`Avx2Block::unpack`].
        unsafe fn accumulate(w: Self::Unpacked, x: &BlockQ8_1, acc: &mut Acc);
    }

    /// One activation row's running dot product: FMA'd block sums, plus a scalar part
    /// (Q4_1's `m_w * s_x`).
    #[derive(Clone, Copy)]
    pub(crate) struct Acc {
        v: __m256,
        s: f32,
    }

    impl Acc {
        /// # Safety
        /// The CPU has AVX.
        #[inline(always)]
        unsafe fn zero() -> Self {
            // SAFETY: the caller's.
            Acc {
                v: unsafe { _mm256_setzero_ps() },
                s: 0.0,
            }
        }

        /// The dot product.
        ///
        /// # Safety
        /// The CPU has AVX.
        #[inline(always)]
        unsafe fn sum(self) -> f32 {
            // SAFETY: the caller's.
            unsafe {
                let v = self.v;
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s) + self.s
            }
        }
    }

    /// `acc += sums(maddubs(u, s)) * d` for 32 unsigned bytes `u` and 32 signed `s`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline(always)]
    unsafe fn fma_block(u: __m256i, s: __m256i, d: f32, acc: __m256) -> __m256 {
        // SAFETY: the caller's.
        unsafe {
            let pairs = _mm256_maddubs_epi16(u, s);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
            _mm256_fmadd_ps(sums, _mm256_set1_ps(d), acc)
        }
    }

    /// The activation block's 32 int8 values.
    ///
    /// # Safety
    /// The CPU has AVX.
    #[inline(always)]
    unsafe fn load(x: &BlockQ8_1) -> __m256i {
        // SAFETY: `qs` is 32 readable bytes (an unaligned load); AVX is the caller's.
        unsafe { _mm256_loadu_si256(x.qs.as_ptr().cast()) }
    }

    impl Avx2Block for BlockQ4_1 {
        /// The nibbles as 32 unsigned bytes, `d`, `m`.
        type Unpacked = (__m256i, f32, f32);

        #[inline(always)]
        unsafe fn unpack(&self) -> Self::Unpacked {
            let bits = u32::from(self.d.to_bits()) | (u32::from(self.m.to_bits()) << 16);
            // SAFETY: `qs` is 16 readable bytes (an unaligned load); AVX2 and F16C are the
            // caller's.
            unsafe {
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
                let bytes = _mm_loadu_si128(self.qs.as_ptr().cast());
                let mask = _mm_set1_epi8(0x0F);
                let lo = _mm_and_si128(bytes, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                (
                    _mm256_set_m128i(hi, lo),
                    _mm_cvtss_f32(dm),
                    _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1)),
                )
            }
        }

        #[inline(always)]
        unsafe fn accumulate((q4, d, m): Self::Unpacked, x: &BlockQ8_1, acc: &mut Acc) {
            // SAFETY: the caller's.
            acc.v = unsafe { fma_block(q4, load(x), d * x.d, acc.v) };
            acc.s += m * x.s;
        }
    }

    impl Avx2Block for BlockQ8_0 {
        /// `|q|` as unsigned bytes, `q`, `d`.
        type Unpacked = (__m256i, __m256i, f32);

        #[inline(always)]
        unsafe fn unpack(&self) -> Self::Unpacked {
            // SAFETY: `qs` is 32 readable bytes (an unaligned load); AVX2 and F16C are the
            // caller's.
            unsafe {
                let q = _mm256_loadu_si256(self.qs.as_ptr().cast());
                let d = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(self.d.to_bits())));
                (_mm256_sign_epi8(q, q), q, _mm_cvtss_f32(d))
            }
        }

        #[inline(always)]
        unsafe fn accumulate((abs, q, d): Self::Unpacked, x: &BlockQ8_1, acc: &mut Acc) {
            // SAFETY: the caller's.
            acc.v = unsafe { fma_block(abs, _mm256_sign_epi8(load(x), q), d * x.d, acc.v) };
        }
    }

    /// See [`super::Avx2::dot_rows`]; `w.len() == kb`, `xq.len() == dst.len() * kb`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<B: Avx2Block>(
        w: &[B],
        xq: &[BlockQ8_1],
        kb: usize,
        dst: &mut [f32],
    ) {
        let mut rows = dst.chunks_exact_mut(4);
        let mut x = xq.chunks_exact(4 * kb);
        for (d, x) in (&mut rows).zip(&mut x) {
            // SAFETY: this function's features are the callee's.
            d.copy_from_slice(&unsafe { dot4(w, x, kb) });
        }
        for (d, x) in rows
            .into_remainder()
            .iter_mut()
            .zip(x.remainder().chunks_exact(kb))
        {
            // SAFETY: as above.
            *d = unsafe { dot1(w, x) };
        }
    }

    /// One activation row.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[inline(always)]
    unsafe fn dot1<B: Avx2Block>(w: &[B], x: &[BlockQ8_1]) -> f32 {
        // SAFETY: the caller's.
        unsafe {
            let mut acc = Acc::zero();
            for (w, x) in w.iter().zip(x) {
                B::accumulate(w.unpack(), x, &mut acc);
            }
            acc.sum()
        }
    }

    /// Four activation rows (`x` holds them one after another, `kb` blocks each).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C.
    #[inline(always)]
    unsafe fn dot4<B: Avx2Block>(w: &[B], x: &[BlockQ8_1], kb: usize) -> [f32; 4] {
        let (x0, rest) = x.split_at(kb);
        let (x1, rest) = rest.split_at(kb);
        let (x2, x3) = rest.split_at(kb);
        // SAFETY: the caller's.
        unsafe {
            let mut acc = [Acc::zero(); 4];
            for (b, w) in w.iter().enumerate() {
                let u = w.unpack();
                for (acc, x) in acc.iter_mut().zip([&x0[b], &x1[b], &x2[b], &x3[b]]) {
                    B::accumulate(u, x, acc);
                }
            }
            acc.map(|a| a.sum())
        }
    }
}

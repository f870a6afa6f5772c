//! The AVX2 inner loop of [`crate::quant`]: one Q4_1 weight row against Q8_1 activation
//! rows, four rows at a time so that each weight block is loaded and unpacked once per four
//! activation rows.
//!
//! Per block: the 16 bytes of nibbles are unpacked into 32 unsigned bytes (low nibbles,
//! then high nibbles: the order of the activations' int8 values), `maddubs` multiplies
//! them with the int8 activations into pairwise i16 sums (at most 2 * 15 * 128, no
//! saturation), `madd` widens to eight i32 sums, and one FMA adds them, scaled by
//! `d_w * d_x`, to an f32 accumulator. `m_w * s_x` is summed apart.
//!
//! Invariant: an [`Avx2`] exists only on an x86-64 CPU with AVX2, FMA and F16C
//! ([`Avx2::detect`] is its only constructor); that is what makes calling the
//! `#[target_feature]` functions sound.

use crate::quant::{BlockQ4_1, BlockQ8_1};

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
    pub(crate) fn dot_rows(self, w: &[BlockQ4_1], xq: &[BlockQ8_1], kb: usize, dst: &mut [f32]) {
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
    use super::{BlockQ4_1, BlockQ8_1};
    use std::arch::x86_64::*;

    /// See [`super::Avx2::dot_rows`]; `w.len() == kb`, `xq.len() == dst.len() * kb`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows(w: &[BlockQ4_1], xq: &[BlockQ8_1], kb: usize, dst: &mut [f32]) {
        let mut rows = dst.chunks_exact_mut(4);
        let mut x = xq.chunks_exact(4 * kb);
        for (d, x) in (&mut rows).zip(&mut x) {
            d.copy_from_slice(&dot4(w, x, kb));
        }
        for (d, x) in rows
            .into_remainder()
            .iter_mut()
            .zip(x.remainder().chunks_exact(kb))
        {
            *d = dot1(w, x);
        }
    }

    /// The block's `d` and `m` as f32.
    #[inline(always)]
    fn scales(b: &BlockQ4_1) -> (f32, f32) {
        let bits = u32::from(b.d.to_bits()) | (u32::from(b.m.to_bits()) << 16);
        // SAFETY: only reached from `dot_rows`, which runs with F16C enabled.
        let v = unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)) };
        // SAFETY: as above (SSE, part of x86-64).
        unsafe { (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1))) }
    }

    /// The 32 nibbles of a block as unsigned bytes, in the activations' order.
    #[inline(always)]
    fn unpack(b: &BlockQ4_1) -> __m256i {
        // SAFETY: `qs` is 16 readable bytes (an unaligned load); AVX2 is enabled by the
        // only caller chain (`dot_rows`).
        unsafe {
            let bytes = _mm_loadu_si128(b.qs.as_ptr().cast());
            let mask = _mm_set1_epi8(0x0F);
            let lo = _mm_and_si128(bytes, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
            _mm256_set_m128i(hi, lo)
        }
    }

    /// The eight i32 partial sums of `q4 * x.qs`, as f32.
    #[inline(always)]
    fn products(q4: __m256i, x: &BlockQ8_1) -> __m256 {
        // SAFETY: `qs` is 32 readable bytes (an unaligned load); AVX2 is enabled.
        unsafe {
            let q8 = _mm256_loadu_si256(x.qs.as_ptr().cast());
            let pairs = _mm256_maddubs_epi16(q4, q8);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    /// Sum of the eight lanes.
    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX is enabled (implied by AVX2).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    fn dot1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
        // SAFETY: AVX and FMA are enabled (callers run inside `dot_rows`).
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut mins = 0f32;
            for (w, x) in w.iter().zip(x) {
                let (d, m) = scales(w);
                acc = _mm256_fmadd_ps(products(unpack(w), x), _mm256_set1_ps(d * x.d), acc);
                mins += m * x.s;
            }
            hsum(acc) + mins
        }
    }

    /// Four activation rows (`x` holds them one after another, `kb` blocks each).
    #[inline(always)]
    fn dot4(w: &[BlockQ4_1], x: &[BlockQ8_1], kb: usize) -> [f32; 4] {
        let (x0, rest) = x.split_at(kb);
        let (x1, rest) = rest.split_at(kb);
        let (x2, x3) = rest.split_at(kb);
        // SAFETY: AVX and FMA are enabled (callers run inside `dot_rows`).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut mins = [0f32; 4];
            for (b, w) in w.iter().enumerate() {
                let (d, m) = scales(w);
                let q4 = unpack(w);
                for (r, x) in [&x0[b], &x1[b], &x2[b], &x3[b]].into_iter().enumerate() {
                    acc[r] = _mm256_fmadd_ps(products(q4, x), _mm256_set1_ps(d * x.d), acc[r]);
                    mins[r] += m * x.s;
                }
            }
            [
                hsum(acc[0]) + mins[0],
                hsum(acc[1]) + mins[1],
                hsum(acc[2]) + mins[2],
                hsum(acc[3]) + mins[3],
            ]
        }
    }
}

//! The f32 inner loops of the CPU kernels (dot products, axpy, scale) behind the [`Simd`]
//! trait, in two flavours: [`Portable`] Rust that the compiler vectorizes as it can, and,
//! on x86-64, [`Avx2Fma`] with 256-bit fused multiply-adds.
//!
//! Why intrinsics at all: LLVM vectorizes axpy-like loops well, but not a dot product's
//! running sums (its SLP pass splits them into 2-wide pieces), and the dot product is half
//! of attention's work.
//!
//! Invariant: an [`Avx2Fma`] value exists only on a CPU with AVX2 and FMA
//! ([`Avx2Fma::detect`] is its only constructor), which is what makes its safe methods
//! sound. Kernels take the flavour as a generic parameter, and call sites that want the
//! AVX2 code inlined run inside a `#[target_feature(enable = "avx2,fma")]` function.

/// f32 vector operations over the common length of their slices.
pub(crate) trait Simd: Copy + Send + Sync {
    /// `sum(a[i] * b[i])`.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// Eight dot products of `a` with rows spaced `stride` apart: `[dot(a, row(0)), ...,
    /// dot(a, row(7))]`, `row(j) = rows[j * stride..][..a.len()]`. Panics (never reads out of
    /// bounds) if `rows` is shorter than `7 * stride + a.len()`. One load of `a` serves eight
    /// rows.
    fn dot8(self, a: &[f32], rows: &[f32], stride: usize) -> [f32; 8];
    /// `acc[i] += w * x[i]`.
    fn axpy(self, acc: &mut [f32], w: f32, x: &[f32]);
    /// `acc[i] *= w`.
    fn scale(self, acc: &mut [f32], w: f32);
}

/// Plain Rust, for any CPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

/// Independent partial sums in [`Portable::dot`], so it is not one serial chain.
const LANES: usize = 8;

impl Simd for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
                *s += x * y;
            }
        }
        let [s0, s1, s2, s3, s4, s5, s6, s7] = acc;
        let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) + tail
    }

    #[inline(always)]
    fn dot8(self, a: &[f32], rows: &[f32], stride: usize) -> [f32; 8] {
        std::array::from_fn(|j| self.dot(a, &rows[j * stride..][..a.len()]))
    }

    #[inline(always)]
    fn axpy(self, acc: &mut [f32], w: f32, x: &[f32]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a += w * x;
        }
    }

    #[inline(always)]
    fn scale(self, acc: &mut [f32], w: f32) {
        for a in acc {
            *a *= w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx2Fma;

/// Which flavour a kernel runs with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flavour {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(Avx2Fma),
}

impl Flavour {
    /// The fastest flavour this CPU runs.
    pub(crate) fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = Avx2Fma::detect() {
            return Self::Avx2Fma(simd);
        }
        Self::Portable
    }
}

#[cfg(target_arch = "x86_64")]
// Value intrinsics are safe inside `target_feature` functions only since Rust 1.87; the
// `unsafe` blocks around them keep our rust-version (1.85) building.
#[allow(unused_unsafe)]
mod x86 {
    use super::Simd;
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_castps256_ps128, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_hadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_permute2f128_ps, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32,
        _mm_movehdup_ps, _mm_movehl_ps,
    };

    /// Proof that the CPU has AVX2 and FMA; its methods use them.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Avx2Fma {
        _proof: (),
    }

    impl Avx2Fma {
        /// `Some` on CPUs with AVX2 and FMA (checked at run time, cached by std).
        pub(crate) fn detect() -> Option<Self> {
            let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            ok.then_some(Self { _proof: () })
        }
    }

    impl Simd for Avx2Fma {
        #[inline(always)]
        fn dot(self, a: &[f32], b: &[f32]) -> f32 {
            // SAFETY: `self` exists only if the CPU has AVX2 and FMA (see `detect`).
            unsafe { dot(a, b) }
        }

        #[inline(always)]
        fn dot8(self, a: &[f32], rows: &[f32], stride: usize) -> [f32; 8] {
            // SAFETY: as in `dot`.
            unsafe { dot8(a, rows, stride) }
        }

        #[inline(always)]
        fn axpy(self, acc: &mut [f32], w: f32, x: &[f32]) {
            // SAFETY: as in `dot`.
            unsafe { axpy(acc, w, x) }
        }

        #[inline(always)]
        fn scale(self, acc: &mut [f32], w: f32) {
            // SAFETY: as in `dot`.
            unsafe { scale(acc, w) }
        }
    }

    /// The 8 f32s of `s` from `at`; panics (never reads out of bounds) past its end.
    ///
    /// # Safety
    /// The CPU must have AVX.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn load8(s: &[f32], at: usize) -> __m256 {
        let s = &s[at..at + 8];
        // SAFETY: `s` holds exactly the 8 f32s an unaligned load reads; AVX is enabled.
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }

    /// Writes `v` to the 8 f32s of `s` from `at`; panics past its end.
    ///
    /// # Safety
    /// The CPU must have AVX.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn store8(s: &mut [f32], at: usize, v: __m256) {
        let s = &mut s[at..at + 8];
        // SAFETY: `s` holds exactly the 8 f32s an unaligned store writes; AVX is enabled.
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }

    /// [`Simd::dot`] with 256-bit fused multiply-adds.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        // SAFETY (every block below): AVX2 and FMA are enabled in this function, and all
        // memory access goes through the bounds-checked `load8`.
        let zero = unsafe { _mm256_setzero_ps() };
        // Four independent accumulators keep four fused multiply-adds in flight.
        let (mut s0, mut s1, mut s2, mut s3) = (zero, zero, zero, zero);
        let mut i = 0;
        while i + 32 <= n {
            let (x, y) = (&a[i..i + 32], &b[i..i + 32]);
            unsafe {
                s0 = _mm256_fmadd_ps(load8(x, 0), load8(y, 0), s0);
                s1 = _mm256_fmadd_ps(load8(x, 8), load8(y, 8), s1);
                s2 = _mm256_fmadd_ps(load8(x, 16), load8(y, 16), s2);
                s3 = _mm256_fmadd_ps(load8(x, 24), load8(y, 24), s3);
            }
            i += 32;
        }
        while i + 8 <= n {
            unsafe { s0 = _mm256_fmadd_ps(load8(a, i), load8(b, i), s0) };
            i += 8;
        }
        let mut sum = unsafe {
            let v = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
            let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
            _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
        };
        for (x, y) in a[i..].iter().zip(&b[i..]) {
            sum = x.mul_add(*y, sum);
        }
        sum
    }

    /// [`Simd::dot8`] with 256-bit fused multiply-adds: one accumulator per row, summed
    /// across lanes together at the end (a tree of horizontal adds).
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot8(a: &[f32], rows: &[f32], stride: usize) -> [f32; 8] {
        let n = a.len();
        // The end of the last row; every load below lies before it.
        let end = 7 * stride + n;
        assert!(rows.len() >= end, "dot8: rows too short");
        let base = rows.as_ptr();
        // SAFETY (every block below): AVX2 and FMA are enabled in this function; `a` is read
        // through the bounds-checked `load8`, and row j at `j * stride + i` for `i + 8 <= n`,
        // which is within `rows` as asserted above.
        let load_row = |j: usize, i: usize| unsafe { _mm256_loadu_ps(base.add(j * stride + i)) };
        let zero = unsafe { _mm256_setzero_ps() };
        let (mut v0, mut v1, mut v2, mut v3) = (zero, zero, zero, zero);
        let (mut v4, mut v5, mut v6, mut v7) = (zero, zero, zero, zero);
        let mut i = 0;
        while i + 8 <= n {
            unsafe {
                let x = load8(a, i);
                v0 = _mm256_fmadd_ps(x, load_row(0, i), v0);
                v1 = _mm256_fmadd_ps(x, load_row(1, i), v1);
                v2 = _mm256_fmadd_ps(x, load_row(2, i), v2);
                v3 = _mm256_fmadd_ps(x, load_row(3, i), v3);
                v4 = _mm256_fmadd_ps(x, load_row(4, i), v4);
                v5 = _mm256_fmadd_ps(x, load_row(5, i), v5);
                v6 = _mm256_fmadd_ps(x, load_row(6, i), v6);
                v7 = _mm256_fmadd_ps(x, load_row(7, i), v7);
            }
            i += 8;
        }
        let mut out = [0f32; 8];
        unsafe {
            // hadd(p, q) = [p0+p1, p2+p3, q0+q1, q2+q3 | the same of lanes 4..8].
            let u0 = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
            let u1 = _mm256_hadd_ps(_mm256_hadd_ps(v4, v5), _mm256_hadd_ps(v6, v7));
            // u0 = [sums of lanes 0..4 of v0..v3 | of lanes 4..8], u1 the same for v4..v7.
            let lo = _mm256_permute2f128_ps::<0x20>(u0, u1);
            let hi = _mm256_permute2f128_ps::<0x31>(u0, u1);
            store8(&mut out, 0, _mm256_add_ps(lo, hi));
        }
        if i < n {
            for (j, s) in out.iter_mut().enumerate() {
                let row = &rows[j * stride + i..j * stride + n];
                for (x, y) in a[i..].iter().zip(row) {
                    *s = x.mul_add(*y, *s);
                }
            }
        }
        out
    }

    /// [`Simd::axpy`] with 256-bit fused multiply-adds.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
        let n = acc.len().min(x.len());
        let (acc, x) = (&mut acc[..n], &x[..n]);
        // SAFETY (every block below): AVX2 and FMA are enabled in this function, and all
        // memory access goes through the bounds-checked `load8` / `store8`.
        let wv = unsafe { _mm256_set1_ps(w) };
        let mut i = 0;
        while i + 8 <= n {
            let (a, x) = (&mut acc[i..i + 8], &x[i..i + 8]);
            unsafe { store8(a, 0, _mm256_fmadd_ps(wv, load8(x, 0), load8(a, 0))) };
            i += 8;
        }
        for (a, x) in acc[i..].iter_mut().zip(&x[i..]) {
            *a = w.mul_add(*x, *a);
        }
    }

    /// [`Simd::scale`] on 256-bit registers.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scale(acc: &mut [f32], w: f32) {
        let n = acc.len();
        // SAFETY (every block below): AVX2 is enabled in this function, and all memory
        // access goes through the bounds-checked `load8` / `store8`.
        let wv = unsafe { _mm256_set1_ps(w) };
        let mut i = 0;
        while i + 8 <= n {
            let a = &mut acc[i..i + 8];
            unsafe { store8(a, 0, _mm256_mul_ps(wv, load8(a, 0))) };
            i += 8;
        }
        for a in &mut acc[i..] {
            *a *= w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, f: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * f).sin()).collect()
    }

    /// Every flavour this CPU can run.
    fn check(run: impl Fn(&dyn Fn(&[f32], &[f32]) -> f32, &dyn Fn(&mut [f32], f32, &[f32]))) {
        run(&|a, b| Portable.dot(a, b), &|acc, w, x| {
            Portable.axpy(acc, w, x)
        });
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = Avx2Fma::detect() {
            run(&|a, b| s.dot(a, b), &|acc, w, x| s.axpy(acc, w, x));
        }
    }

    #[test]
    fn flavours_match_naive_for_all_tail_lengths() {
        check(|dot, axpy| {
            for n in 0..100 {
                let (a, b) = (data(n, 0.37), data(n, 0.11));
                let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                assert!((dot(&a, &b) - naive).abs() < 1e-4, "dot, n = {n}");
                let mut acc = b.clone();
                axpy(&mut acc, 0.5, &a);
                for i in 0..n {
                    assert!((acc[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6, "axpy, n = {n}");
                }
            }
        });
    }

    #[test]
    fn dot8_matches_eight_dots_for_all_tail_lengths() {
        type Dot8 = Box<dyn Fn(&[f32], &[f32], usize) -> [f32; 8]>;
        let mut flavours: Vec<Dot8> = vec![Box::new(|a, r, s| Portable.dot8(a, r, s))];
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = Avx2Fma::detect() {
            flavours.push(Box::new(move |a, r, s| simd.dot8(a, r, s)));
        }
        for dot8 in &flavours {
            for n in 0..70 {
                let a = data(n, 0.37);
                // Rows spaced one or three further apart than `a` is long: only the first n
                // elements of each count.
                for stride in [n + 1, n + 3] {
                    let rows = data(7 * stride + n, 0.11);
                    let got = dot8(&a, &rows, stride);
                    for (j, g) in got.iter().enumerate() {
                        let row = &rows[j * stride..][..n];
                        let naive: f32 = a.iter().zip(row).map(|(x, y)| x * y).sum();
                        assert!((g - naive).abs() < 1e-4, "row {j}, n = {n}");
                    }
                }
            }
        }
    }

    #[test]
    fn scale_scales_every_element() {
        for n in [0, 7, 8, 9, 33] {
            let mut a = data(n, 0.2);
            let want: Vec<f32> = a.iter().map(|x| x * 3.0).collect();
            Portable.scale(&mut a, 3.0);
            assert_eq!(a, want);
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = Avx2Fma::detect() {
                let mut b = data(n, 0.2);
                s.scale(&mut b, 3.0);
                assert_eq!(b, want);
            }
        }
    }
}

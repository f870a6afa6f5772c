//! Shared pieces of the CPU implementations: the storage element types the ops accept
//! ([`Elem`]: f32, f16, bf16, all computed in f32) and access to a tensor's contiguous
//! data. The f32 inner loops are in `simd`.
//!
//! Invariant: every slice handed out here is exactly the tensor's elements in row-major
//! order (start offset applied); callers index it with bounds they validated.

use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, WithDType};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A cache/query element type: stored as `Self`, computed with in f32.
pub(crate) trait Elem: WithDType + Send + Sync {
    /// Rounds an f32 result to this type.
    fn from_f32(x: f32) -> Self;

    /// Widens to f32.
    fn into_f32(self) -> f32;

    /// An f32 view of `n` rows of `d` elements; row `i` starts at `start + i * stride` of
    /// `src`. f32 data is borrowed in place; other types are converted into `scratch`.
    fn rows_f32<'a>(
        src: &'a [Self],
        start: usize,
        stride: usize,
        n: usize,
        d: usize,
        scratch: &'a mut Vec<f32>,
    ) -> Rows<'a>;

    /// `dst[i] = dst[i] + delta[i]`, added in f32 and rounded once, over the common length.
    fn add_f32(dst: &mut [Self], delta: &[f32]);
}

/// `n` rows of `d` f32 values spaced `stride` apart in `data`, the first at `start`.
pub(crate) struct Rows<'a> {
    data: &'a [f32],
    start: usize,
    stride: usize,
    d: usize,
}

impl Rows<'_> {
    /// Row `i` (`d` contiguous values).
    #[inline]
    pub(crate) fn row(&self, i: usize) -> &[f32] {
        &self.data[self.start + i * self.stride..][..self.d]
    }

    /// The data from row `i` on (rows past `i` follow at [`Rows::stride`]), as the `rows`
    /// argument of `Simd::dot8`.
    #[inline]
    pub(crate) fn rows_from(&self, i: usize) -> &[f32] {
        &self.data[self.start + i * self.stride..]
    }

    /// Distance between the starts of consecutive rows.
    #[inline]
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }
}

impl Elem for f32 {
    #[inline]
    fn from_f32(x: f32) -> Self {
        x
    }

    #[inline]
    fn into_f32(self) -> f32 {
        self
    }

    fn rows_f32<'a>(
        src: &'a [Self],
        start: usize,
        stride: usize,
        _n: usize,
        d: usize,
        _scratch: &'a mut Vec<f32>,
    ) -> Rows<'a> {
        Rows {
            data: src,
            start,
            stride,
            d,
        }
    }

    #[inline(always)]
    fn add_f32(dst: &mut [Self], delta: &[f32]) {
        for (d, v) in dst.iter_mut().zip(delta) {
            *d += v;
        }
    }
}

macro_rules! half_elem {
    ($t:ty, $widen:path, $add:path) => {
        impl Elem for $t {
            #[inline]
            fn from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }

            #[inline]
            fn into_f32(self) -> f32 {
                self.to_f32()
            }

            #[inline]
            fn rows_f32<'a>(
                src: &'a [Self],
                start: usize,
                stride: usize,
                n: usize,
                d: usize,
                scratch: &'a mut Vec<f32>,
            ) -> Rows<'a> {
                scratch.resize(n * d, 0.0);
                if stride == d {
                    // Back-to-back rows: one conversion.
                    $widen(&src[start..][..n * d], scratch);
                } else if d > 0 {
                    for (i, dst) in scratch.chunks_exact_mut(d).enumerate() {
                        $widen(&src[start + i * stride..][..d], dst);
                    }
                }
                Rows {
                    data: scratch,
                    start: 0,
                    stride: d,
                    d,
                }
            }

            #[inline(always)]
            fn add_f32(dst: &mut [Self], delta: &[f32]) {
                $add(dst, delta)
            }
        }
    };
}

/// f16 to f32 (F16C when the CPU has it, detected by `half`).
#[inline]
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    src.convert_to_f32_slice(dst);
}

/// bf16 to f32: the bits moved to the top half, a loop the compiler vectorizes (with AVX2
/// when inlined into a kernel compiled for it). Unlike `half`, leaves signalling NaNs
/// signalling; arithmetic on them gives NaN all the same.
#[inline(always)]
fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(s.to_bits()) << 16);
    }
}

/// [`Elem::add_f32`] for f16, eight at a time through `half`'s slice conversions (F16C).
#[inline(always)]
fn add_f16(dst: &mut [f16], delta: &[f32]) {
    let n = dst.len().min(delta.len());
    let mut wide = [0f32; 8];
    for (d, v) in dst[..n].chunks_mut(8).zip(delta[..n].chunks(8)) {
        let wide = &mut wide[..d.len()];
        d.convert_to_f32_slice(wide);
        for (w, v) in wide.iter_mut().zip(v) {
            *w += v;
        }
        d.convert_from_f32_slice(wide);
    }
}

/// [`Elem::add_f32`] for bf16: round to nearest even without branches, so the loop
/// vectorizes (the same results as `bf16::from_f32`, NaN included).
#[inline(always)]
fn add_bf16(dst: &mut [bf16], delta: &[f32]) {
    for (d, v) in dst.iter_mut().zip(delta) {
        let x = (f32::from_bits(u32::from(d.to_bits()) << 16) + v).to_bits();
        let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
        let nan = (x >> 16) | 0x40;
        let bits = if x & 0x7fff_ffff > 0x7f80_0000 {
            nan
        } else {
            rounded
        };
        *d = bf16::from_bits(bits as u16);
    }
}

half_elem!(f16, widen_f16, add_f16);
half_elem!(bf16, widen_bf16, add_bf16);

/// Whether the ops accept `dtype` for queries, keys and values.
pub(crate) fn is_float(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The elements of a contiguous CPU tensor given as storage and layout.
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    let data = storage.as_slice::<T>()?;
    match data.get(start..end) {
        Some(s) => Ok(s),
        None => bail!(
            "{what}: layout {start}..{end} outside its storage of {}",
            data.len()
        ),
    }
}

/// The elements of a contiguous CPU tensor given as (locked) storage and layout; errors if
/// the storage lives on another device.
pub(crate) fn storage_slice<'a, T: WithDType>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = storage else {
        bail!("{what} must be on the CPU like the other inputs");
    };
    contiguous_slice(cpu, layout, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_f32_rounds_like_from_f32() {
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            f32::MAX,
            -0.0,
            1e-40,
        ];
        let xs: Vec<f32> = (0..1000)
            .map(|i| (i as f32 * 0.731).sin() * 10f32.powi(i % 9 - 4))
            .chain(specials)
            .collect();
        let delta: Vec<f32> = xs.iter().map(|x| x * 0.37 + 1e-3).collect();
        let mut b: Vec<bf16> = xs.iter().map(|&x| bf16::from_f32(x)).collect();
        let want: Vec<bf16> = b
            .iter()
            .zip(&delta)
            .map(|(y, d)| bf16::from_f32(y.to_f32() + d))
            .collect();
        bf16::add_f32(&mut b, &delta);
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&b), bits(&want));
        let mut h: Vec<f16> = xs.iter().map(|&x| f16::from_f32(x)).collect();
        let want: Vec<f16> = h
            .iter()
            .zip(&delta)
            .map(|(y, d)| f16::from_f32(y.to_f32() + d))
            .collect();
        f16::add_f32(&mut h, &delta);
        for (g, w) in h.iter().zip(&want) {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
        }
    }

    #[test]
    fn half_rows_convert_strided_rows() {
        let src: Vec<bf16> = (0..12).map(|i| bf16::from_f32(i as f32)).collect();
        let mut scratch = Vec::new();
        let rows = bf16::rows_f32(&src, 1, 4, 3, 2, &mut scratch);
        assert_eq!(rows.row(0), &[1.0, 2.0]);
        assert_eq!(rows.row(2), &[9.0, 10.0]);
        let f: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let rows = f32::rows_f32(&f, 1, 4, 3, 2, &mut scratch);
        assert_eq!(rows.row(1), &[5.0, 6.0]);
    }
}

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
}

macro_rules! half_elem {
    ($t:ty) => {
        impl Elem for $t {
            #[inline]
            fn from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }

            #[inline]
            fn into_f32(self) -> f32 {
                self.to_f32()
            }

            fn rows_f32<'a>(
                src: &'a [Self],
                start: usize,
                stride: usize,
                n: usize,
                d: usize,
                scratch: &'a mut Vec<f32>,
            ) -> Rows<'a> {
                scratch.resize(n * d, 0.0);
                for (i, dst) in scratch.chunks_exact_mut(d).enumerate() {
                    src[start + i * stride..][..d].convert_to_f32_slice(dst);
                }
                Rows {
                    data: scratch,
                    start: 0,
                    stride: d,
                    d,
                }
            }
        }
    };
}

half_elem!(f16);
half_elem!(bf16);

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

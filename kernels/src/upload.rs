//! Writing host data into an existing device tensor in place ([`write_u32`]): how a step's
//! metadata reaches persistent device memory in one host-to-device copy, with no
//! allocation. On the CPU it is a copy into the tensor's storage.

use candle_core::{bail, CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};

/// Copies `data` into the first `data.len()` elements of `dst`, a contiguous u32 tensor,
/// in place (one host-to-device copy on a GPU; the copy is ordered on the device's stream
/// after everything already queued, so kernels reading the old contents finish first).
/// Errors if `dst` is not a contiguous u32 tensor with room for `data`.
pub fn write_u32(dst: &Tensor, data: &[u32]) -> Result<()> {
    if dst.dtype() != DType::U32 {
        bail!(
            "write_u32: the destination must be u32, got {:?}",
            dst.dtype()
        );
    }
    if !dst.is_contiguous() {
        bail!("write_u32: the destination must be contiguous");
    }
    if data.len() > dst.elem_count() {
        bail!(
            "write_u32: {} values do not fit a tensor of {}",
            data.len(),
            dst.elem_count()
        );
    }
    if data.is_empty() {
        return Ok(());
    }
    dst.inplace_op1(&WriteU32 { data })
}

/// The in-place op: the host values it writes.
pub(crate) struct WriteU32<'a> {
    pub(crate) data: &'a [u32],
}

impl InplaceOp1 for WriteU32<'_> {
    fn name(&self) -> &'static str {
        "wick_write_u32"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("write_u32: the destination must be contiguous");
        };
        let CpuStorage::U32(all) = storage else {
            bail!("write_u32: the destination must be u32");
        };
        match all
            .get_mut(start..end)
            .and_then(|d| d.get_mut(..self.data.len()))
        {
            Some(dst) => dst.copy_from_slice(self.data),
            None => bail!("write_u32: the destination's layout is outside its storage"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, storage: &mut candle_core::CudaStorage, layout: &Layout) -> Result<()> {
        crate::cuda::memory::write_u32(storage, layout, self.data)
    }
}

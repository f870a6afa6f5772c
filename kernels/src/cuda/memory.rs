//! The CUDA side of [`crate::device_memory`] and [`crate::peak_allocation`] (the driver's
//! free/total query, and the high-water mark of the device's current memory pool), and of
//! [`crate::write_u32`] (one host-to-device copy into existing memory).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::{CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};

/// Free and total memory of `dev`.
pub(crate) fn device_memory(dev: &CudaDevice) -> Result<crate::DeviceMemory> {
    let (free, total) = dev.cuda_stream().context().mem_get_info().w()?;
    Ok(crate::DeviceMemory {
        total: total as u64,
        free: free as u64,
    })
}

/// One attribute of `pool`.
fn pool_attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut value: u64 = 0;
    // SAFETY: `pool` is the device's current pool; the attributes read here are cuuint64_t.
    unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut value as *mut u64).cast()) }
        .result()
        .w()?;
    Ok(value)
}

/// `work`'s peak allocation above the pool's use when it started (see the parent module).
pub(crate) fn peak_allocation<T>(
    dev: &CudaDevice,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<u64>)> {
    let ctx = dev.cuda_stream().context().clone();
    if !ctx.has_async_alloc() {
        return Ok((work()?, None));
    }
    ctx.bind_to_thread().w()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: writes the current pool of the context's device into `pool`.
    unsafe { sys::cuDeviceGetMemPool(&mut pool, ctx.cu_device()) }
        .result()
        .w()?;
    if pool.is_null() {
        bail!("the device has no current memory pool");
    }
    let before = pool_attribute(
        pool,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
    )?;
    let mut zero: u64 = 0;
    // SAFETY: resetting the high-water mark takes a cuuint64_t 0.
    unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            (&mut zero as *mut u64).cast(),
        )
    }
    .result()
    .w()?;
    let out = work()?;
    dev.cuda_stream().synchronize().w()?;
    let high = pool_attribute(
        pool,
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
    )?;
    // SAFETY: releases the pool's unused memory to the device; nothing is in flight.
    unsafe { sys::cuMemPoolTrimTo(pool, 0) }.result().w()?;
    Ok((out, Some(high.saturating_sub(before))))
}

/// Copies `data` into the start of the contiguous u32 `storage` viewed by `layout`, on the
/// device's stream; checked by [`crate::write_u32`].
pub(crate) fn write_u32(storage: &mut CudaStorage, layout: &Layout, data: &[u32]) -> Result<()> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("write_u32: the destination must be contiguous");
    };
    if data.len() > end - start {
        bail!("write_u32: the data does not fit the destination");
    }
    let dev = storage.device.clone();
    let slice = storage.as_cuda_slice_mut::<u32>()?;
    if end > slice.len() {
        bail!("write_u32: the destination's layout is outside its storage");
    }
    let mut dst = slice.slice_mut(start..start + data.len());
    dev.memcpy_htod(data, &mut dst)
}

//! The model's device: how it is set up for serving ([`prepare_device`]), what it has in
//! memory ([`device_memory`]) and how much a piece of work allocates at its peak
//! ([`peak_allocation`]); the last two size the KV cache on a GPU
//! (`--gpu-memory-utilization`). The CPU has neither (`None`): its cache is sized by
//! `--kv-cache-memory` alone.
//!
//! On CUDA the peak is the high-water mark of the device's current memory pool, which
//! candle's allocations go through (cudarc allocates with `cuMemAllocAsync` where the GPU
//! has memory pools, as every GPU wick targets does): reset before the work, read after it
//! has finished, then the pool is trimmed so that what the work freed is free on the device
//! again.

use candle_core::{Device, Result};

/// Sets `device` up for serving. On CUDA: turns off cudarc's per-allocation event tracking
/// for every tensor made from now on (two events recorded around each use of each buffer);
/// wick runs every kernel, copy and cuBLAS call of a device on candle's one stream, where
/// the stream's order already makes those uses safe. Nothing to do on the CPU.
pub fn prepare_device(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        // SAFETY: one stream per device (candle's; wick creates no other), so no tensor is
        // used on another stream than the one that allocated it.
        unsafe { dev.disable_event_tracking() };
    }
    let _ = device;
}

/// A GPU's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// All of it.
    pub total: u64,
    /// Not in use by any process.
    pub free: u64,
}

/// The memory of `device`; `None` on the CPU.
pub fn device_memory(device: &Device) -> Result<Option<DeviceMemory>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return crate::cuda::memory::device_memory(dev).map(Some);
    }
    let _ = device;
    Ok(None)
}

/// Runs `work`, waits for the device, and returns its result with the most memory its
/// allocations held at once, in bytes above what was in use when it started. `None` for
/// the peak on the CPU, or on a GPU that allocates without a memory pool.
pub fn peak_allocation<T>(
    device: &Device,
    work: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<u64>)> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        return crate::cuda::memory::peak_allocation(dev, work);
    }
    let _ = device;
    Ok((work()?, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_has_no_device_memory_and_no_peak() {
        assert_eq!(device_memory(&Device::Cpu).unwrap(), None);
        let (out, peak) = peak_allocation(&Device::Cpu, || Ok(7)).unwrap();
        assert_eq!((out, peak), (7, None));
    }
}

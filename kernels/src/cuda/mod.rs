//! The CUDA side of wick-kernels (feature `cuda`): the fatbins (`sm_90` machine code and
//! PTX) that build.rs compiled from kernels/*.cu, embedded in the library, loaded once per
//! device ([`kernel`]) and launched on candle's `CudaDevice` stream (cudarc). Each op's
//! `cuda_fwd` lands here; the op's public function has already checked shapes, dtypes and
//! devices exactly as for the CPU.
//!
//! Metadata values (slots, block tables, sequence lengths) are checked on the host, as on
//! the CPU, from the host copies that [`crate::SlotMapping`] and
//! [`crate::PagedAttentionMetadata`] keep beside their device tensors: a step reads nothing
//! back from the GPU except the sampled tokens (and requested logprobs) of the sampling op.
//! The LoRA op's [`crate::LoraBatch`] is likewise checked on the host; its kernels read the
//! token slots of the step's upload and the slot ranks the model keeps on the device.

pub(crate) mod attention;
pub(crate) mod cache;
pub(crate) mod fused;
pub(crate) mod graph;
pub(crate) mod lora;
pub(crate) mod memory;
pub(crate) mod sampling;

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaStream, CudaView, LaunchArgs,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One of kernels/*.cu as build.rs compiled it: a fatbin holding `sm_XX` machine code
/// (SASS) for the build's compute capability (90: Hopper) and its PTX, and the PTX alone.
pub(crate) struct KernelModule {
    /// Name of the module (the .cu file's, prefixed `wick_`).
    pub name: &'static str,
    fatbin: &'static [u8],
    ptx: &'static str,
}

macro_rules! kernel_module {
    ($konst:ident, $file:literal) => {
        #[doc = concat!("kernels/", $file, ".cu as built.")]
        pub(crate) const $konst: KernelModule = KernelModule {
            name: concat!("wick_", $file),
            fatbin: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".fatbin")),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}
kernel_module!(RESHAPE_AND_CACHE, "reshape_and_cache");
kernel_module!(LORA, "lora");
kernel_module!(SAMPLING, "sampling");
kernel_module!(FUSED, "fused");
kernel_module!(PAGED_ATTENTION, "paged_attention");

/// A kernel loaded on a device, launched on that device's stream.
pub(crate) struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// A launch of the kernel on the device's stream.
    pub(crate) fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Modules loaded so far, by device.
type Loaded = HashMap<(DeviceId, &'static str), Arc<CudaModule>>;
static LOADED: OnceLock<Mutex<Loaded>> = OnceLock::new();

/// Kernel `name` of `module` on `dev`. The module is loaded once per device, from its
/// fatbin: the driver runs the `sm_90` machine code on Hopper with no JIT compile at start,
/// and compiles the fatbin's PTX on any other GPU. Should the fatbin not load, the PTX is
/// loaded instead (with a warning).
pub(crate) fn kernel(dev: &CudaDevice, module: &KernelModule, name: &str) -> Result<Kernel> {
    let Ok(mut loaded) = LOADED.get_or_init(Default::default).lock() else {
        bail!("the CUDA module cache was poisoned");
    };
    let stream = dev.cuda_stream();
    let key = (dev.id(), module.name);
    let cuda_module = match loaded.get(&key) {
        Some(m) => m.clone(),
        None => {
            let ctx = stream.context();
            let m = match ctx.load_module(Ptx::from_binary(module.fatbin.to_vec())) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(module = module.name, error = %e, "fatbin did not load; loading its PTX");
                    ctx.load_module(Ptx::from_src(module.ptx)).w()?
                }
            };
            loaded.insert(key, m.clone());
            m
        }
    };
    let func = cuda_module.load_function(name).w()?;
    Ok(Kernel { func, stream })
}

/// The elements of a contiguous GPU tensor given as storage and layout.
pub(crate) fn view<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    let slice = storage.as_cuda_slice::<T>()?;
    if end > slice.len() {
        bail!(
            "{what}: layout {start}..{end} outside its storage of {}",
            slice.len()
        );
    }
    Ok(slice.slice(start..end))
}

/// Whether a tensor's first element is 16-byte aligned in its (256-byte aligned) buffer.
pub(crate) fn aligned16(layout: &Layout, elem_size: usize) -> bool {
    (layout.start_offset() * elem_size).is_multiple_of(16)
}

/// A size as the u32 the kernels take, or an error naming it.
pub(crate) fn as_u32(n: usize, what: &str) -> Result<u32> {
    match u32::try_from(n) {
        Ok(n) => Ok(n),
        Err(_) => bail!("{what} = {n} is too large for the CUDA kernels"),
    }
}

//! Device selection: `cpu`, `cuda` or `cuda:N`; by default the first GPU when wick was
//! built with CUDA and one is present, else the CPU.

use crate::{ModelError, Result};
use candle_core::{DType, Device};

/// Picks the device `spec` names, or the default when `None`: the first GPU when this
/// build has CUDA and one is present, else the CPU. Logs the choice (and why a CUDA build
/// fell back to the CPU), and sets the device up for serving
/// ([`wick_kernels::prepare_device`]: on CUDA, no per-allocation event tracking).
pub fn select_device(spec: Option<&str>) -> Result<Device> {
    let device = pick(spec)?;
    wick_kernels::prepare_device(&device);
    tracing::info!(device = %device_name(&device), "selected device");
    Ok(device)
}

fn pick(spec: Option<&str>) -> Result<Device> {
    match spec.map(|s| s.trim().to_ascii_lowercase()) {
        None => {
            if !candle_core::utils::cuda_is_available() {
                return Ok(Device::Cpu);
            }
            match Device::new_cuda(0) {
                Ok(device) => Ok(device),
                Err(e) => {
                    tracing::info!("built with CUDA but no usable GPU ({e}); using the CPU");
                    Ok(Device::Cpu)
                }
            }
        }
        Some(s) if s == "cpu" => Ok(Device::Cpu),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    ModelError::invalid("--device", format!("{s:?}: expected cuda:N"))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(ModelError::invalid(
                    "--device",
                    format!("{s}: this wick was built without CUDA (build with --features cuda)"),
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        Some(s) => Err(ModelError::invalid(
            "--device",
            format!("{s:?}: expected cpu, cuda or cuda:N"),
        )),
    }
}

/// Whether this build can run on CUDA devices (compiled with the `cuda` feature).
pub fn cuda_compiled() -> bool {
    candle_core::utils::cuda_is_available()
}

/// Parses `--dtype`: `auto` (None), `f32`, `f16`/`float16`, `bf16`/`bfloat16`.
pub fn parse_dtype(spec: &str) -> Result<Option<DType>> {
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(None),
        "f32" | "float32" | "float" => Ok(Some(DType::F32)),
        "f16" | "float16" | "half" => Ok(Some(DType::F16)),
        "bf16" | "bfloat16" => Ok(Some(DType::BF16)),
        other => Err(ModelError::invalid(
            "--dtype",
            format!("{other:?}: expected auto, f32, f16 or bf16"),
        )),
    }
}

/// A short name for a device in logs: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

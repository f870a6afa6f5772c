//! With the `cuda` feature, compiles kernels/*.cu with nvcc (for `sm_90`, Hopper, or
//! `CUDA_COMPUTE_CAP` when set) into OUT_DIR, each twice: a fatbin holding the machine code
//! (SASS) for that GPU and the PTX (which the driver compiles for any other GPU), loaded at
//! run time; and the PTX alone, loaded only should the fatbin fail. src/cuda embeds both.
//! Without the feature it does nothing, so CPU builds need no CUDA toolkit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources, each compiled to `OUT_DIR/<name>.fatbin` and `OUT_DIR/<name>.ptx`.
const KERNELS: [&str; 5] = [
    "reshape_and_cache",
    "paged_attention",
    "lora",
    "sampling",
    "fused",
];

/// How to get nvcc, printed when it is missing.
const FIX: &str = "run scripts/install-cuda-toolchain.sh and `source .cache/cuda/env.sh` \
     (a pinned CUDA 13.0 toolchain from PyPI), or put a CUDA toolkit's bin/ on PATH \
     (or set NVCC=/path/to/nvcc), then build again with CUDA_COMPUTE_CAP=90";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=common.cuh");
    if let Err(msg) = build_ptx() {
        eprintln!("wick-kernels: {msg}");
        panic!("wick-kernels: {msg}");
    }
}

fn build_ptx() -> Result<(), String> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let nvcc = find_nvcc().ok_or_else(|| {
        format!("the `cuda` feature needs nvcc (CUDA 13.0) and none was found: {FIX}")
    })?;
    let arch = compute_cap()?;
    for name in KERNELS {
        let src = manifest.join(format!("{name}.cu"));
        println!("cargo:rerun-if-changed={}", src.display());
        let ptx = out_dir.join(format!("{name}.ptx"));
        let fatbin = out_dir.join(format!("{name}.fatbin"));
        let gencode = format!("arch=compute_{arch},code=[sm_{arch},compute_{arch}]");
        let outputs: [(&[&str], &Path); 2] = [
            (&["--ptx", &format!("-arch=compute_{arch}")], &ptx),
            (&["--fatbin", "-gencode", &gencode], &fatbin),
        ];
        for (what, out) in outputs {
            let status = Command::new(&nvcc)
                .args(what)
                .args(["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"])
                .arg("-I")
                .arg(&manifest)
                .arg("-o")
                .arg(out)
                .arg(&src)
                .status()
                .map_err(|e| format!("could not run {}: {e}; {FIX}", nvcc.display()))?;
            if !status.success() {
                return Err(format!("nvcc failed on {} ({status})", src.display()));
            }
        }
    }
    Ok(())
}

/// nvcc from `NVCC`, `CUDA_HOME`/`CUDA_ROOT`/`CUDA_PATH`, `PATH`, or /usr/local/cuda.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let homes = ["CUDA_HOME", "CUDA_ROOT", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|h| PathBuf::from(h).join("bin").join("nvcc"));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nvcc")).collect())
        .unwrap_or_default();
    homes
        .chain(on_path)
        .chain([Path::new("/usr/local/cuda/bin/nvcc").to_path_buf()])
        .find(|p| p.is_file())
}

/// The compute capability to compile for: `CUDA_COMPUTE_CAP` (e.g. 90) or 90. The
/// attention kernels use bf16 `mma.sync`, which needs 80 or more.
fn compute_cap() -> Result<u32, String> {
    let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") else {
        return Ok(90);
    };
    let parsed: u32 = cap
        .trim()
        .parse()
        .map_err(|_| format!("CUDA_COMPUTE_CAP={cap:?} is not a number like 90"))?;
    if parsed < 80 {
        return Err(format!(
            "CUDA_COMPUTE_CAP={parsed}: wick's kernels need compute capability 80 or more (bf16 mma)"
        ));
    }
    Ok(parsed)
}

//! Tests of wick-kernels' ops against naive references written here (dense attention, a
//! per-token LoRA loop).
//!
//! Every test body is a function of a `&Device`; `device_tests!` runs it on the CPU, and on
//! CUDA device 0 as well when the `cuda` feature is on, so the same checks hold the CUDA
//! kernels to the CPU reference's results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod attention;
mod cache;
mod errors;
mod fused;
mod lora;
mod sampling;

//! Times the sampling op on the CPU: `rows` rows of a `vocab`-entry vocabulary, logits
//! drawn from a normal distribution scaled by `scale`, at temperature 1 and top-p 0.9
//! (the workload of BENCHMARKS.md's "Engine step by phase").
//!
//! `cargo run --release -p wick-kernels --example sampling_bench -- [rows] [vocab] [scale] [iters]`
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use std::time::Instant;
use wick_kernels::{sample, RowEdits, RowParams, SamplingBatch};

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: f64| args.get(i).map_or(d, |a| a.parse().unwrap());
    let (rows, vocab) = (arg(1, 64.0) as usize, arg(2, 49152.0) as usize);
    let (scale, iters) = (arg(3, 3.0) as f32, arg(4, 50.0) as usize);
    let logits = (Tensor::randn(0f32, 1.0, (rows, vocab), &Device::Cpu)? * scale as f64)?;
    let mut batch = SamplingBatch::new(vocab);
    for r in 0..rows {
        let p = RowParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: r as u64,
            ..RowParams::greedy()
        };
        batch.push(p, RowEdits::default())?;
    }
    sample(&logits, &batch)?;
    let start = Instant::now();
    for _ in 0..iters {
        sample(&logits, &batch)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3 / iters as f64;
    println!(
        "{rows} rows x {vocab}: {ms:.2} ms per call, {:.3} ms per row",
        ms / rows as f64
    );
    Ok(())
}

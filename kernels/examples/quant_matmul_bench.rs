//! Q4_1 matmul on the CPU, wick's `QuantMatrix` against candle's `QMatMul`, side by side in
//! one run, on SmolLM2-135M's projection shapes, at 1, 4, 16 and 64 activation rows.
//!
//! `cargo run --release -p wick-kernels --example quant_matmul_bench [ITERS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
use wick_kernels::QuantMatrix;

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    // (out, in): q/o, k/v (3 kv heads of 64), gate/up, down; one layer of each.
    let shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536)];
    let dev = Device::Cpu;
    println!("| rows | candle QMatMul | wick QuantMatrix | speed-up | dequantize + f32 matmul |");
    println!("| --- | --- | --- | --- | --- |");
    for m in [1usize, 4, 16, 64, 256] {
        let (mut t_candle, mut t_wick, mut t_dense) = (0f64, 0f64, 0f64);
        for &(out, inp) in &shapes {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let ours = QuantMatrix::from_gguf(&q).unwrap();
            let theirs = QMatMul::from_qtensor(q).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, inp), &dev).unwrap();
            for _ in 0..iters / 10 {
                theirs.forward(&x).unwrap();
                ours.forward(&x).unwrap();
            }
            let t = Instant::now();
            for _ in 0..iters {
                theirs.forward(&x).unwrap();
            }
            t_candle += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..iters {
                ours.forward(&x).unwrap();
            }
            t_wick += t.elapsed().as_secs_f64();
            let t = Instant::now();
            for _ in 0..iters {
                let w = Tensor::from_vec(ours.dequantize(), (out, inp), &dev).unwrap();
                x.matmul(&w.t().unwrap()).unwrap();
            }
            t_dense += t.elapsed().as_secs_f64();
        }
        let per = |t: f64| t / iters as f64 * 1e6;
        println!(
            "| {m} | {:.0} us | {:.0} us | {:.1}x | {:.0} us |",
            per(t_candle),
            per(t_wick),
            t_candle / t_wick,
            per(t_dense)
        );
    }
    println!("(time of one q, k, gate and down projection together, per call)");
}

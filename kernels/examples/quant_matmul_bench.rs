//! Quantized matmul on the CPU, wick's `QuantMatrix` against candle's `QMatMul`, side by side
//! in one run, on SmolLM2-135M's shapes: its Q4_1 projections at 1, 4, 16, 64 and 256
//! activation rows, and its Q8_0 tied `lm_head` (the token embedding, 49152 x 576) at 1,
//! 4, 16, 64, 128 and 256. From `QuantMatrix`'s dense switch on (64 rows for Q4_1, 128
//! for Q8_0) its column is the dense one's.
//!
//! `cargo run --release -p wick-kernels --example quant_matmul_bench [ITERS]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::sync::Arc;
use std::time::Instant;
use wick_kernels::QuantMatrix;

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(200);
    // (out, in): q/o, k/v (3 kv heads of 64), gate/up, down; one layer of each.
    let layer = [(576, 576), (192, 576), (1536, 576), (576, 1536)];
    println!("Q4_1 (time of one q, k, gate and down projection together, per call)");
    bench(GgmlDType::Q4_1, &layer, &[1, 4, 16, 64, 256], iters);
    // 12x a layer's weights and more rows: a twentieth of the iterations.
    println!("\nQ8_0 lm_head, 49152 x 576 (per call)");
    bench(
        GgmlDType::Q8_0,
        &[(49152, 576)],
        &[1, 4, 16, 64, 128, 256],
        iters.div_ceil(20),
    );
}

/// One table row per activation row count: each library's time for `shapes` of `dtype`.
fn bench(dtype: GgmlDType, shapes: &[(usize, usize)], rows: &[usize], iters: usize) {
    let dev = Device::Cpu;
    println!("| rows | candle QMatMul | wick QuantMatrix | speed-up | dequantize + f32 matmul |");
    println!("| --- | --- | --- | --- | --- |");
    for &m in rows {
        let (mut t_candle, mut t_wick, mut t_dense) = (0f64, 0f64, 0f64);
        for &(out, inp) in shapes {
            let w = Tensor::randn(0f32, 0.05, (out, inp), &dev).unwrap();
            let q = Arc::new(QTensor::quantize(&w, dtype).unwrap());
            let ours = QuantMatrix::from_gguf(q.clone()).unwrap();
            let theirs = QMatMul::from_arc(q).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, inp), &dev).unwrap();
            for _ in 0..iters.div_ceil(10) {
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
                let w = Tensor::from_vec(ours.dequantize().unwrap(), (out, inp), &dev).unwrap();
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
}

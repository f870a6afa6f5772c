//! A quantized [`Linear`] (candle's `QMatMul` over a GGUF-typed weight) equals the dense
//! `Linear` over the same weight dequantized, within the error of candle's CPU path, which
//! quantizes the activations to Q8 blocks (Q8_0, or Q8_K for the K-quants) before the dot
//! products: about 0.4% of an activation block's largest value per element, so a few
//! tenths of a percent of the output's norm. Random blocks, every type wick serves
//! quantized.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;
use wick_models::layers::{Linear, LinearWeight};

/// `|a - b| / |b|` over all elements.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f32>().unwrap() / den.to_scalar::<f32>().unwrap()).sqrt()
}

#[test]
fn quantized_matmul_equals_dequantize_then_matmul_for_every_type() {
    let dev = Device::Cpu;
    // (type, largest relative error). The weight is the same on both sides, so the error
    // is the activations' Q8 rounding: observed about 0.0055 with Q8_0 activations (one
    // scale per 32 values) and 0.0088 with Q8_K (one per 256, so coarser) for the
    // K-quants; the bounds leave about 2x.
    let cases = [
        (GgmlDType::Q4_0, 0.01),
        (GgmlDType::Q4_1, 0.01),
        (GgmlDType::Q5_0, 0.01),
        (GgmlDType::Q5_1, 0.01),
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q2K, 0.02),
        (GgmlDType::Q3K, 0.02),
        (GgmlDType::Q4K, 0.02),
        (GgmlDType::Q5K, 0.02),
        (GgmlDType::Q6K, 0.02),
    ];
    let (out, inp) = (96, 512);
    let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, out, &dev).unwrap();
    // One row (decode) and several (prefill, batched decode); 3-D input too.
    let xs = [
        Tensor::randn(0f32, 1.0, (1, inp), &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (7, inp), &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (2, 3, inp), &dev).unwrap(),
    ];
    for (ty, tol) in cases {
        let q = Arc::new(QTensor::quantize(&w, ty).unwrap());
        let dense = Linear::new(q.dequantize(&dev).unwrap(), Some(b.clone()));
        let quant =
            Linear::from_weight(LinearWeight::Quantized(q), Some(b.clone()), DType::F32).unwrap();
        assert!(quant.is_quantized(), "{ty:?}");
        for x in &xs {
            let want = dense.forward(x).unwrap();
            let got = quant.forward(x).unwrap();
            assert_eq!(got.dims(), want.dims(), "{ty:?}");
            let e = rel_err(&got, &want);
            eprintln!("{ty:?} {:?}: relative error {e:.5}", x.dims());
            assert!(
                e < tol,
                "{ty:?} {:?}: relative error {e} >= {tol}",
                x.dims()
            );
        }
    }
}

#[test]
fn quantized_linear_keeps_the_serving_dtype() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (32, 64), &dev).unwrap();
    let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
    let dense = Linear::new(q.dequantize(&dev).unwrap(), None);
    let quant = Linear::from_weight(LinearWeight::Quantized(q), None, DType::BF16).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
    let got = quant.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let want = dense.forward(&x).unwrap();
    let e = rel_err(&got.to_dtype(DType::F32).unwrap(), &want);
    assert!(e < 0.02, "bf16: relative error {e}");
    assert!(quant.forward(&Tensor::new(1f32, &dev).unwrap()).is_err());
}

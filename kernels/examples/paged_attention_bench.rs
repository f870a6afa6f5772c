//! Micro benchmark of the CPU paged attention: a decode batch and a prefill, Llama-3-8B
//! head shapes (32 query heads, 8 kv heads, head_dim 128), block size 16.
//!
//! `cargo run --release -p wick-kernels --example paged_attention_bench [f32|f16|bf16]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Result, Tensor};
use std::time::Instant;
use wick_kernels::{paged_attention, PagedAttentionMetadata};

const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const BLOCK: usize = 16;

/// Times `iters` runs of `num_seqs` sequences of `seq_len` context with `q_len` queries each.
fn bench(
    name: &str,
    dtype: DType,
    num_seqs: usize,
    seq_len: usize,
    q_len: usize,
    iters: u32,
) -> Result<()> {
    let dev = Device::Cpu;
    let per_seq = seq_len.div_ceil(BLOCK);
    let num_blocks = num_seqs * per_seq;
    let cache =
        Tensor::randn(0f32, 1.0, (num_blocks, BLOCK, KV_HEADS, HEAD_DIM), &dev)?.to_dtype(dtype)?;
    let q = Tensor::randn(0f32, 1.0, (num_seqs * q_len, HEADS, HEAD_DIM), &dev)?.to_dtype(dtype)?;
    let table: Vec<u32> = (0..num_blocks as u32).collect();
    let cu: Vec<u32> = (0..=num_seqs as u32).map(|s| s * q_len as u32).collect();
    let meta =
        PagedAttentionMetadata::new(table, per_seq, cu, vec![seq_len as u32; num_seqs], &dev)?;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    paged_attention(&q, &cache, &cache, &meta, scale, None)?;
    let start = Instant::now();
    for _ in 0..iters {
        paged_attention(&q, &cache, &cache, &meta, scale, None)?;
    }
    let secs = start.elapsed().as_secs_f64() / f64::from(iters);
    // Keys seen per query, summed: causal within the q_len new tokens.
    let keys: usize = (0..q_len).map(|j| seq_len - q_len + j + 1).sum::<usize>() * num_seqs;
    let flops = 4.0 * (keys * HEADS * HEAD_DIM) as f64;
    println!(
        "{name:>8} {dtype:?}: {:8.3} ms/call, {:6.1} GFLOP/s, {} threads",
        secs * 1e3,
        flops / secs / 1e9,
        rayon::current_num_threads()
    );
    Ok(())
}

fn main() -> Result<()> {
    let dtype = match std::env::args().nth(1).as_deref() {
        Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        _ => DType::F32,
    };
    bench("decode", dtype, 16, 1024, 1, 20)?;
    bench("prefill", dtype, 1, 1024, 1024, 3)?;
    bench("chunked", dtype, 1, 2048, 256, 5)?;
    Ok(())
}

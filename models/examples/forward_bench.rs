//! Measures the model alone (no engine, no HTTP): load time, prefill throughput on a
//! prompt of `--prompt-len` tokens, and single-stream greedy decode throughput.
//!
//! `cargo run --release -p wick-models --example forward_bench -- MODEL [PROMPT_LEN] [DECODE] [DTYPE] [QUANTIZATION]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;
use wick_models::{KvCache, LoadOptions, ModelInput, SequenceChunk};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model_spec = args
        .get(1)
        .ok_or("usage: forward_bench MODEL [PROMPT_LEN] [DECODE] [DTYPE] [QUANTIZATION]")?;
    let prompt_len: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let decode: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let dtype =
        wick_models::device::parse_dtype(args.get(4).map(String::as_str).unwrap_or("auto"))?;
    let quantization: wick_models::Quantization = args
        .get(5)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or_default();
    let device = wick_models::device::select_device(None)?;

    let t = Instant::now();
    let loaded = wick_models::load(
        model_spec,
        &LoadOptions {
            dtype,
            device: device.clone(),
            quantization,
        },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    let model = &loaded.model;
    let cfg = model.config();
    let bs = wick_models::DEFAULT_BLOCK_SIZE;
    let total = prompt_len + decode;
    let table: Vec<u32> = (0..total.div_ceil(bs) as u32).collect();
    let mut cache = KvCache::new(cfg, bs, table.len(), model.dtype(), &device)?;
    let prompt: Vec<u32> = (0..prompt_len)
        .map(|i| (100 + i * 7) as u32 % cfg.vocab_size as u32)
        .collect();

    let step = |cache: &mut KvCache,
                tokens: &[u32],
                computed: usize|
     -> Result<u32, Box<dyn std::error::Error>> {
        let input = ModelInput::build(
            &[SequenceChunk {
                tokens,
                num_computed_tokens: computed,
                block_table: &table,
                lora_slot: None,
                sample: true,
            }],
            bs,
            &device,
        )?;
        let logits = model.forward(&input, cache)?;
        Ok(logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?)
    };

    // Warm-up, then the best of three prefills.
    step(&mut cache, &prompt[..16], 0)?;
    let mut prefill_s = f64::MAX;
    let mut next = 0;
    for _ in 0..3 {
        let t = Instant::now();
        next = step(&mut cache, &prompt, 0)?;
        prefill_s = prefill_s.min(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    for i in 0..decode {
        next = step(&mut cache, &[next], prompt_len + i)?;
    }
    let decode_s = t.elapsed().as_secs_f64();
    println!(
        "model={} dtype={:?} device={:?}\nload_s={load_s:.2}\nprefill_tokens={prompt_len} prefill_s={prefill_s:.3} prefill_tok_per_s={:.1}\ndecode_tokens={decode} decode_s={decode_s:.3} decode_tok_per_s={:.1} ms_per_token={:.2}",
        loaded.source,
        model.dtype(),
        device,
        prompt_len as f64 / prefill_s,
        decode as f64 / decode_s,
        1000.0 * decode_s / decode as f64
    );
    Ok(())
}

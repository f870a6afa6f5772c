//! Output tokens per second of the engine at a fixed concurrency with 0, 1, 4 and 8
//! distinct LoRA adapters (random, rank 16 by default, on all seven projections) over
//! SmolLM2 (f32, CPU), requests assigned to adapters round robin. The LoRA cost is the
//! grouped matmul of every adapted projection; the base model's work is the same in every
//! row of the table.
//!
//! `cargo run --release -p wick-engine --example lora_throughput -- [streams] [rank] [tokens]`
//! (defaults 16, 16, 64). Needs the SmolLM2 GGUF (scripts/fetch-test-model.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use wick_core::{SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest};
use wick_models::{KvCache, LoraModule, ModelConfig};

/// Writes a PEFT adapter of `rank` on every projection of `cfg` with random weights.
fn write_adapter(dir: &Path, cfg: &ModelConfig, rank: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": LoraModule::ALL.iter().map(|m| m.name()).collect::<Vec<_>>(),
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let dev = Device::Cpu;
    let mut tensors = HashMap::new();
    for layer in 0..cfg.num_layers {
        for (i, m) in LoraModule::ALL.into_iter().enumerate() {
            let (inp, out) = m.dims(cfg);
            let block = if i < 4 { "self_attn" } else { "mlp" };
            let p = format!("base_model.model.model.layers.{layer}.{block}.{}", m.name());
            let s = 0.02 * (1.0 + (seed % 7) as f64);
            tensors.insert(
                format!("{p}.lora_A.weight"),
                Tensor::randn(0f32, s as f32, (rank, inp), &dev).unwrap(),
            );
            tensors.insert(
                format!("{p}.lora_B.weight"),
                Tensor::randn(0f32, s as f32, (out, rank), &dev).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).unwrap();
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let streams = args.first().copied().unwrap_or(16);
    let rank = args.get(1).copied().unwrap_or(16);
    let tokens = args.get(2).copied().unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("wick-lora-bench-{}", std::process::id()));
    println!("| adapters | output tok/s | vs base |");
    println!("|---:|---:|---:|");
    let mut base = None;
    for adapters in [0usize, 1, 4, 8] {
        let loaded = wick_test_support::load_smollm2(DType::F32);
        let cfg = loaded.model.config().clone();
        let block_bytes = KvCache::bytes_per_block(&cfg, 16, DType::F32);
        let engine = EngineHandle::start(
            loaded.model,
            loaded.special.eos_token_ids,
            EngineConfig {
                kv_cache_memory: Some((streams * 8 * block_bytes) as u64),
                max_loras: 8,
                ..EngineConfig::default()
            },
        )
        .unwrap();
        for a in 0..adapters {
            let d = dir.join(format!("a{a}"));
            write_adapter(&d, &cfg, rank, a as u64);
            engine
                .load_lora(&format!("a{a}"), d.to_str().unwrap())
                .unwrap();
        }
        let params = SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(tokens)
        };
        // Warm-up (loads every adapter into its slot), then the measured run.
        let mut best: f64 = 0.0;
        for round in 0..3 {
            let start = Instant::now();
            let streams: Vec<_> = (0..streams)
                .map(|i| {
                    let prompt: Vec<u32> = (0..32)
                        .map(|t| 100 + ((i * 37 + t * 11) % 4000) as u32)
                        .collect();
                    let mut r = EngineRequest::new(prompt, params.clone());
                    if adapters > 0 {
                        r.lora = Some(format!("a{}", i % adapters));
                    }
                    engine.submit(r).unwrap()
                })
                .collect();
            let mut generated = 0;
            for mut s in streams {
                while let Some(ev) = s.blocking_next() {
                    match ev {
                        TokenEvent::Token { .. } => generated += 1,
                        TokenEvent::Finished(_) => {}
                        TokenEvent::Error(e) => panic!("{e}"),
                    }
                }
            }
            if round > 0 {
                best = best.max(generated as f64 / start.elapsed().as_secs_f64());
            }
        }
        engine.shutdown();
        let base_rate = *base.get_or_insert(best);
        println!("| {adapters} | {best:.1} | {:.2} |", best / base_rate);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

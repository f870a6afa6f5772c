//! Engine throughput without HTTP: a closed loop of `concurrency` clients, each sending
//! requests of `input_len` prompt tokens and exactly `output_len` output tokens
//! (ignore_eos), until `requests` have finished. Prints output tok/s, per-step time, and
//! TTFT / TPOT percentiles (JSON lines, one per concurrency).
//!
//! cargo run --release -p wick-engine --example engine_bench -- MODEL.gguf 1,4,16,64 [input_len] [output_len] [requests_per_client]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;
use wick_core::{SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest};

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .get(1)
        .ok_or("usage: engine_bench MODEL CONCURRENCIES [in] [out] [per_client]")?;
    let levels: Vec<usize> = args
        .get(2)
        .map(String::as_str)
        .unwrap_or("1,4,16,64")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let input_len: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(128);
    let output_len: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let per_client: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(2);

    let loaded = wick_models::load(
        model,
        &wick_models::LoadOptions {
            dtype: None,
            device: candle_core::Device::Cpu,
            quantization: wick_models::Quantization::default(),
        },
    )?;
    let vocab = loaded.model.config().vocab_size as u64;
    let engine = EngineHandle::start(
        loaded.model,
        loaded.special.eos_token_ids,
        EngineConfig::default(),
    )?;
    for &c in &levels {
        let total = c * per_client;
        // Distinct pseudo-random prompts (no prefix cache hits between requests).
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ c as u64;
        let mut prompt = || -> Vec<u32> {
            (0..input_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (100 + x % (vocab - 200)) as u32
                })
                .collect()
        };
        let params = SamplingParams {
            max_tokens: output_len,
            ignore_eos: true,
            ..SamplingParams::greedy(output_len)
        };
        let steps0 = engine.stats().steps;
        let start = Instant::now();
        let (mut ttft, mut tpot) = (vec![], vec![]);
        let mut out_tokens = 0usize;
        let mut streams = vec![];
        let mut submitted = 0;
        while submitted < c.min(total) {
            streams.push(engine.submit(EngineRequest::new(prompt(), params.clone()))?);
            submitted += 1;
        }
        let mut finished = 0;
        while finished < total {
            // Closed loop: wait for any stream's end, then refill.
            let mut next = vec![];
            for mut s in streams.drain(..) {
                match s.blocking_next() {
                    Some(TokenEvent::Token { .. }) => {
                        out_tokens += 1;
                        next.push(s);
                    }
                    Some(TokenEvent::Finished(m)) => {
                        finished += 1;
                        ttft.push(m.ttft_s);
                        if m.generation_tokens > 1 {
                            tpot.push((m.e2e_s - m.ttft_s) / (m.generation_tokens - 1) as f64);
                        }
                        if submitted < total {
                            next.push(engine.submit(EngineRequest::new(prompt(), params.clone()))?);
                            submitted += 1;
                        }
                    }
                    Some(TokenEvent::Error(e)) => return Err(e.into()),
                    None => return Err("engine stopped".into()),
                }
            }
            streams = next;
        }
        let wall = start.elapsed().as_secs_f64();
        let steps = engine.stats().steps - steps0;
        println!(
            "{{\"concurrency\": {c}, \"requests\": {total}, \"input_len\": {input_len}, \"output_len\": {output_len}, \"output_tok_s\": {:.1}, \"step_ms\": {:.2}, \"steps\": {steps}, \"ttft_p50_s\": {:.3}, \"ttft_p95_s\": {:.3}, \"tpot_p50_ms\": {:.1}, \"tpot_p95_ms\": {:.1}, \"wall_s\": {wall:.1}}}",
            out_tokens as f64 / wall,
            wall * 1000.0 / steps.max(1) as f64,
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.95),
            percentile(&mut tpot, 0.5) * 1000.0,
            percentile(&mut tpot, 0.95) * 1000.0,
        );
    }
    engine.shutdown();
    Ok(())
}

//! The cost of a JSON-schema constraint: the engine over SmolLM2 (f32, CPU) runs the same
//! streams free and constrained (temperature 1, seeded, 96 output tokens each; the
//! schema is an array of at least 100 small objects, so no stream completes it early and
//! every stream generates all its tokens), and reports output tok/s, engine steps, time
//! per step, and the time of each mask computation (p50/p99, per sequence per step; it
//! runs while the forward pass does, so only what sticks out of it costs step time).
//! Constrained runs go with and without forced tokens: without, every step is a decode
//! step as in the free run, so the step time difference is the cost of the constraint.
//!
//! `cargo run --release -p wick-server --example structured_overhead -- [streams...]`
//! (default 1 16). Needs the SmolLM2 GGUF (scripts/fetch-test-model.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::DType;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wick_core::{SamplingParams, TokenEvent, WickError};
use wick_engine::{
    EngineConfig, EngineHandle, EngineRequest, LogitsProcessor, LogitsProcessorFactory,
    SamplingConstraint,
};
use wick_server::structured::{Grammars, OutputConstraint, RequestedConstraint};

const TOKENS: usize = 96;

/// Times every constraint of the processor it wraps; without `fast_forward` it forces
/// nothing (each forced token is then sampled under a one-token mask in its own step),
/// which isolates the cost of masking from the steps forcing saves.
struct Timed {
    inner: Box<dyn LogitsProcessor>,
    times: Arc<Mutex<Vec<Duration>>>,
    fast_forward: bool,
}

impl LogitsProcessor for Timed {
    fn constraint(&mut self, generated: &[u32]) -> SamplingConstraint {
        let start = Instant::now();
        let c = self.inner.constraint(generated);
        self.times.lock().unwrap().push(start.elapsed());
        c
    }
    fn accept(&mut self, token: u32) {
        self.inner.accept(token)
    }
    fn forced(&mut self) -> Vec<u32> {
        if self.fast_forward {
            self.inner.forced()
        } else {
            vec![]
        }
    }
    fn ended(&self) -> Option<String> {
        self.inner.ended()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn main() {
    let levels: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let levels = if levels.is_empty() {
        vec![1, 16]
    } else {
        levels
    };
    let loaded = wick_test_support::load_smollm2(DType::F32);
    let vocab = loaded.model.config().vocab_size;
    let grammars = Grammars::new(
        loaded.tokenizer.clone(),
        vocab,
        loaded.special.eos_token_ids.clone(),
    );
    let schema = json!({
        "type": "array", "minItems": 100,
        "items": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"enum": ["admin", "user", "guest"]},
        }, "required": ["name", "age", "role"], "additionalProperties": false},
    });
    let compiled = grammars
        .compile(&RequestedConstraint {
            field: "schema".into(),
            constraint: OutputConstraint::JsonSchema(schema),
        })
        .unwrap();
    let engine = EngineHandle::start(
        loaded.model,
        loaded.special.eos_token_ids,
        EngineConfig::default(),
    )
    .unwrap();
    println!("| streams | run | output tok/s | steps | ms per step | mask p50 / p99 (ms) |");
    println!("| ---: | --- | ---: | ---: | ---: | --- |");
    for &streams in &levels {
        let runs = [None, Some(false), Some(true), None, Some(false), Some(true)];
        for mode in runs {
            let constrained = mode.is_some();
            let fast_forward = mode == Some(true);
            let times = Arc::new(Mutex::new(vec![]));
            let factory: Option<Arc<dyn LogitsProcessorFactory>> = constrained.then(|| {
                let inner = compiled.clone();
                let times = times.clone();
                let f = move |i: usize, p: &[u32]| -> Result<Box<dyn LogitsProcessor>, WickError> {
                    Ok(Box::new(Timed {
                        inner: inner.create(i, p)?,
                        times: times.clone(),
                        fast_forward,
                    }))
                };
                Arc::new(f) as Arc<dyn LogitsProcessorFactory>
            });
            let steps_before = engine.stats().steps;
            let start = Instant::now();
            let handles: Vec<_> = (0..streams)
                .map(|i| {
                    let prompt: Vec<u32> = (0..32)
                        .map(|t| 100 + ((i * 37 + t * 11) % 4000) as u32)
                        .collect();
                    let params = SamplingParams {
                        temperature: 1.0,
                        seed: Some(i as u64),
                        ignore_eos: true,
                        ..SamplingParams::greedy(TOKENS)
                    };
                    let mut r = EngineRequest::new(prompt, params);
                    r.logits_processor = factory.clone();
                    engine.submit(r).unwrap()
                })
                .collect();
            let mut generated = 0;
            for mut s in handles {
                while let Some(ev) = s.blocking_next() {
                    match ev {
                        TokenEvent::Token { .. } => generated += 1,
                        TokenEvent::Finished(_) => {}
                        TokenEvent::Error(e) => panic!("{e}"),
                    }
                }
            }
            let wall = start.elapsed().as_secs_f64();
            let steps = engine.stats().steps - steps_before;
            let mut t = times.lock().unwrap().clone();
            t.sort();
            let masks = if constrained {
                format!("{:.3} / {:.3}", percentile(&t, 0.5), percentile(&t, 0.99))
            } else {
                "-".into()
            };
            println!(
                "| {streams} | {} | {:.1} | {steps} | {:.1} | {masks} |",
                match mode {
                    None => "free",
                    Some(false) => "json schema, no forced tokens",
                    Some(true) => "json schema",
                },
                generated as f64 / wall,
                wall * 1e3 / steps as f64,
            );
        }
    }
    engine.shutdown();
}

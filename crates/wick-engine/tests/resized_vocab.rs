//! A checkpoint whose embeddings were resized past its tokenizer (../shared/fixtures/tiny
//! qwen3-added-tokens: 512 rows, 483 tokens): the engine's vocabulary is the weights',
//! so prompts may hold any row's id and sampling covers every row, those no token names
//! included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use wick_core::{SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest};

use wick_test_support::tiny::TinyGolden;

fn tokens(engine: &EngineHandle, prompt: Vec<u32>, params: SamplingParams) -> Vec<u32> {
    let mut stream = engine.submit(EngineRequest::new(prompt, params)).unwrap();
    let mut out = vec![];
    while let Some(ev) = stream.blocking_next() {
        match ev {
            TokenEvent::Token { id, .. } => out.push(id),
            TokenEvent::Finished(_) => {}
            TokenEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    out
}

#[test]
fn sampling_covers_every_row_of_the_weights() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    let loaded = m.load(DType::F32);
    assert_eq!(loaded.tokenizer.get_vocab_size(true), 483);
    let engine = common::start_loaded(loaded, |block_bytes| EngineConfig {
        kv_cache_memory: Some((64 * block_bytes) as u64),
        ..EngineConfig::default()
    });
    assert_eq!(engine.info().vocab_size, 512);

    // A row no token names, made the likeliest: greedy and seeded sampling both pick it.
    let bias = |id: u32| [(id, 100.0f32)].into_iter().collect();
    let greedy = SamplingParams {
        logit_bias: bias(505),
        ..SamplingParams::greedy(3)
    };
    assert_eq!(tokens(&engine, vec![1, 500, 482], greedy), vec![505; 3]);
    let sampled = SamplingParams {
        temperature: 1.0,
        seed: Some(7),
        max_tokens: 3,
        logit_bias: bias(511),
        ..SamplingParams::default()
    };
    assert_eq!(tokens(&engine, vec![1, 297], sampled), vec![511; 3]);

    // Past the weights is still refused.
    let err = engine
        .submit(EngineRequest::new(vec![1, 512], SamplingParams::greedy(1)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("512"), "{err}");
    engine.shutdown();
}

//! Shared by the engine's integration tests (each uses a part).
#![allow(dead_code)]

use candle_core::DType;
use std::time::{Duration, Instant};
use wick_core::{FinishReason, RequestMetrics, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineStats, RequestStream};
use wick_models::{KvCache, LoadedModel};

/// Starts an engine over `loaded` (f32) with the config `config` makes from the bytes of
/// one 16-token KV block.
pub fn start_loaded(
    loaded: LoadedModel,
    config: impl FnOnce(usize) -> EngineConfig,
) -> EngineHandle {
    let block_bytes = KvCache::bytes_per_block(loaded.model.config(), 16, DType::F32);
    EngineHandle::start(
        loaded.model,
        loaded.special.eos_token_ids,
        config(block_bytes),
    )
    .expect("engine starts")
}

/// Polls the engine's counters (published after each step) until `done` holds; fails
/// after two minutes.
pub fn wait_for(engine: &EngineHandle, done: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = engine.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "engine never settled: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything one request's stream carried.
#[derive(Debug, Default)]
pub struct Collected {
    pub tokens: Vec<Vec<u32>>,
    pub finish: Vec<Option<FinishReason>>,
    pub metrics: Option<RequestMetrics>,
}

pub fn collect(mut stream: RequestStream, n: usize) -> Collected {
    let mut c = Collected {
        tokens: vec![vec![]; n],
        finish: vec![None; n],
        metrics: None,
    };
    while let Some(ev) = stream.blocking_next() {
        match ev {
            TokenEvent::Token {
                index,
                id,
                finish_reason,
                ..
            } => {
                c.tokens[index].push(id);
                if finish_reason.is_some() {
                    c.finish[index] = finish_reason;
                }
            }
            TokenEvent::Finished(m) => c.metrics = Some(m),
            TokenEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    c
}

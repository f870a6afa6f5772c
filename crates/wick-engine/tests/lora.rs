//! LoRA adapters through the engine, against the transformers + PEFT references of
//! ../shared/fixtures/tiny: all 21 cases of each model (base and both adapters) submitted
//! at once, so that steps hold base and adapter rows together (asserted); the same with a
//! single adapter slot, so adapters are swapped in and out while requests wait for theirs;
//! unloading a name with a request in flight lets it finish and refuses the next with
//! NotFound; with `cuda_graphs`, both again through captured decode steps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::wait_for;
use wick_core::{ErrorKind, SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest, RequestStream};

use wick_test_support::assert_matches_golden;
use wick_test_support::tiny::{TinyGolden, TinyModel, MAX_TOKENS};

const LOGPROB_TOL: f64 = 2e-3;

fn start(m: &TinyModel, max_loras: usize) -> EngineHandle {
    start_with(m, max_loras, false)
}

fn start_with(m: &TinyModel, max_loras: usize, cuda_graphs: bool) -> EngineHandle {
    let engine = common::start_loaded(m.load(DType::F32), |block_bytes| EngineConfig {
        kv_cache_memory: Some((256 * block_bytes) as u64),
        max_loras,
        cuda_graphs,
        ..EngineConfig::default()
    });
    for a in &m.adapters {
        let dir = m.adapter_dir(&a.name);
        engine.load_lora(&a.name, dir.to_str().unwrap()).unwrap();
    }
    engine
}

fn greedy() -> SamplingParams {
    SamplingParams {
        logprobs: true,
        ..SamplingParams::greedy(MAX_TOKENS)
    }
}

fn collect(mut stream: RequestStream) -> Vec<(u32, f32)> {
    let mut out = vec![];
    while let Some(ev) = stream.blocking_next() {
        match ev {
            TokenEvent::Token { id, logprobs, .. } => out.push((id, logprobs.unwrap().logprob)),
            TokenEvent::Finished(_) => {}
            TokenEvent::Error(e) => panic!("request failed: {e}"),
        }
    }
    out
}

fn run_all_cases(m: &TinyModel, engine: &EngineHandle) {
    let streams: Vec<RequestStream> = (m.cases.iter())
        .map(|c| {
            let mut r = EngineRequest::new(c.prompt_token_ids.clone(), greedy());
            r.lora = c.adapter.clone();
            engine.submit(r).unwrap()
        })
        .collect();
    for (c, s) in m.cases.iter().zip(streams) {
        assert_matches_golden(&c.as_case(m), &collect(s), LOGPROB_TOL);
    }
}

#[test]
fn all_cases_of_each_model_at_once_with_adapters_mixed_in_steps() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let engine = start(m, 2);
        run_all_cases(m, &engine);
        let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_used_blocks == 0);
        assert!(
            stats.max_loras_in_step > 1,
            "{}: no step held more than one adapter ({})",
            m.name,
            stats.max_loras_in_step
        );
        assert_eq!(stats.num_used_blocks, 0, "{}: blocks leaked", m.name);
        engine.shutdown();
    }
}

#[test]
fn one_slot_for_two_adapters_swaps_them_and_every_case_still_matches() {
    let golden = TinyGolden::load();
    let m = golden.model("mistral-linear");
    let engine = start(m, 1);
    run_all_cases(m, &engine);
    assert_eq!(engine.stats().max_loras_in_step, 1);
    engine.shutdown();
}

#[test]
fn with_graphs_adapter_decode_steps_replay_and_swaps_capture_again() {
    // Decode steps with adapters go through graphs too; with one slot the adapters are
    // swapped while graphs of adapter steps exist, which must be captured again.
    let golden = TinyGolden::load();
    let m = golden.model("qwen2-yarn");
    for max_loras in [2, 1] {
        let engine = start_with(m, max_loras, true);
        run_all_cases(m, &engine);
        let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_used_blocks == 0);
        assert!(stats.graph_steps > 0, "{stats:?}");
        engine.shutdown();
    }
}

#[test]
fn unloading_lets_requests_in_flight_finish_and_refuses_new_ones() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    let engine = start(m, 2);
    let c = (m.cases.iter())
        .find(|c| c.adapter.as_deref() == Some("all-r8"))
        .unwrap();
    let request = || {
        let mut r = EngineRequest::new(c.prompt_token_ids.clone(), greedy());
        r.lora = Some("all-r8".into());
        r
    };
    let in_flight = engine.submit(request()).unwrap();
    engine.unload_lora("all-r8").unwrap();
    assert_matches_golden(&c.as_case(m), &collect(in_flight), LOGPROB_TOL);
    let e = engine.submit(request()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(
        engine.unload_lora("all-r8").unwrap_err().kind,
        ErrorKind::NotFound
    );
    // Loaded again (a new registration), it serves again.
    let dir = m.adapter_dir("all-r8");
    engine.load_lora("all-r8", dir.to_str().unwrap()).unwrap();
    assert_matches_golden(
        &c.as_case(m),
        &collect(engine.submit(request()).unwrap()),
        LOGPROB_TOL,
    );
    let dup = engine
        .load_lora("all-r8", dir.to_str().unwrap())
        .unwrap_err();
    assert!(dup.message.contains("already loaded"), "{dup}");
    engine.shutdown();
}

//! The engine with `cuda_graphs` on (`wick serve --cuda-graphs`) and SmolLM2: decode steps
//! padded to their shape and run through a captured step (on the CPU its twin) give the
//! golden greedy results.
//!
//! Needs the model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::{collect, wait_for};
use wick_core::SamplingParams;
use wick_engine::{EngineConfig, EngineRequest};
use wick_test_support::{assert_ids_match_golden, golden_cases, load_smollm2};

#[test]
fn golden_cases_with_graphs_on_pad_capture_and_replay_decode_steps() {
    // With --cuda-graphs, decode steps are padded to their shape and run through a
    // captured step (on the CPU its twin: the padded step rerun into the graph's output
    // memory); every golden case still matches, in two waves, so that the second replays
    // what the first captured.
    let engine = common::start_loaded(load_smollm2(DType::F32), |_| EngineConfig {
        cuda_graphs: true,
        max_num_batched_tokens: Some(64),
        ..EngineConfig::default()
    });
    let cases = golden_cases();
    for wave in 0..2 {
        let streams: Vec<_> = (cases.iter())
            .map(|c| {
                let req = EngineRequest {
                    prompt_token_ids: c.prompt_token_ids.clone(),
                    params: SamplingParams::greedy(c.max_tokens),
                    ..Default::default()
                };
                (c, engine.submit(req).expect("submit"))
            })
            .collect();
        for (case, stream) in streams {
            assert_ids_match_golden(case, &collect(stream, 1).tokens[0]);
        }
        let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_waiting == 0);
        // Decode steps of 8 sequences down to 1 as the cases finish: several shapes.
        assert!(stats.graph_shapes >= 2, "wave {wave}: {stats:?}");
        assert!(
            stats.graph_steps > stats.graph_shapes as u64,
            "wave {wave}: {stats:?}"
        );
        assert!(
            stats.graph_steps < stats.steps,
            "prefill steps run as they are"
        );
        assert_eq!(stats.num_used_blocks, 0, "blocks leaked: {stats:?}");
    }
    engine.shutdown();
}

//! The engine with `cuda_graphs` on (`wick serve --cuda-graphs`) and SmolLM2: decode steps
//! padded to their shape and run through a captured step (on the CPU its twin) give the
//! golden greedy results; decode steps with adapters (a tiny model of
//! ../shared/fixtures/tiny) have graphs of their own, dropped when an adapter changes.
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

/// Greedy tokens of every row of `step`.
fn greedy(step: &wick_engine::runner::StepLogits) -> Vec<u32> {
    drawn(step).iter().map(|d| d.token).collect()
}

/// Every row of `step` sampled greedily with its logprob and the 20 most likely tokens'
/// (enough of the logits to tell two computations apart).
fn drawn(step: &wick_engine::runner::StepLogits) -> Vec<wick_kernels::SampledToken> {
    let mut batch = wick_kernels::SamplingBatch::new(step.vocab());
    let params = wick_kernels::RowParams {
        logprob: true,
        top_logprobs: wick_kernels::MAX_TOP_LOGPROBS as u32,
        ..wick_kernels::RowParams::greedy()
    };
    for _ in step.rows() {
        batch.push(params, Default::default()).unwrap();
    }
    wick_engine::runner::ModelRunner::sample(step, &batch).unwrap()
}

/// Sequence `i` of a runner test: `tokens` after `computed` ones, blocks 16i..16i+16, a
/// sampled row, on adapter `lora_slot`.
fn scheduled(
    i: usize,
    tokens: Vec<u32>,
    computed: usize,
    lora_slot: Option<u32>,
) -> wick_engine::scheduler::ScheduledSeq {
    wick_engine::scheduler::ScheduledSeq {
        seq: wick_engine::kv::SeqId {
            request: wick_core::RequestId(i as u64),
            index: 0,
        },
        token_ids: tokens,
        num_computed_tokens: computed,
        block_table: (16 * i as u32..16 * i as u32 + 16).collect(),
        sample: true,
        lora_slot,
    }
}

#[test]
fn results_held_at_once_never_share_a_graphs_memory() {
    // The engine's one-by-one retry holds several `run` results before sampling them; they
    // must not come from graphs (whose results of one batch size share memory).
    use wick_engine::runner::ModelRunner;
    use wick_engine::scheduler::ScheduledSeq;
    let loaded = load_smollm2(DType::F32);
    let cfg = loaded.model.config().clone();
    let cache = wick_models::KvCache::new(&cfg, 16, 64, DType::F32, loaded.model.device()).unwrap();
    let mut runner = ModelRunner::new(loaded.model, cache);
    runner.enable_graphs();
    let cases = golden_cases();
    let seq = |i: usize, tokens: Vec<u32>, computed: usize| scheduled(i, tokens, computed, None);
    // Two prompts prefilled, then one decode step each, held at once.
    let prompts = [&cases[0].prompt_token_ids, &cases[1].prompt_token_ids];
    let first: Vec<u32> = (0..2)
        .map(|i| greedy(&runner.run(&[&seq(i, prompts[i].clone(), 0)]).unwrap())[0])
        .collect();
    let decode: Vec<ScheduledSeq> = (0..2)
        .map(|i| seq(i, vec![first[i]], prompts[i].len()))
        .collect();
    let held: Vec<_> = decode.iter().map(|s| runner.run(&[s]).unwrap()).collect();
    let held: Vec<u32> = held.iter().map(|h| greedy(h)[0]).collect();
    assert_eq!(runner.graph_steps(), 0, "run never goes through a graph");
    // The same steps through prepare + forward (graphs), each sampled at once.
    let mut through_graphs = vec![];
    for s in &decode {
        let input = runner.prepare(&[s]).unwrap();
        assert!(input.graph_shape.is_some());
        through_graphs.push(greedy(&runner.forward(&[s], &input).unwrap())[0]);
    }
    assert_eq!(runner.graph_steps(), 2);
    assert_eq!(held, through_graphs);
    for (i, case) in cases[..2].iter().enumerate() {
        assert_eq!(
            &[first[i], held[i]][..],
            &case.output_token_ids[..2],
            "{}",
            case.id
        );
    }
}

#[test]
fn adapter_decode_steps_have_graphs_of_their_own_dropped_when_adapters_change() {
    // A decode step mixing two adapters and the base model is a shape of its own; replays
    // give what the step run as it is gives, bit for bit; changing an adapter drops the
    // graph (it reads the adapters' memory), and the next step, captured again, sees the
    // change.
    use wick_engine::runner::ModelRunner;
    use wick_engine::scheduler::ScheduledSeq;
    use wick_test_support::tiny::TinyGolden;
    let golden = TinyGolden::load();
    let m = golden.model("llama3-tied");
    let mut model = m.load(DType::F32).model;
    model.enable_lora(2).unwrap();
    let cfg = model.config().clone();
    let cache = wick_models::KvCache::new(&cfg, 4, 64, DType::F32, model.device()).unwrap();
    let mut runner = ModelRunner::new(model, cache);
    runner.enable_graphs();
    let adapter = |name: &str| {
        let dir = m.adapter_dir(name);
        wick_models::LoraAdapter::load(dir.to_str().unwrap(), &cfg, 64).unwrap()
    };
    runner.load_lora(0, Some(&adapter("all-r8"))).unwrap();
    runner.load_lora(1, Some(&adapter("qv-r4-rslora"))).unwrap();
    let prompt = &m.cases[0].prompt_token_ids;
    let seq = |i: usize, tokens: Vec<u32>, computed: usize| {
        scheduled(i, tokens, computed, [Some(0), Some(1), None][i])
    };
    for i in 0..3 {
        runner.run(&[&seq(i, prompt.clone(), 0)]).unwrap();
    }
    let decode: Vec<ScheduledSeq> = (0..3).map(|i| seq(i, vec![7], prompt.len())).collect();
    let decode: Vec<&ScheduledSeq> = decode.iter().collect();
    let through_graph = |runner: &mut ModelRunner| {
        let input = runner.prepare(&decode).unwrap();
        let shape = input.graph_shape.expect("a padded decode step");
        assert!(shape.lora && shape.seqs == 4, "{shape:?}");
        drawn(&runner.forward(&decode, &input).unwrap())
    };
    let eager = drawn(&runner.run(&decode).unwrap());
    assert_ne!(eager[0], eager[2], "the adapter changes the row");
    assert_eq!(through_graph(&mut runner), eager, "captured");
    assert_eq!(through_graph(&mut runner), eager, "replayed");
    assert_eq!((runner.graph_steps(), runner.graph_shapes().len()), (2, 1));

    runner.load_lora(1, None).unwrap();
    assert!(runner.graph_shapes().is_empty(), "dropped with the change");
    let emptied = drawn(&runner.run(&decode).unwrap());
    assert_ne!(emptied[1], eager[1], "slot 1 lost its adapter");
    assert_eq!((&emptied[0], &emptied[2]), (&eager[0], &eager[2]));
    assert_eq!(through_graph(&mut runner), emptied, "captured again");
    assert_eq!((runner.graph_steps(), runner.graph_shapes().len()), (3, 1));
}

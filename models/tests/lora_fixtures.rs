//! LoRA adapters against the transformers + PEFT references of ../shared/fixtures/tiny:
//! every case of every model (base, and each of its two adapters), greedy tokens and
//! logprobs, first each case alone, then all 21 cases of a model in one ragged batch that
//! mixes both adapters and the base model, prefill chunked; decode steps padded as graphs
//! replay them; adapters of different ranks and targets side by side. Also: an adapter
//! whose shapes do not fit the model is refused naming the tensor and both shapes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::*;
use wick_kernels::LoraBatch;
use wick_models::{
    GraphShape, InputBuffer, KvCache, LoraAdapter, Model, ModelInput, SequenceChunk,
};
use wick_test_support::tiny::{TinyGolden, TinyModel, EOS, MAX_TOKENS};

const LOGPROB_TOL: f64 = 2e-3;

/// Loads `m` with its adapters in slots 0, 1, ... (golden.json's order); returns the
/// model and each case's slot.
fn model_with_adapters(m: &TinyModel) -> (Model, Vec<Option<u32>>) {
    model_with_adapters_as(m, |_, adapter| adapter)
}

/// [`model_with_adapters`], each adapter passed through `change(name, adapter)` first.
fn model_with_adapters_as(
    m: &TinyModel,
    change: impl Fn(&str, LoraAdapter) -> LoraAdapter,
) -> (Model, Vec<Option<u32>>) {
    let mut model = m.load(DType::F32).model;
    model.enable_lora(m.adapters.len()).unwrap();
    for (slot, a) in m.adapters.iter().enumerate() {
        let dir = m.adapter_dir(&a.name);
        let adapter = LoraAdapter::load(dir.to_str().unwrap(), model.config(), 64).unwrap();
        assert_eq!(adapter.rank, a.r, "{}", a.name);
        let adapter = change(&a.name, adapter);
        model.set_lora(slot, Some(&adapter)).unwrap();
    }
    let slots = (m.cases.iter())
        .map(|c| {
            c.adapter
                .as_ref()
                .map(|name| m.adapters.iter().position(|a| &a.name == name).unwrap() as u32)
        })
        .collect();
    (model, slots)
}

fn check(m: &TinyModel, seqs: &[Seq]) {
    for (c, s) in m.cases.iter().zip(seqs) {
        assert_matches_golden(&c.as_case(m), &s.out, LOGPROB_TOL);
    }
}

#[test]
fn every_adapter_case_alone_and_all_cases_of_a_model_in_one_batch() {
    let golden = TinyGolden::load();
    assert_eq!(golden.models.len(), 4);
    for m in &golden.models {
        assert_eq!(m.cases.len(), 21, "{}", m.name);
        let (model, slots) = model_with_adapters(m);
        let bs = 4;
        let mut cache =
            KvCache::new(model.config(), bs, 21 * 12, DType::F32, model.device()).unwrap();
        let seq = |c: &wick_test_support::tiny::TinyCase, slot, blocks: &mut BlockCounter| {
            let n = (c.prompt_token_ids.len() + MAX_TOKENS).div_ceil(bs);
            let mut s = Seq::new(&c.prompt_token_ids, MAX_TOKENS, blocks.take(n));
            s.lora_slot = slot;
            s
        };
        // Alone.
        let mut alone = vec![];
        for (c, &slot) in m.cases.iter().zip(&slots) {
            let mut s = [seq(c, slot, &mut BlockCounter(0))];
            run_batch(&model, &mut cache, &mut s, usize::MAX, EOS);
            alone.extend(s);
        }
        check(m, &alone);
        // All 21 together, prefill in chunks of 3 tokens.
        let mut blocks = BlockCounter(0);
        let mut all: Vec<Seq> = (m.cases.iter().zip(&slots))
            .map(|(c, &slot)| seq(c, slot, &mut blocks))
            .collect();
        run_batch(&model, &mut cache, &mut all, 3, EOS);
        check(m, &all);
    }
}

/// `adapter` as an adapter of rank `rank` with the same effect: A and B padded with zeros.
fn widened(mut adapter: LoraAdapter, rank: usize) -> LoraAdapter {
    let r = adapter.rank;
    for pair in adapter.layers.iter_mut().flatten().flatten() {
        pair.a = pair.a.pad_with_zeros(0, 0, rank - r).unwrap();
        pair.b = pair.b.pad_with_zeros(1, 0, rank - r).unwrap();
    }
    adapter.rank = rank;
    adapter
}

/// The adapter of the larger rank need not target every module the others do: with q/v's
/// adapter widened to rank 16 beside the all-module adapter of rank 8, the stacks of o, k
/// and the MLP hold rank 8, less than slot 0's rank, and every case still matches.
#[test]
fn a_larger_adapter_targeting_fewer_modules_serves_beside_a_smaller_one() {
    let golden = TinyGolden::load();
    let m = golden.model("mistral-linear");
    let (model, slots) = model_with_adapters_as(m, |name, adapter| match name {
        "qv-r4-rslora" => widened(adapter, 16),
        _ => adapter,
    });
    let bs = 4;
    let mut cache = KvCache::new(model.config(), bs, 21 * 12, DType::F32, model.device()).unwrap();
    let mut blocks = BlockCounter(0);
    let mut all: Vec<Seq> = (m.cases.iter().zip(&slots))
        .map(|(c, &slot)| {
            let n = (c.prompt_token_ids.len() + MAX_TOKENS).div_ceil(bs);
            let mut s = Seq::new(&c.prompt_token_ids, MAX_TOKENS, blocks.take(n));
            s.lora_slot = slot;
            s
        })
        .collect();
    run_batch(&model, &mut cache, &mut all, usize::MAX, EOS);
    check(m, &all);
}

/// Decode steps padded to their graph shape (what `--cuda-graphs` replays) with adapters in
/// them: the shape says so, the dummy rows use none, and every case still matches.
#[test]
fn every_adapter_case_with_decode_steps_padded() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let (model, slots) = model_with_adapters(m);
        let bs = 4;
        let mut cache =
            KvCache::new(model.config(), bs, 21 * 12, DType::F32, model.device()).unwrap();
        let mut blocks = BlockCounter(0);
        // Every 5th case only, so that decode steps hold a few sequences.
        let picked: Vec<usize> = (0..m.cases.len()).step_by(5).collect();
        let mut seqs: Vec<Seq> = (picked.iter())
            .map(|&i| {
                let c = &m.cases[i];
                let n = (c.prompt_token_ids.len() + MAX_TOKENS).div_ceil(bs);
                let mut s = Seq::new(&c.prompt_token_ids, MAX_TOKENS, blocks.take(n));
                s.lora_slot = slots[i];
                s
            })
            .collect();
        let buffer = InputBuffer::new();
        let adapter_steps = std::sync::atomic::AtomicUsize::new(0);
        let build = |chunks: &[SequenceChunk], bs: usize| {
            let Some(shape) = GraphShape::for_decode(chunks, bs) else {
                return ModelInput::build(chunks, bs, model.device());
            };
            let input = ModelInput::build_padded(&buffer, chunks, bs, model.device(), shape)?;
            let real: Vec<i32> = (chunks.iter())
                .map(|c| c.lora_slot.map_or(-1, |s| s as i32))
                .collect();
            assert_eq!(shape.lora, real.iter().any(|&s| s >= 0));
            if shape.lora {
                adapter_steps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut want = real;
                want.resize(shape.seqs, -1);
                assert_eq!(input.lora_slots, want);
                let device = input.lora_slots_device.as_ref().unwrap();
                let device = device.to_vec1::<u32>().unwrap();
                assert_eq!(device, LoraBatch::device_slots(&want));
                // A step whose adapters disagree with the shape is refused.
                let other = GraphShape {
                    lora: false,
                    ..shape
                };
                let bare = ModelInput::build_padded(&buffer, chunks, bs, model.device(), other);
                assert!(bare.is_err());
            } else {
                assert!(input.lora_slots.is_empty() && input.lora_slots_device.is_none());
            }
            Ok(input)
        };
        run_batch_laid_out(&model, &mut cache, &mut seqs, usize::MAX, EOS, build);
        assert!(adapter_steps.into_inner() > 0, "{}", m.name);
        for (&i, s) in picked.iter().zip(&seqs) {
            assert_matches_golden(&m.cases[i].as_case(m), &s.out, LOGPROB_TOL);
        }
    }
}

#[test]
fn emptying_a_slot_gives_the_base_model_back() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen2-yarn");
    let (mut model, _) = model_with_adapters(m);
    for slot in 0..m.adapters.len() {
        model.set_lora(slot, None).unwrap();
    }
    let mut cache = KvCache::new(model.config(), 4, 64, DType::F32, model.device()).unwrap();
    for c in m.base_cases() {
        let mut s = Seq::new(&c.prompt_token_ids, MAX_TOKENS, (0..16).collect());
        s.lora_slot = Some(0);
        run_batch(
            &model,
            &mut cache,
            std::slice::from_mut(&mut s),
            usize::MAX,
            EOS,
        );
        assert_matches_golden(&c.as_case(m), &s.out, LOGPROB_TOL);
    }
}

#[test]
fn an_adapter_for_another_model_is_refused_naming_the_tensor_and_shapes() {
    let golden = TinyGolden::load();
    let m = golden.model("llama3-tied");
    let model = m.load(DType::F32).model;
    // The adapter's MLP tensors are for an FFN of 192; a base model of 96 does not fit.
    let mut cfg = model.config().clone();
    cfg.intermediate_size = 96;
    let dir = m.adapter_dir("all-r8");
    let e = LoraAdapter::load(dir.to_str().unwrap(), &cfg, 64)
        .unwrap_err()
        .to_string();
    let shapes = e.contains("[192, 8]") || e.contains("[8, 192]");
    assert!(e.contains("proj.lora_") && shapes, "{e}");
    let e = LoraAdapter::load(dir.to_str().unwrap(), model.config(), 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--max-lora-rank"), "{e}");
    let e = LoraAdapter::load("/nonexistent/adapter", model.config(), 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adapter"), "{e}");
}

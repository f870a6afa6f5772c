//! LoRA adapters against the transformers + PEFT references of ../shared/fixtures/tiny:
//! every case of every model (base, and each of its two adapters), greedy tokens and
//! logprobs, first each case alone, then all 21 cases of a model in one ragged batch that
//! mixes both adapters and the base model, prefill chunked. Also: an adapter whose shapes
//! do not fit the model is refused naming the tensor and both shapes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::*;
use wick_models::{KvCache, LoraAdapter, Model};
use wick_test_support::tiny::{TinyGolden, TinyModel, EOS, MAX_TOKENS};

const LOGPROB_TOL: f64 = 2e-3;

/// Loads `m` with its adapters in slots 0, 1, ... (golden.json's order); returns the
/// model and each case's slot.
fn model_with_adapters(m: &TinyModel) -> (Model, Vec<Option<u32>>) {
    let mut model = m.load(DType::F32).model;
    model.enable_lora(m.adapters.len()).unwrap();
    for (slot, a) in m.adapters.iter().enumerate() {
        let dir = m.adapter_dir(&a.name);
        let adapter = LoraAdapter::load(dir.to_str().unwrap(), model.config(), 64).unwrap();
        assert_eq!(adapter.rank, a.r, "{}", a.name);
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

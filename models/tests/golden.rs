//! SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32) against the independent reference
//! in ../shared/fixtures/smollm2/golden.json: tokenizer ids, greedy tokens and logprobs,
//! one case at a time, all together as one ragged batch, with prefill chunked by 7 tokens,
//! and with sequences sharing a prefix's blocks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::*;
use wick_models::KvCache;

const EOS: u32 = 2;
const LOGPROB_TOL: f64 = 2e-3;

#[test]
fn golden_cases_alone_batched_chunked_and_prefix_shared() {
    let loaded = load_smollm2(DType::F32);
    let model = &loaded.model;
    let cases = golden_cases();
    assert_eq!(cases.len(), 8);
    assert_eq!(loaded.special.eos.as_ref().map(|e| e.0), Some(EOS));
    let bs = 16;
    let mut cache = KvCache::new(model.config(), bs, 512, DType::F32, model.device()).unwrap();

    // Raw prompts tokenize to the reference ids (chat prompts are checked with the
    // template in wick-server's tests).
    for c in &cases {
        if let Some(p) = &c.prompt {
            let enc = loaded.tokenizer.encode(p.as_str(), false).unwrap();
            assert_eq!(enc.get_ids(), &c.prompt_token_ids[..], "{}", c.id);
        }
    }

    // 1. One at a time.
    for c in &cases {
        let out = wick_test_support::greedy::generate(
            model,
            &mut cache,
            &c.prompt_token_ids,
            c.max_tokens,
            &[EOS],
            usize::MAX,
        )
        .unwrap();
        let got: Vec<(u32, f32)> = out.iter().map(|t| (t.id, t.logprob)).collect();
        assert_matches_golden(c, &got, LOGPROB_TOL);
        let text = loaded.tokenizer.decode(&c.output_token_ids, false).unwrap();
        assert_eq!(text, c.output_text, "{}", c.id);
    }

    // 2. All together as one ragged batch, whole prompts; 3. the same with every
    // prompt's prefill split into chunks of 7 tokens.
    for chunk in [usize::MAX, 7] {
        let mut blocks = BlockCounter(0);
        let mut seqs: Vec<Seq> = cases
            .iter()
            .map(|c| {
                Seq::new(
                    &c.prompt_token_ids,
                    c.max_tokens,
                    blocks.take((c.prompt_token_ids.len() + c.max_tokens).div_ceil(bs)),
                )
            })
            .collect();
        run_batch(model, &mut cache, &mut seqs, chunk, EOS);
        for (c, s) in cases.iter().zip(&seqs) {
            assert_matches_golden(c, &s.out, LOGPROB_TOL);
        }
    }

    // 4. Two chat cases share the default system prompt: the second reuses the first's
    // full prefix blocks and computes only the rest.
    let a = cases.iter().find(|c| c.id == "chat-capital").unwrap();
    let b = cases.iter().find(|c| c.id == "chat-multiturn").unwrap();
    let common_len = a
        .prompt_token_ids
        .iter()
        .zip(&b.prompt_token_ids)
        .take_while(|(x, y)| x == y)
        .count();
    let shared_blocks = common_len / bs;
    assert!(
        shared_blocks >= 1,
        "the chat cases share {common_len} tokens"
    );
    let mut blocks = BlockCounter(0);
    let a_table = blocks.take((a.prompt_token_ids.len() + a.max_tokens).div_ceil(bs));
    let mut seq_a = vec![Seq::new(&a.prompt_token_ids, a.max_tokens, a_table.clone())];
    run_batch(model, &mut cache, &mut seq_a, usize::MAX, EOS);
    assert_matches_golden(a, &seq_a[0].out, LOGPROB_TOL);
    let mut b_table = a_table[..shared_blocks].to_vec();
    b_table.extend(
        blocks.take((b.prompt_token_ids.len() + b.max_tokens).div_ceil(bs) - shared_blocks),
    );
    let mut seq_b = Seq::new(&b.prompt_token_ids, b.max_tokens, b_table);
    seq_b.computed = shared_blocks * bs;
    // Run b together with a fresh copy of a that also reuses the shared blocks.
    let mut a2_table = a_table[..shared_blocks].to_vec();
    a2_table.extend(
        blocks.take((a.prompt_token_ids.len() + a.max_tokens).div_ceil(bs) - shared_blocks),
    );
    let mut seq_a2 = Seq::new(&a.prompt_token_ids, a.max_tokens, a2_table);
    seq_a2.computed = shared_blocks * bs;
    let mut both = vec![seq_b, seq_a2];
    run_batch(model, &mut cache, &mut both, 7, EOS);
    assert_matches_golden(b, &both[0].out, LOGPROB_TOL);
    assert_matches_golden(a, &both[1].out, LOGPROB_TOL);
}

//! The tiny checkpoints of ../shared/fixtures/tiny, saved as transformers v5 saves them
//! (`rope_parameters` of types llama3, linear, yarn and default; `chat_template.jinja`;
//! `generation_config.json`; added tokens with resized embeddings), against the
//! independent references in its golden.json: rope settings read back, raw prompts'
//! ids, and every base-model case's greedy tokens and logprobs through the paged model,
//! one case at a time and all of a model's cases in one batch. (Chat prompts' ids are
//! checked with the chat template in wick-server's tests; adapter cases belong to the
//! LoRA tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;
use common::{run_batch, BlockCounter, Seq};
use wick_models::config::RopeScaling;
use wick_models::{KvCache, ModelConfig};
use wick_test_support::tiny::{TinyGolden, EOS, MAX_TOKENS};
use wick_test_support::{assert_matches_golden, greedy};

const LOGPROB_TOL: f64 = 2e-3;

fn config_of(m: &wick_test_support::tiny::TinyModel) -> ModelConfig {
    let text = std::fs::read_to_string(m.dir().join("config.json")).unwrap();
    ModelConfig::from_hf_json(&text).unwrap_or_else(|e| panic!("{}: {e}", m.name))
}

#[test]
fn every_config_reads_back_its_rope_parameters() {
    let golden = TinyGolden::load();
    assert_eq!(golden.models.len(), 4);
    for m in &golden.models {
        let cfg = config_of(m);
        let rp = &m.rope_parameters;
        let num = |k: &str| rp[k].as_f64().unwrap_or_else(|| panic!("{}: {k}", m.name));
        assert_eq!(cfg.rope_theta, num("rope_theta"), "{}", m.name);
        let want_type = rp["rope_type"].as_str().unwrap();
        let got_type = cfg
            .rope_scaling
            .as_ref()
            .map_or("default", RopeScaling::name);
        assert_eq!(got_type, want_type, "{}", m.name);
        match cfg.rope_scaling.as_ref() {
            None => {}
            Some(RopeScaling::Linear { factor }) => assert_eq!(*factor, num("factor")),
            Some(RopeScaling::Llama3(s)) => {
                assert_eq!(s.factor, num("factor"));
                assert_eq!(s.low_freq_factor, num("low_freq_factor"));
                assert_eq!(s.high_freq_factor, num("high_freq_factor"));
                let orig = num("original_max_position_embeddings") as usize;
                assert_eq!(s.original_max_position_embeddings, orig);
            }
            Some(RopeScaling::Yarn(y)) => {
                assert_eq!(y.factor, num("factor"));
                let orig = num("original_max_position_embeddings") as usize;
                assert_eq!(y.original_max_position_embeddings, orig);
                assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));
                let want = 0.1 * y.factor.ln() + 1.0;
                assert!((y.attention_factor - want).abs() < 1e-12, "{y:?}");
            }
        }
        assert_eq!(cfg.vocab_size, m.weights_vocab, "{}", m.name);
    }
}

#[test]
fn raw_prompts_tokenize_to_reference_ids() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let loaded = m.load(DType::F32);
        assert_eq!(loaded.tokenizer.get_vocab_size(true), m.tokenizer_len);
        let mut checked = 0;
        for c in &m.cases {
            let Some(prompt) = &c.prompt else { continue };
            let enc = loaded.tokenizer.encode(prompt.as_str(), false).unwrap();
            assert_eq!(
                enc.get_ids(),
                &c.prompt_token_ids[..],
                "{}/{}",
                m.name,
                c.id
            );
            checked += 1;
        }
        assert!(checked >= 5, "{}: {checked} raw cases", m.name);
        // chat_template.jinja is where v5 saves the template (tokenizer_config.json has none).
        let jinja = std::fs::read_to_string(m.dir().join("chat_template.jinja")).unwrap();
        assert_eq!(loaded.chat_template.as_deref(), Some(jinja.as_str()));
        assert_eq!(loaded.special.eos.as_ref().map(|e| e.0), Some(EOS));
        assert_eq!(loaded.generation_config.temperature, Some(0.7));
    }
}

#[test]
fn base_cases_match_reference_alone_and_in_one_batch() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let loaded = m.load(DType::F32);
        let model = &loaded.model;
        let cases: Vec<_> = m.base_cases().map(|c| c.as_case(m)).collect();
        assert_eq!(cases.len(), 7, "{}", m.name);
        let bs = 16;
        let mut cache = KvCache::new(model.config(), bs, 64, DType::F32, model.device()).unwrap();
        for c in &cases {
            let out = greedy::generate(
                model,
                &mut cache,
                &c.prompt_token_ids,
                MAX_TOKENS,
                &[EOS],
                usize::MAX,
            )
            .unwrap();
            let got: Vec<(u32, f32)> = out.iter().map(|t| (t.id, t.logprob)).collect();
            assert_matches_golden(c, &got, LOGPROB_TOL);
        }
        // All of the model's base cases together, prefill chunked by 5 tokens.
        let mut blocks = BlockCounter(0);
        let mut seqs: Vec<Seq> = cases
            .iter()
            .map(|c| {
                let n = (c.prompt_token_ids.len() + MAX_TOKENS).div_ceil(bs);
                Seq::new(&c.prompt_token_ids, MAX_TOKENS, blocks.take(n))
            })
            .collect();
        run_batch(model, &mut cache, &mut seqs, 5, EOS);
        for (c, s) in cases.iter().zip(&seqs) {
            assert_matches_golden(c, &s.out, LOGPROB_TOL);
        }
    }
}

#[test]
fn added_tokens_and_resized_embeddings_load_and_every_row_is_scored() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    assert_eq!((m.tokenizer_len, m.weights_vocab), (483, 512));
    let loaded = m.load(DType::F32);
    let model = &loaded.model;
    assert_eq!(model.config().vocab_size, 512);
    let tok = &loaded.tokenizer;
    assert_eq!(tok.get_vocab_size(true), 483);
    // The added special tokens are whole tokens, in text and back.
    for (text, id) in [
        ("<|tool_start|>", 480),
        ("<|tool_end|>", 481),
        ("<think>", 482),
    ] {
        assert_eq!(tok.encode(text, false).unwrap().get_ids(), &[id], "{text}");
        assert_eq!(tok.decode(&[id], false).unwrap(), text);
    }
    // Rows past the tokenizer decode to nothing, never to an error.
    assert_eq!(tok.decode(&[483, 500, 511], false).unwrap(), "");
    assert_eq!(tok.decode(&[482, 500], false).unwrap(), "<think>");

    // Ids past the tokenizer are valid model input, and greedy decoding scores every row
    // of the weights (the argmax is over all 512 logits).
    let mut cache = KvCache::new(model.config(), 16, 4, DType::F32, model.device()).unwrap();
    let out = greedy::generate(model, &mut cache, &[1, 500, 482, 511], 4, &[], usize::MAX).unwrap();
    assert_eq!(out.len(), 4);
    assert!(out.iter().all(|t| t.logprob.is_finite() && t.id < 512));
}

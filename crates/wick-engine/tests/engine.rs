//! The engine with SmolLM2 (../shared/fixtures): golden greedy results survive batching,
//! copies, chunked prefill, prefix caching and preemption; seeded sampling is independent
//! of the batch; dropped streams give every block back.
//!
//! Needs the model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::DType;

use common::{collect, wait_for, Collected};
use wick_core::{FinishReason, SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest, RequestStream};

use wick_test_support::{assert_ids_match_golden, golden_cases, load_smollm2};

fn start(config: impl FnOnce(usize) -> EngineConfig) -> EngineHandle {
    common::start_loaded(load_smollm2(DType::F32), config)
}

/// Waits (bounded) until the engine reports `done`.
#[test]
fn golden_cases_with_copies_preemption_chunking_and_prefix_hits() {
    let cases = golden_cases();
    let longest = cases
        .iter()
        .map(|c| c.prompt_token_ids.len() + c.max_tokens)
        .max()
        .expect("cases");
    // Room for the longest request and a little more: far less than the 24 requests
    // below need at once, so the scheduler must preempt; a 24-token budget forces every
    // prompt's prefill into chunks.
    let num_blocks = longest.div_ceil(16) + 3;
    let engine = start(|block_bytes| EngineConfig {
        max_num_seqs: 16,
        max_num_batched_tokens: Some(24),
        kv_cache_memory: Some((num_blocks * block_bytes) as u64),
        ..EngineConfig::default()
    });
    assert_eq!(engine.info().num_blocks, num_blocks);

    const COPIES: usize = 3;
    let mut streams = vec![];
    for _ in 0..COPIES {
        for c in &cases {
            let req = EngineRequest {
                prompt_token_ids: c.prompt_token_ids.clone(),
                params: SamplingParams::greedy(c.max_tokens),
                ..Default::default()
            };
            streams.push((c, engine.submit(req).expect("submit")));
        }
    }
    // One more: n = 2 greedy copies in one request share the prompt and agree.
    let c0 = &cases[0];
    let n2 = engine
        .submit(EngineRequest {
            prompt_token_ids: c0.prompt_token_ids.clone(),
            params: SamplingParams {
                n: 2,
                ..SamplingParams::greedy(c0.max_tokens)
            },
            ..Default::default()
        })
        .expect("submit n=2");

    for (case, stream) in streams {
        let got = collect(stream, 1);
        assert_ids_match_golden(case, &got.tokens[0]);
        let m = got.metrics.expect("metrics");
        assert_eq!(m.prompt_tokens, case.prompt_token_ids.len());
        assert_eq!(m.generation_tokens, got.tokens[0].len());
        assert!(m.ttft_s >= m.queue_time_s && m.e2e_s >= m.ttft_s, "{m:?}");
        let expect = if got.tokens[0].len() == case.max_tokens {
            FinishReason::Length
        } else {
            FinishReason::Stop
        };
        assert_eq!(got.finish[0], Some(expect), "{}", case.id);
    }
    let got = collect(n2, 2);
    assert_ids_match_golden(c0, &got.tokens[0]);
    assert_eq!(got.tokens[0], got.tokens[1]);

    let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_waiting == 0);
    assert!(stats.num_preemptions > 0, "no preemption: {stats:?}");
    assert!(
        stats.prefix_cache_hits > 0 && stats.prefix_cache_hits <= stats.prefix_cache_queries,
        "no prefix cache hit: {stats:?}"
    );
    assert_eq!(stats.num_used_blocks, 0, "blocks leaked: {stats:?}");
    engine.shutdown();
}

#[test]
fn seeded_sampling_is_the_same_alone_and_in_a_batch_of_16() {
    let engine = start(|_| EngineConfig::default());
    let cases = golden_cases();
    let seeded = |prompt: &[u32], seed: u64| EngineRequest {
        prompt_token_ids: prompt.to_vec(),
        params: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            max_tokens: 24,
            ignore_eos: true,
            ..SamplingParams::default()
        },
        ..Default::default()
    };
    let target = seeded(&cases[1].prompt_token_ids, 1234);
    let alone = collect(engine.submit(target.clone()).expect("submit"), 1);
    assert_eq!(alone.tokens[0].len(), 24);

    // 15 other requests (other prompts, seeds, parameters, some greedy) around it.
    let mut others = vec![];
    for i in 0..15usize {
        let c = &cases[i % cases.len()];
        let mut r = seeded(&c.prompt_token_ids, 7 + i as u64);
        r.params.temperature = [0.0, 0.5, 1.3][i % 3];
        r.params.max_tokens = 8 + i;
        r.params.presence_penalty = if i % 2 == 0 { 0.5 } else { 0.0 };
        others.push(engine.submit(r).expect("submit"));
        if i == 7 {
            others.push(engine.submit(target.clone()).expect("submit"));
        }
    }
    let mut results: Vec<Collected> = others.into_iter().map(|s| collect(s, 1)).collect();
    let in_batch = results.remove(8);
    assert_eq!(in_batch.tokens, alone.tokens);

    // A different seed gives a different stream (the check above is not vacuous).
    let other_seed = collect(
        engine
            .submit(seeded(&cases[1].prompt_token_ids, 99))
            .expect("submit"),
        1,
    );
    assert_ne!(other_seed.tokens, alone.tokens);
    engine.shutdown();
}

#[test]
fn dropping_50_streams_at_random_points_returns_every_block() {
    let engine = start(|_| EngineConfig {
        max_num_batched_tokens: Some(64),
        ..EngineConfig::default()
    });
    let cases = golden_cases();
    let mut streams: Vec<RequestStream> = (0..50usize)
        .map(|i| {
            let c = &cases[i % cases.len()];
            engine
                .submit(EngineRequest {
                    prompt_token_ids: c.prompt_token_ids.clone(),
                    params: SamplingParams {
                        max_tokens: 200,
                        ignore_eos: true,
                        seed: Some(i as u64),
                        ..SamplingParams::default()
                    },
                    ..Default::default()
                })
                .expect("submit")
        })
        .collect();
    // Drop each after a pseudo-random number of events (0 to 6): some still waiting, some
    // mid-prefill, some decoding.
    let mut dropped = 0;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut quota: Vec<u64> = (0..streams.len())
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 7
        })
        .collect();
    while !streams.is_empty() {
        let mut i = 0;
        while i < streams.len() {
            if quota[i] == 0 {
                drop(streams.swap_remove(i));
                quota.swap_remove(i);
                dropped += 1;
                continue;
            }
            match streams[i].blocking_next() {
                Some(TokenEvent::Token { .. }) => quota[i] -= 1,
                other => panic!("unexpected event {other:?}"),
            }
            i += 1;
        }
    }
    assert_eq!(dropped, 50);
    let stats = wait_for(&engine, |s| {
        s.num_running == 0 && s.num_waiting == 0 && s.num_used_blocks == 0
    });
    assert_eq!(engine.num_queued(), 0, "{stats:?}");
    assert!(stats.steps > 0);
    engine.shutdown();
}

/// Allows only the tokens of a fixed set and counts what it is told.
struct OnlyTokens {
    allowed: wick_engine::TokenBitset,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl wick_engine::LogitsProcessor for OnlyTokens {
    fn constraint(&mut self, _generated: &[u32]) -> wick_engine::SamplingConstraint {
        wick_engine::SamplingConstraint {
            allowed: Some(self.allowed.clone()),
            bias: vec![],
        }
    }

    fn accept(&mut self, _token: u32) {
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_logits_processor_confines_every_completion_of_a_request() {
    let engine = start(|_| EngineConfig::default());
    let vocab = engine.info().vocab_size;
    let allowed_ids = [198u32, 314, 1000, 2222];
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let factory = move |_index: usize,
                        _prompt: &[u32]|
          -> Result<Box<dyn wick_engine::LogitsProcessor>, wick_core::WickError> {
        Ok(Box::new(OnlyTokens {
            allowed: wick_engine::TokenBitset::from_tokens(vocab, allowed_ids),
            accepted: counter.clone(),
        }))
    };
    let request = EngineRequest::new(
        golden_cases()[0].prompt_token_ids.clone(),
        SamplingParams {
            n: 2,
            temperature: 1.0,
            seed: Some(5),
            max_tokens: 12,
            ignore_eos: true,
            ..SamplingParams::default()
        },
    )
    .with_logits_processor(std::sync::Arc::new(factory));
    let got = collect(engine.submit(request).expect("submit"), 2);
    for tokens in &got.tokens {
        assert_eq!(tokens.len(), 12);
        assert!(tokens.iter().all(|t| allowed_ids.contains(t)), "{tokens:?}");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 24);
    engine.shutdown();
}

/// A scripted grammar: constrains nothing, forces `forced` after the first sampled
/// token, and ends the sequence once `end_after` tokens are accepted.
struct Scripted {
    forced: Vec<u32>,
    end_after: Option<usize>,
    accepted: usize,
    gave_forced: bool,
}

impl wick_engine::LogitsProcessor for Scripted {
    fn constraint(&mut self, _generated: &[u32]) -> wick_engine::SamplingConstraint {
        wick_engine::SamplingConstraint::default()
    }

    fn accept(&mut self, _token: u32) {
        self.accepted += 1;
    }

    fn forced(&mut self) -> Vec<u32> {
        if self.accepted == 1 && !self.gave_forced {
            self.gave_forced = true;
            self.accepted += self.forced.len();
            return self.forced.clone();
        }
        vec![]
    }

    fn ended(&self) -> Option<String> {
        (self.end_after)
            .filter(|&n| self.accepted >= n)
            .map(|n| format!("scripted end after {n}"))
    }
}

fn scripted(
    forced: Vec<u32>,
    end_after: Option<usize>,
) -> std::sync::Arc<dyn wick_engine::LogitsProcessorFactory> {
    std::sync::Arc::new(
        move |_index: usize,
              _prompt: &[u32]|
              -> Result<Box<dyn wick_engine::LogitsProcessor>, wick_core::WickError> {
            Ok(Box::new(Scripted {
                forced: forced.clone(),
                end_after,
                accepted: 0,
                gave_forced: false,
            }))
        },
    )
}

#[test]
fn forced_tokens_are_appended_and_their_kv_is_computed_with_the_next_chunk() {
    let engine = start(|_| EngineConfig::default());
    let prompt = golden_cases()[0].prompt_token_ids.clone();
    // " The answer is" in SmolLM2's vocabulary: any ids would do.
    let forced = vec![378u32, 3065, 314];
    let request = EngineRequest::new(
        prompt.clone(),
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(10)
        },
    )
    .with_logits_processor(scripted(forced.clone(), None));
    let got = collect(engine.submit(request).expect("submit"), 1);
    let tokens = &got.tokens[0];
    assert_eq!(tokens.len(), 10, "{tokens:?}");
    assert_eq!(&tokens[1..4], &forced[..], "{tokens:?}");
    assert_eq!(got.finish[0], Some(FinishReason::Length));
    assert_eq!(got.metrics.expect("metrics").generation_tokens, 10);

    // What follows the forced tokens is what the model says after them: their KV was
    // computed as if they had been part of a prompt.
    let mut extended = prompt;
    extended.extend(&tokens[..4]);
    let free = EngineRequest::new(
        extended,
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(6)
        },
    );
    let after = collect(engine.submit(free).expect("submit"), 1);
    assert_eq!(
        after.tokens[0],
        tokens[4..],
        "continuation after forced tokens"
    );
    engine.shutdown();
}

#[test]
fn a_logits_processor_can_end_a_sequence_with_stop() {
    let engine = start(|_| EngineConfig::default());
    let request = EngineRequest::new(
        golden_cases()[1].prompt_token_ids.clone(),
        SamplingParams {
            n: 2,
            ignore_eos: true,
            ..SamplingParams::greedy(20)
        },
    )
    .with_logits_processor(scripted(vec![], Some(3)));
    let got = collect(engine.submit(request).expect("submit"), 2);
    for i in 0..2 {
        assert_eq!(got.tokens[i].len(), 3, "{:?}", got.tokens[i]);
        assert_eq!(got.finish[i], Some(FinishReason::Stop));
    }
    // Forced tokens count towards the end too: 1 sampled + 4 forced ends at 5.
    let request = EngineRequest::new(
        golden_cases()[1].prompt_token_ids.clone(),
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(20)
        },
    )
    .with_logits_processor(scripted(vec![11, 12, 13, 14], Some(5)));
    let got = collect(engine.submit(request).expect("submit"), 1);
    assert_eq!(got.tokens[0].len(), 5, "{:?}", got.tokens[0]);
    assert_eq!(&got.tokens[0][1..], &[11, 12, 13, 14]);
    assert_eq!(got.finish[0], Some(FinishReason::Stop));
    let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_waiting == 0);
    assert_eq!(stats.num_used_blocks, 0, "blocks leaked: {stats:?}");
    engine.shutdown();
}

#[test]
fn constrained_requests_in_the_batch_leave_free_requests_greedy_tokens_alone() {
    let engine = start(|_| EngineConfig {
        max_num_seqs: 16,
        ..EngineConfig::default()
    });
    let vocab = engine.info().vocab_size;
    let cases = golden_cases();
    let mut constrained = vec![];
    let mut free = vec![];
    for (i, c) in cases.iter().enumerate() {
        // Interleaved: a constrained request (sampled, masked, with forced tokens)
        // between free greedy ones.
        let allowed: Vec<u32> = (0..64)
            .map(|k| (k * 97 + i as u32 * 13) % vocab as u32)
            .collect();
        let factory = move |_index: usize,
                            _prompt: &[u32]|
              -> Result<
            Box<dyn wick_engine::LogitsProcessor>,
            wick_core::WickError,
        > {
            Ok(Box::new(OnlyTokens {
                allowed: wick_engine::TokenBitset::from_tokens(vocab, allowed.clone()),
                accepted: Default::default(),
            }))
        };
        let masked = EngineRequest::new(
            c.prompt_token_ids.clone(),
            SamplingParams {
                temperature: 1.0,
                seed: Some(i as u64),
                ignore_eos: true,
                ..SamplingParams::greedy(24)
            },
        )
        .with_logits_processor(std::sync::Arc::new(factory));
        constrained.push(engine.submit(masked).expect("submit"));
        let forcing = EngineRequest::new(
            c.prompt_token_ids.clone(),
            SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(16)
            },
        )
        .with_logits_processor(scripted(vec![100, 200, 300], Some(12)));
        constrained.push(engine.submit(forcing).expect("submit"));
        let req = EngineRequest::new(
            c.prompt_token_ids.clone(),
            SamplingParams::greedy(c.max_tokens),
        );
        free.push((c, engine.submit(req).expect("submit")));
    }
    for (case, stream) in free {
        assert_ids_match_golden(case, &collect(stream, 1).tokens[0]);
    }
    for stream in constrained {
        assert!(!collect(stream, 1).tokens[0].is_empty());
    }
    engine.shutdown();
}

#[test]
fn an_unset_token_budget_is_chosen_from_the_step_cost_on_the_cpu() {
    let engine = start(|_| EngineConfig {
        max_num_batched_tokens: None,
        ..EngineConfig::default()
    });
    let budget = engine.info().max_num_batched_tokens;
    assert!(
        (32..=2048).contains(&budget) && budget % 16 == 0,
        "budget {budget}"
    );
    // Served with that budget (in chunks where a prompt is longer), with golden results.
    let case = golden_cases()
        .into_iter()
        .max_by_key(|c| c.prompt_token_ids.len())
        .unwrap();
    let req = EngineRequest::new(
        case.prompt_token_ids.clone(),
        SamplingParams::greedy(case.max_tokens),
    );
    assert_ids_match_golden(&case, &collect(engine.submit(req).unwrap(), 1).tokens[0]);
    engine.shutdown();
}

#[test]
fn only_sampled_rows_reach_the_host_and_every_step_phase_is_timed() {
    // A 16-token budget: the longest golden prompt is prefilled in chunks; the chunks
    // before its last get no logits row at all.
    let engine = start(|_| EngineConfig {
        max_num_batched_tokens: Some(16),
        ..EngineConfig::default()
    });
    let case = golden_cases()
        .into_iter()
        .max_by_key(|c| c.prompt_token_ids.len())
        .unwrap();
    assert!(
        case.prompt_token_ids.len() > 16,
        "the prompt must need chunks"
    );
    let req = EngineRequest::new(
        case.prompt_token_ids.clone(),
        SamplingParams::greedy(case.max_tokens),
    );
    let got = collect(engine.submit(req).unwrap(), 1).tokens.remove(0);
    assert_ids_match_golden(&case, &got);
    // The stats of the last step are published just after its tokens went out.
    let stats = wait_for(&engine, |s| s.num_running == 0 && s.num_waiting == 0);
    // The sampling op runs where the logits are: one u32 token per generated token
    // crosses to the host (no logprobs were asked for), nothing per prompt chunk.
    assert!(stats.steps > got.len() as u64, "{} steps", stats.steps);
    assert_eq!(stats.device_to_host_bytes, got.len() as u64 * 4);
    // Every phase of every step is in its histogram, and the phases fit in the steps.
    let mut phases_s = 0.0;
    for phase in wick_engine::StepPhase::ALL {
        let h = stats.step_phase_duration.get(phase);
        assert_eq!(h.count, stats.steps, "{}", phase.name());
        phases_s += h.sum;
    }
    assert_eq!(stats.step_duration.count, stats.steps);
    assert!(
        phases_s <= stats.step_duration.sum,
        "{phases_s} s in phases"
    );
    assert!(
        stats
            .step_phase_duration
            .get(wick_engine::StepPhase::Forward)
            .sum
            > 0.0
    );
    engine.shutdown();
}

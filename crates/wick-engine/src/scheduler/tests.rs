//! Scheduler tests with fabricated model outputs: no model, no GPU.

use super::*;

pub(super) fn sid(r: u64, i: u32) -> SeqId {
    SeqId::new(RequestId(r), i)
}

pub(super) fn config(num_blocks: usize, block_size: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        ..SchedulerConfig::new(num_blocks, block_size, 4096)
    }
}

pub(super) fn prompt(start: u32, len: u32) -> Vec<u32> {
    (start..start + len).collect()
}

/// The fake model's next token: a function of the position only, so recomputation
/// after preemption must give the same tokens.
fn fake_token(seq_len: usize) -> u32 {
    1000 + seq_len as u32
}

/// Checks the output's limits, fabricates the sampled tokens, applies them.
pub(super) fn step(s: &mut Scheduler) -> (SchedulerOutput, Vec<SeqUpdate>) {
    let out = s.schedule();
    let c = s.config().clone();
    let sum: usize = out.scheduled.iter().map(|x| x.token_ids.len()).sum();
    assert_eq!(out.total_num_scheduled_tokens, sum);
    assert!(sum <= c.max_num_batched_tokens && out.scheduled.len() <= c.max_num_seqs);
    for x in &out.scheduled {
        assert!(x.block_table.len() * c.block_size >= x.seq_len());
        assert!(slot_mapping(x, c.block_size).is_some());
    }
    let sampled: Vec<_> = out
        .to_sample()
        .map(|x| (x.seq, fake_token(x.seq_len())))
        .collect();
    let ups = s.update_from_output(&out, &sampled);
    s.check_invariants().unwrap();
    (out, ups)
}

/// Cache slot of each of `x.token_ids` (`block * block_size + offset`), as the model
/// input builds it; `None` if the block table were too short.
pub(super) fn slot_mapping(x: &ScheduledSeq, block_size: usize) -> Option<Vec<u64>> {
    let bs = block_size.max(1);
    x.positions()
        .map(|p| {
            let block = *x.block_table.get(p / bs)?;
            Some(u64::from(block) * bs as u64 + (p % bs) as u64)
        })
        .collect()
}

fn shape(out: &SchedulerOutput) -> Vec<(SeqId, usize, usize, bool)> {
    let f = |x: &ScheduledSeq| (x.seq, x.num_computed_tokens, x.token_ids.len(), x.sample);
    out.scheduled.iter().map(f).collect()
}

#[test]
fn decode_first_then_chunked_prefill_within_budget() {
    let mut s = Scheduler::new(config(64, 4, 8)).unwrap();
    let (a, b) = (sid(1, 0), sid(2, 0));
    s.add_request(Sequence::new(a, prompt(0, 6), 10)).unwrap();
    assert_eq!(shape(&step(&mut s).0), vec![(a, 0, 6, true)]);
    s.add_request(Sequence::new(b, prompt(100, 20), 10))
        .unwrap();
    assert_eq!(
        shape(&step(&mut s).0),
        vec![(a, 6, 1, true), (b, 0, 7, false)]
    );
    assert_eq!(
        shape(&step(&mut s).0),
        vec![(a, 7, 1, true), (b, 7, 7, false)]
    );
    assert_eq!(
        shape(&step(&mut s).0),
        vec![(a, 8, 1, true), (b, 14, 6, true)]
    );
    let (out, ups) = step(&mut s);
    assert_eq!(shape(&out), vec![(a, 9, 1, true), (b, 20, 1, true)]);
    assert_eq!(out.scheduled[0].token_ids, vec![fake_token(9)]);
    assert_eq!(ups.len(), 2);
    assert_eq!(s.get(a).unwrap().output_token_ids().len(), 5);
}

#[test]
fn long_prompt_is_prefilled_in_chunks() {
    let mut s = Scheduler::new(config(64, 4, 16)).unwrap();
    let a = sid(1, 0);
    s.add_request(Sequence::new(a, prompt(0, 50), 2)).unwrap();
    for (done, n, sample) in [
        (0, 16, false),
        (16, 16, false),
        (32, 16, false),
        (48, 2, true),
    ] {
        let (out, ups) = step(&mut s);
        assert_eq!(shape(&out), vec![(a, done, n, sample)]);
        assert_eq!(out.scheduled[0].token_ids, prompt(done as u32, n as u32));
        assert_eq!(ups.len(), usize::from(sample));
    }
    let (_, ups) = step(&mut s);
    assert_eq!(ups[0].finish, Some(FinishReason::Length));
    assert!(!s.has_unfinished());
    assert_eq!(s.kv().num_free_blocks(), 64);

    // The threshold caps one sequence's share of a step.
    let mut c = config(64, 4, 100);
    c.long_prefill_token_threshold = Some(10);
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(Sequence::new(sid(1, 0), prompt(0, 25), 2))
        .unwrap();
    s.add_request(Sequence::new(sid(2, 0), prompt(0, 25), 2))
        .unwrap();
    let out = step(&mut s).0;
    assert!(out.scheduled.iter().all(|x| x.token_ids.len() == 10));
}

#[test]
fn prefix_hits_skip_computed_blocks() {
    let mut s = Scheduler::new(config(64, 4, 64)).unwrap();
    let (a, b) = (sid(1, 0), sid(2, 0));
    s.add_request(Sequence::new(a, prompt(0, 20), 1)).unwrap();
    step(&mut s);
    assert!(!s.has_unfinished(), "finished after one token");
    let mut longer = prompt(0, 20);
    longer.extend([7, 7, 7]);
    s.add_request(Sequence::new(b, longer, 1)).unwrap();
    let out = step(&mut s).0;
    assert_eq!(shape(&out), vec![(b, 20, 3, true)]);
    assert_eq!(out.scheduled[0].token_ids, vec![7, 7, 7]);
    let st = s.stats();
    assert_eq!((st.prefix_cache_queries, st.prefix_cache_hits), (43, 20));
}

#[test]
fn n_copies_share_prompt_blocks_in_the_same_step() {
    let mut s = Scheduler::new(config(64, 4, 64)).unwrap();
    for i in 0..3 {
        s.add_request(Sequence::new(sid(5, i), prompt(0, 18), 4))
            .unwrap();
    }
    let out = s.schedule();
    let (c0, c1, c2) = (sid(5, 0), sid(5, 1), sid(5, 2));
    assert_eq!(
        shape(&out),
        vec![(c0, 0, 18, true), (c1, 16, 2, true), (c2, 16, 2, true)]
    );
    let t: Vec<&[u32]> = out.scheduled.iter().map(|x| &x.block_table[..]).collect();
    assert_eq!(t[0][..4], t[1][..4]);
    assert_eq!(t[0][..4], t[2][..4]);
    assert!(t[0][4] != t[1][4] && t[1][4] != t[2][4] && t[0][4] != t[2][4]);
    assert_eq!(s.kv().pool().ref_count(t[0][0]), 3);
    assert_eq!(s.kv().num_free_blocks(), 64 - 7);
    let sampled: Vec<_> = out.to_sample().map(|x| (x.seq, 9)).collect();
    assert_eq!(s.update_from_output(&out, &sampled).len(), 3);
    s.check_invariants().unwrap();
    for c in [c0, c1, c2] {
        assert_eq!(s.get(c).unwrap().num_computed_tokens(), 18);
    }
    assert!(s.finish(c0, FinishReason::Stop).unwrap().is_finished());
    assert_eq!(s.kv().pool().ref_count(t[0][0]), 2);
    assert_eq!(s.abort_request(RequestId(5)).len(), 2);
    assert_eq!(s.kv().num_free_blocks(), 64);
}

#[test]
fn preemption_recomputes_the_newest_and_it_finishes_right() {
    for caching in [false, true] {
        // 6 blocks of 4 = 24 tokens; each sequence alone needs 8 + 12 - 1 = 19 slots.
        let mut c = config(6, 4, 64);
        c.enable_prefix_caching = caching;
        let mut s = Scheduler::new(c).unwrap();
        let (a, b) = (sid(1, 0), sid(2, 0));
        s.add_request(Sequence::new(a, prompt(0, 8), 12)).unwrap();
        s.add_request(Sequence::new(b, prompt(50, 8), 12)).unwrap();
        let mut outputs: HashMap<SeqId, Vec<u32>> = HashMap::new();
        let mut preempted = vec![];
        for _ in 0..100 {
            if !s.has_unfinished() {
                break;
            }
            let (out, ups) = step(&mut s);
            preempted.extend(out.preempted.iter().copied());
            for u in ups {
                outputs.entry(u.seq).or_default().push(u.token);
            }
        }
        assert!(!s.has_unfinished());
        assert_eq!(preempted.first(), Some(&b), "the newest is preempted");
        assert!(s.stats().num_preemptions >= 1);
        for seq in [a, b] {
            let expect: Vec<u32> = (8..20).map(fake_token).collect();
            assert_eq!(outputs[&seq], expect, "{seq}");
        }
        assert_eq!(s.kv().num_free_blocks(), 6);
        s.check_invariants().unwrap();
    }
}

#[test]
fn resumed_sequence_recomputes_prompt_and_output() {
    // 3 blocks of 2; A holds everything once it decodes, B is preempted mid-decode.
    let mut c = config(3, 2, 64);
    c.enable_prefix_caching = false;
    let mut s = Scheduler::new(c).unwrap();
    let (a, b) = (sid(1, 0), sid(2, 0));
    s.add_request(Sequence::new(a, prompt(0, 2), 4)).unwrap();
    s.add_request(Sequence::new(b, prompt(10, 1), 3)).unwrap();
    assert_eq!(
        shape(&step(&mut s).0),
        vec![(a, 0, 2, true), (b, 0, 1, true)]
    );
    // A needs a second block, B its second slot: both fit (3 blocks).
    assert_eq!(
        shape(&step(&mut s).0),
        vec![(a, 2, 1, true), (b, 1, 1, true)]
    );
    // A's slot 3 is in its second block; B's slot 2 needs a block and none is free:
    // B is the newest running sequence, so it preempts itself.
    let (out, _) = step(&mut s);
    assert_eq!(out.preempted, vec![b]);
    assert_eq!(shape(&out), vec![(a, 3, 1, true)]);
    let bseq = s.get(b).unwrap();
    assert_eq!(bseq.status(), SeqStatus::Preempted);
    assert_eq!(bseq.output_token_ids(), &[fake_token(1), fake_token(2)]);
    // A takes B's block and finishes at 4 outputs (B cannot be admitted meanwhile).
    let (out, ups) = step(&mut s);
    assert_eq!(shape(&out), vec![(a, 4, 1, true)]);
    assert_eq!(ups[0].finish, Some(FinishReason::Length));
    // B recomputes its prompt and both outputs, then samples its third and last token.
    let (out, ups) = step(&mut s);
    assert_eq!(shape(&out), vec![(b, 0, 3, true)]);
    assert_eq!(
        out.scheduled[0].token_ids,
        vec![10, fake_token(1), fake_token(2)]
    );
    assert_eq!(
        (ups[0].token, ups[0].finish),
        (fake_token(3), Some(FinishReason::Length))
    );
    assert!(!s.has_unfinished());
    assert_eq!(s.stats().num_preemptions, 1);
}

#[test]
fn impossible_requests_are_refused_up_front() {
    let mut c = config(4, 4, 64); // 16 tokens of cache
    c.max_model_len = 12;
    let mut s = Scheduler::new(c.clone()).unwrap();
    let e = s
        .add_request(Sequence::new(sid(1, 0), vec![], 4))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    let e = s
        .add_request(Sequence::new(sid(1, 0), prompt(0, 3), 0))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidRequest);
    let e = s
        .add_request(Sequence::new(sid(1, 0), prompt(0, 10), 3))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLong);
    assert!(e.message.contains("10") && e.message.contains("13") && e.message.contains("12"));
    c.max_model_len = 100;
    let mut s = Scheduler::new(c).unwrap();
    let e = s
        .add_request(Sequence::new(sid(1, 0), prompt(0, 10), 7))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLong);
    assert!(
        e.message.contains("17") && e.message.contains("4 blocks of 4"),
        "{e}"
    );
    s.add_request(Sequence::new(sid(1, 0), prompt(0, 10), 6))
        .unwrap();
    let e = s
        .add_request(Sequence::new(sid(1, 0), prompt(0, 1), 1))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert_eq!(s.num_waiting(), 1);
    let mut bad = config(4, 4, 0);
    assert!(Scheduler::new(bad.clone()).is_err());
    bad.max_num_batched_tokens = 1;
    bad.long_prefill_token_threshold = Some(0);
    assert!(Scheduler::new(bad).is_err());
}

#[test]
fn max_num_seqs_limits_running() {
    let mut c = config(64, 4, 64);
    c.max_num_seqs = 2;
    let mut s = Scheduler::new(c).unwrap();
    for r in 0..3 {
        s.add_request(Sequence::new(sid(r, 0), prompt(0, 3), 2))
            .unwrap();
    }
    assert_eq!(step(&mut s).0.scheduled.len(), 2);
    assert_eq!((s.num_running(), s.num_waiting()), (2, 1));
    step(&mut s); // both finish (2 tokens each)
    assert_eq!(shape(&step(&mut s).0), vec![(sid(2, 0), 0, 3, true)]);
}

#[test]
fn finish_abort_and_stale_outputs() {
    let mut s = Scheduler::new(config(8, 4, 64)).unwrap();
    let (a, b) = (sid(1, 0), sid(2, 0));
    s.add_request(Sequence::new(a, prompt(0, 5), 8)).unwrap();
    s.add_request(Sequence::new(b, prompt(9, 5), 8)).unwrap();
    let out = s.schedule();
    assert_eq!(s.kv().num_free_blocks(), 4);
    let gone = s.abort(b).unwrap();
    assert_eq!(gone.status(), SeqStatus::Finished(FinishReason::Abort));
    assert_eq!(s.kv().num_free_blocks(), 6, "freed at once");
    let ups = s.update_from_output(&out, &[(a, 1), (b, 2)]);
    assert_eq!(ups.len(), 1, "the aborted one is skipped");
    // The caller's stop check: eos finishes at once.
    assert_eq!(
        s.finish(a, FinishReason::Stop).unwrap().output_token_ids(),
        &[1]
    );
    assert!(s.finish(a, FinishReason::Stop).is_none());
    assert!(s.abort(sid(9, 9)).is_none());
    assert_eq!(s.kv().num_free_blocks(), 8);
    assert!(s.schedule().is_empty());
}

#[test]
fn missing_sample_recomputes_last_token() {
    let mut s = Scheduler::new(config(8, 4, 64)).unwrap();
    let a = sid(1, 0);
    s.add_request(Sequence::new(a, prompt(0, 5), 8)).unwrap();
    let out = s.schedule();
    assert!(s.update_from_output(&out, &[]).is_empty());
    assert_eq!(shape(&s.schedule()), vec![(a, 4, 1, true)]);
    s.check_invariants().unwrap();
}

#[test]
fn failed_step_forgets_hashes_and_recomputes() {
    let mut s = Scheduler::new(config(16, 4, 64)).unwrap();
    let (a, b) = (sid(1, 0), sid(1, 1));
    s.add_request(Sequence::new(a, prompt(0, 9), 3)).unwrap();
    s.add_request(Sequence::new(b, prompt(0, 9), 3)).unwrap();
    let out = s.schedule();
    assert_eq!(shape(&out), vec![(a, 0, 9, true), (b, 8, 1, true)]);
    s.fail_step(&out);
    s.check_invariants().unwrap();
    assert_eq!((s.num_running(), s.num_waiting()), (0, 2));
    assert_eq!(s.kv().pool().num_cached_blocks(), 0);
    assert_eq!(s.stats().num_preemptions, 0);
    let (out, _) = step(&mut s);
    assert_eq!(shape(&out), vec![(a, 0, 9, true), (b, 8, 1, true)]);
}

/// One step in which every sampled sequence gets `token`; returns its updates.
fn step_sampling(s: &mut Scheduler, token: u32) -> Vec<SeqUpdate> {
    let out = s.schedule();
    let sampled: Vec<_> = out.to_sample().map(|x| (x.seq, token)).collect();
    let ups = s.update_from_output(&out, &sampled);
    s.check_invariants().unwrap();
    ups
}

const EOS: u32 = 2;

/// A scheduler holding one sequence `sid(1, 0)` of 4 prompt tokens, with `params`' stop
/// rules for a model whose eos is [`EOS`].
fn one_seq(params: wick_core::SamplingParams) -> Scheduler {
    let mut s = Scheduler::new(config(64, 4, 64)).unwrap();
    let stop = StopConfig::new(&params, &[EOS]);
    let seq = Sequence::new(sid(1, 0), prompt(100, 4), params.max_tokens).with_stop(stop);
    s.add_request(seq).unwrap();
    s
}

fn finishes(ups: &[SeqUpdate]) -> Vec<(u32, Option<FinishReason>)> {
    ups.iter().map(|u| (u.token, u.finish)).collect()
}

#[test]
fn eos_finishes_with_stop_and_frees_blocks() {
    let mut s = one_seq(wick_core::SamplingParams::greedy(10));
    assert_eq!(finishes(&step_sampling(&mut s, 7)), vec![(7, None)]);
    assert_eq!(
        finishes(&step_sampling(&mut s, EOS)),
        vec![(EOS, Some(FinishReason::Stop))]
    );
    assert!(!s.has_unfinished());
    assert_eq!(s.kv().num_free_blocks(), 64);
}

#[test]
fn a_stop_token_id_finishes_with_stop() {
    let params = wick_core::SamplingParams {
        stop_token_ids: vec![42],
        ..wick_core::SamplingParams::greedy(10)
    };
    let mut s = one_seq(params);
    assert_eq!(finishes(&step_sampling(&mut s, 41)), vec![(41, None)]);
    assert_eq!(
        finishes(&step_sampling(&mut s, 42)),
        vec![(42, Some(FinishReason::Stop))]
    );
    assert!(!s.has_unfinished());
}

#[test]
fn min_tokens_holds_eos_and_stop_ids_back() {
    let params = wick_core::SamplingParams {
        min_tokens: 3,
        stop_token_ids: vec![42],
        ..wick_core::SamplingParams::greedy(10)
    };
    let mut s = one_seq(params);
    assert_eq!(finishes(&step_sampling(&mut s, EOS)), vec![(EOS, None)]);
    assert_eq!(finishes(&step_sampling(&mut s, 42)), vec![(42, None)]);
    assert_eq!(
        finishes(&step_sampling(&mut s, EOS)),
        vec![(EOS, Some(FinishReason::Stop))]
    );
    assert!(!s.has_unfinished());
}

#[test]
fn ignore_eos_keeps_going_but_stop_ids_still_stop() {
    let params = wick_core::SamplingParams {
        ignore_eos: true,
        stop_token_ids: vec![42],
        ..wick_core::SamplingParams::greedy(10)
    };
    let mut s = one_seq(params.clone());
    for _ in 0..3 {
        assert_eq!(finishes(&step_sampling(&mut s, EOS)), vec![(EOS, None)]);
    }
    assert_eq!(
        finishes(&step_sampling(&mut s, 42)),
        vec![(42, Some(FinishReason::Stop))]
    );
    // eos until max_tokens: Length.
    let mut s = one_seq(wick_core::SamplingParams {
        max_tokens: 2,
        ..params
    });
    assert_eq!(finishes(&step_sampling(&mut s, EOS)), vec![(EOS, None)]);
    assert_eq!(
        finishes(&step_sampling(&mut s, EOS)),
        vec![(EOS, Some(FinishReason::Length))]
    );
}

#[test]
fn length_at_max_tokens_and_the_context_limit_a_stop_token_last_reads_stop() {
    let mut s = one_seq(wick_core::SamplingParams::greedy(2));
    assert_eq!(finishes(&step_sampling(&mut s, 7)), vec![(7, None)]);
    assert_eq!(
        finishes(&step_sampling(&mut s, 8)),
        vec![(8, Some(FinishReason::Length))]
    );
    assert!(!s.has_unfinished());
    let mut s = one_seq(wick_core::SamplingParams::greedy(2));
    step_sampling(&mut s, 7);
    assert_eq!(
        finishes(&step_sampling(&mut s, EOS)),
        vec![(EOS, Some(FinishReason::Stop))]
    );
    // The model's context: 4 prompt + 2 output tokens fill max_model_len = 6.
    let mut c = config(64, 4, 64);
    c.max_model_len = 6;
    let mut s = Scheduler::new(c).unwrap();
    s.add_request(Sequence::new(sid(1, 0), prompt(0, 4), 2))
        .unwrap();
    step_sampling(&mut s, 7);
    assert_eq!(
        finishes(&step_sampling(&mut s, 8)),
        vec![(8, Some(FinishReason::Length))]
    );
    assert!(!s.has_unfinished());
}

#[test]
fn one_message_for_the_context_limit() {
    let e = check_context(10, 3, 12, 100, 4).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLong);
    assert_eq!(
        e.message,
        "this model's maximum context length is 12 tokens; the prompt has 10 tokens and \
         max_tokens is 3 (13 in all)"
    );
    let e = check_context(10, 7, 100, 4, 4).unwrap_err();
    assert!(e
        .message
        .contains("is 16 tokens (the KV cache holds 4 blocks of 4 tokens)"));
    assert!(check_context(10, 2, 12, 3, 4).is_ok());
    assert!(check_context(usize::MAX, 2, 12, 3, 4).is_err());
}

//! Property tests: random arrivals, prompts (sharing prefixes), max_tokens, n, stop
//! tokens and aborts over a small cache. A fake KV cache records, per slot, which prefix
//! wrote it, so every step also checks that each scheduled sequence would attend to
//! exactly its own tokens' K/V (prefix hits, sharing, eviction and preemption included).

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct Req {
    arrive: usize,
    prompt: Vec<u32>,
    max_tokens: usize,
    n: u32,
    abort_at: Option<usize>,
}

fn req() -> impl Strategy<Value = Req> {
    let abort = prop::option::weighted(0.2, 0..40usize);
    let tail = prop::collection::vec(0..4u32, 0..9);
    (0..12usize, 0..3u32, tail, 1..10usize, 1..4u32, abort).prop_map(
        |(arrive, shared, tail, max_tokens, n, abort_at)| {
            // Prompts share prefixes of one base sequence, so prefix hits happen.
            let mut prompt: Vec<u32> = (0..shared * 4).map(|t| t % 7).collect();
            prompt.extend(tail);
            Req {
                arrive,
                prompt,
                max_tokens,
                n,
                abort_at,
            }
        },
    )
}

fn config() -> impl Strategy<Value = SchedulerConfig> {
    let threshold = prop::option::of(1..8usize);
    (
        3..24usize,
        1..5usize,
        1..24usize,
        1..5usize,
        8..48usize,
        any::<bool>(),
        threshold,
    )
        .prop_map(
            |(num_blocks, block_size, budget, seqs, len, caching, threshold)| SchedulerConfig {
                max_num_batched_tokens: budget,
                max_num_seqs: seqs,
                max_model_len: len,
                block_size,
                num_blocks,
                enable_prefix_caching: caching,
                long_prefill_token_threshold: threshold,
                max_loras: 0,
            },
        )
}

/// The fake model's sampled token: small values, so outputs repeat and share prefixes.
fn fake_token(seq_len: usize, request: u64) -> u32 {
    ((seq_len as u64 * 31 + request * 17) % 5) as u32
}

/// Identity of the K/V at each position: a hash of the tokens up to it.
fn prefix_ids(tokens: &[u32]) -> Vec<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    tokens
        .iter()
        .map(|&t| {
            h = (h ^ u64::from(t)).wrapping_mul(0x100_0000_01b3);
            h
        })
        .collect()
}

fn run(c: SchedulerConfig, reqs: Vec<Req>, stop: Option<u32>) -> Result<(), TestCaseError> {
    let mut s = Scheduler::new(c.clone()).map_err(|e| TestCaseError::fail(e.message))?;
    let bs = c.block_size;
    let limit = c.max_model_len.min(c.cache_tokens());
    let mut model: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut kv: HashMap<u64, u64> = HashMap::new();
    let max_arrive = reqs.iter().map(|r| r.arrive).max().unwrap_or(0);
    let mut bound = max_arrive + 1;
    let mut done = false;
    for step in 0..100_000 {
        for (r, q) in reqs.iter().enumerate().filter(|(_, q)| q.arrive == step) {
            for i in 0..q.n {
                let id = SeqId::new(RequestId(r as u64), i);
                let res = s.add_request(Sequence::new(id, q.prompt.clone(), q.max_tokens));
                let total = q.prompt.len() + q.max_tokens;
                match res {
                    Ok(()) => {
                        prop_assert!(!q.prompt.is_empty() && total <= limit);
                        bound += total;
                        model.insert(id, q.prompt.clone());
                    }
                    Err(e) if q.prompt.is_empty() => {
                        prop_assert_eq!(e.kind, ErrorKind::InvalidRequest)
                    }
                    Err(e) => prop_assert!(e.kind == ErrorKind::TooLong && total > limit),
                }
            }
        }
        for (r, _) in reqs
            .iter()
            .enumerate()
            .filter(|(_, q)| q.abort_at == Some(step))
        {
            for seq in s.abort_request(RequestId(r as u64)) {
                prop_assert!(model.remove(&seq.id()).is_some());
            }
        }
        if step > max_arrive && !s.has_unfinished() {
            done = true;
            break;
        }
        prop_assert!(
            step <= bound,
            "no progress: step {} > bound {}",
            step,
            bound
        );

        let out = s.schedule();
        let sum: usize = out.scheduled.iter().map(|x| x.token_ids.len()).sum();
        prop_assert_eq!(out.total_num_scheduled_tokens, sum);
        prop_assert!(sum <= c.max_num_batched_tokens);
        prop_assert!(out.scheduled.len() <= c.max_num_seqs);
        prop_assert!(s.num_running() <= c.max_num_seqs);
        let mut seen = HashSet::new();
        let mut written = HashSet::new();
        for x in &out.scheduled {
            prop_assert!(seen.insert(x.seq), "{} twice", x.seq);
            let n = x.token_ids.len();
            prop_assert!(n >= 1 && n <= c.long_prefill_token_threshold.unwrap_or(n));
            let toks = &model[&x.seq];
            prop_assert_eq!(&x.token_ids[..], &toks[x.positions()]);
            prop_assert_eq!(x.sample, x.seq_len() == toks.len());
            prop_assert!(x.block_table.len() * bs >= x.seq_len());
            prop_assert_eq!(&x.block_table[..], s.kv().block_table(x.seq));
            // The model writes this step's K/V, each slot once...
            let ids = prefix_ids(toks);
            let slots =
                super::tests::slot_mapping(x, bs).ok_or_else(|| TestCaseError::fail("table"))?;
            for (p, slot) in x.positions().zip(slots) {
                prop_assert!(written.insert(slot), "slot {} written twice", slot);
                kv.insert(slot, ids[p]);
            }
        }
        // ... then every sequence attends to exactly its own prefix.
        for x in &out.scheduled {
            let ids = prefix_ids(&model[&x.seq]);
            for (p, &id) in ids.iter().enumerate().take(x.seq_len()) {
                let slot = u64::from(x.block_table[p / bs]) * bs as u64 + (p % bs) as u64;
                prop_assert_eq!(kv.get(&slot), Some(&id), "{} position {}", x.seq, p);
            }
        }

        let sampled: Vec<_> = out
            .to_sample()
            .map(|x| (x.seq, fake_token(x.seq_len(), x.seq.request.0)))
            .collect();
        for u in s.update_from_output(&out, &sampled) {
            let toks = model
                .get_mut(&u.seq)
                .ok_or_else(|| TestCaseError::fail("gone"))?;
            toks.push(u.token);
            let q = &reqs[u.seq.request.0 as usize];
            if u.finish == Some(FinishReason::Length) {
                prop_assert_eq!(toks.len(), q.prompt.len() + q.max_tokens);
                model.remove(&u.seq);
            } else if Some(u.token) == stop {
                let fin = s.finish(u.seq, FinishReason::Stop);
                prop_assert_eq!(fin.map(|f| f.token_ids().to_vec()), model.remove(&u.seq));
            }
        }
        s.check_invariants().map_err(TestCaseError::fail)?;
        for (id, toks) in &model {
            let seq = s.get(*id).ok_or_else(|| TestCaseError::fail("lost"))?;
            prop_assert_eq!(seq.token_ids(), &toks[..]);
        }
    }
    prop_assert!(done, "did not finish");
    prop_assert!(model.is_empty());
    prop_assert_eq!(s.kv().num_free_blocks(), c.num_blocks);
    prop_assert_eq!(s.kv().num_seqs(), 0);
    for b in 0..c.num_blocks as u32 {
        prop_assert_eq!(s.kv().pool().ref_count(b), 0);
    }
    s.check_invariants().map_err(TestCaseError::fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn random_workloads_finish_without_leaks_or_overruns(
        c in config(),
        reqs in prop::collection::vec(req(), 1..10),
        stop in prop::option::of(0..5u32),
    ) {
        run(c, reqs, stop)?;
    }
}

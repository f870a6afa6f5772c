//! Turns one row of logits into the next token, honouring every OpenAI sampling
//! parameter: logit_bias, min_tokens (eos and stop ids masked), repetition / presence /
//! frequency penalties, temperature (0 = greedy), top_k, top_p, min_p, and a per-sequence
//! seeded random stream, so a seeded request draws the same tokens whatever else is in the
//! batch. Logprobs (chosen and top-N alternatives) are those of the model's raw
//! distribution, as vLLM reports them by default.
//!
//! Allocation: each row works in a [`SampleScratch`] reused across rows and steps; the
//! full vocabulary is never sorted (top-k/top-p select candidates with a partial
//! selection first).

use std::collections::HashMap;
use wick_core::{SamplingParams, TokenLogprobs};

/// A small, fast, reproducible PRNG (xoshiro256**, seeded through SplitMix64), kept per
/// sequence. Our own so that seeded outputs do not change with a dependency's version.
#[derive(Debug, Clone)]
pub struct SeqRng([u64; 4]);

impl SeqRng {
    /// A stream determined by `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Per-sequence sampling state, kept by the engine for the sequence's lifetime
/// (including across preemptions).
#[derive(Debug, Clone)]
pub struct SeqSamplingState {
    /// The sequence's random stream.
    pub rng: SeqRng,
    /// How often each token occurs in the output so far (presence/frequency penalties).
    pub output_counts: HashMap<u32, u32>,
    /// Distinct tokens of the prompt, sorted (the repetition penalty looks at prompt
    /// and output); empty when that penalty is off.
    pub prompt_tokens: Vec<u32>,
    /// Tokens generated so far.
    pub num_generated: usize,
}

impl SeqSamplingState {
    /// State for completion `index` of a request; `seed` makes it reproducible.
    pub fn new(seed: u64, index: usize, prompt: &[u32], params: &SamplingParams) -> Self {
        let mixed = seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F);
        Self {
            rng: SeqRng::from_seed(mixed),
            output_counts: HashMap::new(),
            prompt_tokens: if params.repetition_penalty != 1.0 {
                let mut distinct = prompt.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                distinct
            } else {
                Vec::new()
            },
            num_generated: 0,
        }
    }

    /// Records a generated token.
    pub fn push(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.num_generated += 1;
    }
}

/// Reusable buffers for one row.
#[derive(Debug, Default)]
pub struct SampleScratch {
    logits: Vec<f32>,
    candidates: Vec<(u32, f32)>,
}

/// The result for one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// Chosen token.
    pub token: u32,
    /// Its logprob and alternatives, when asked for.
    pub logprobs: Option<TokenLogprobs>,
}

/// Samples the next token from `raw` logits (one row, vocab-sized).
/// `stop_ids` are the ids (eos and the request's stop ids) that `min_tokens` holds back.
pub fn sample_row(
    raw: &[f32],
    params: &SamplingParams,
    state: &mut SeqSamplingState,
    stop_ids: &[u32],
    scratch: &mut SampleScratch,
) -> Sampled {
    let vocab = raw.len();
    let logits = &mut scratch.logits;
    logits.clear();
    logits.extend_from_slice(raw);
    for (&tok, &bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(tok as usize) {
            *l += bias;
        }
    }
    if state.num_generated < params.min_tokens {
        for &t in stop_ids {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    if params.repetition_penalty != 1.0 {
        let rp = params.repetition_penalty;
        let mut apply = |t: u32| {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 { *l / rp } else { *l * rp };
            }
        };
        // Each distinct token once: prompt_tokens is deduplicated, and tokens also in the
        // output are penalised through output_counts.
        for &t in &state.prompt_tokens {
            if !state.output_counts.contains_key(&t) {
                apply(t);
            }
        }
        for &t in state.output_counts.keys() {
            apply(t);
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        for (&t, &c) in &state.output_counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.frequency_penalty * c as f32 + params.presence_penalty;
            }
        }
    }

    let token = if params.temperature == 0.0 {
        argmax(logits)
    } else {
        sample_filtered(logits, params, &mut state.rng, &mut scratch.candidates)
    }
    .min(vocab.saturating_sub(1) as u32);

    let logprobs = (params.logprobs || params.top_logprobs > 0)
        .then(|| raw_logprobs(raw, token, params.top_logprobs, &mut scratch.candidates));
    state.push(token);
    Sampled { token, logprobs }
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best as u32
}

/// log-sum-exp of a row, stable.
fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f32 = v.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

/// Keeps the `k` largest of `cands` (unordered) in place.
fn keep_top(cands: &mut Vec<(u32, f32)>, k: usize) {
    if k < cands.len() {
        cands.select_nth_unstable_by(k, |a, b| b.1.total_cmp(&a.1));
        cands.truncate(k);
    }
}

fn sample_filtered(
    logits: &mut [f32],
    params: &SamplingParams,
    rng: &mut SeqRng,
    cands: &mut Vec<(u32, f32)>,
) -> u32 {
    let inv_t = 1.0 / params.temperature;
    for l in logits.iter_mut() {
        *l *= inv_t;
    }
    let lse = log_sum_exp(logits);
    if !lse.is_finite() {
        return argmax(logits);
    }
    cands.clear();
    cands.extend(
        logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l > f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, (l - lse).exp())),
    );
    if params.top_k > 0 {
        keep_top(cands, params.top_k);
    }
    if params.min_p > 0.0 {
        let top = cands.iter().map(|c| c.1).fold(0.0, f32::max);
        let floor = params.min_p * top;
        cands.retain(|c| c.1 >= floor);
    }
    if params.top_p < 1.0 {
        // Most of the mass usually sits in few tokens: try a small prefix before sorting all.
        let mut k = 64.min(cands.len());
        loop {
            keep_top_sorted_prefix(cands, k);
            let mass: f32 = cands[..k].iter().map(|c| c.1).sum();
            if mass >= params.top_p || k == cands.len() {
                break;
            }
            k = (k * 8).min(cands.len());
        }
        let mut cum = 0.0;
        let mut cut = cands.len();
        for (i, c) in cands.iter().enumerate() {
            cum += c.1;
            if cum >= params.top_p {
                cut = i + 1;
                break;
            }
        }
        cands.truncate(cut.max(1));
    }
    let total: f64 = cands.iter().map(|c| c.1 as f64).sum();
    let mut r = rng.next_f64() * total;
    for c in cands.iter() {
        r -= c.1 as f64;
        if r < 0.0 {
            return c.0;
        }
    }
    cands.last().map(|c| c.0).unwrap_or_else(|| argmax(logits))
}

/// Moves the `k` largest to the front, sorted descending (ties by lower id).
fn keep_top_sorted_prefix(cands: &mut [(u32, f32)], k: usize) {
    let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if k < cands.len() {
        cands.select_nth_unstable_by(k, cmp);
    }
    cands[..k].sort_unstable_by(cmp);
}

fn raw_logprobs(
    raw: &[f32],
    token: u32,
    top_n: usize,
    cands: &mut Vec<(u32, f32)>,
) -> TokenLogprobs {
    let lse = log_sum_exp(raw);
    let logprob = raw
        .get(token as usize)
        .map(|&l| l - lse)
        .unwrap_or(f32::NEG_INFINITY);
    let mut top = Vec::new();
    if top_n > 0 {
        cands.clear();
        cands.extend(raw.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let k = top_n.min(cands.len());
        keep_top_sorted_prefix(cands, k);
        top.extend(cands[..k].iter().map(|&(i, l)| (i, l - lse)));
    }
    TokenLogprobs { logprob, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(params: &SamplingParams, seed: u64) -> SeqSamplingState {
        SeqSamplingState::new(seed, 0, &[1, 2, 3], params)
    }

    fn draw(raw: &[f32], params: &SamplingParams, st: &mut SeqSamplingState) -> u32 {
        sample_row(raw, params, st, &[0], &mut SampleScratch::default()).token
    }

    #[test]
    fn greedy_takes_argmax_and_reports_raw_logprobs() {
        let p = SamplingParams {
            top_logprobs: 2,
            ..SamplingParams::greedy(4)
        };
        let raw = [0.0, 3.0, 1.0, 2.0];
        let s = sample_row(
            &raw,
            &p,
            &mut state(&p, 0),
            &[],
            &mut SampleScratch::default(),
        );
        assert_eq!(s.token, 1);
        let lp = s.logprobs.unwrap();
        let lse = log_sum_exp(&raw);
        assert!((lp.logprob - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn logit_bias_and_min_tokens() {
        let p = SamplingParams {
            logit_bias: [(2u32, 50.0f32)].into_iter().collect(),
            ..SamplingParams::greedy(4)
        };
        assert_eq!(draw(&[0.0, 3.0, 1.0], &p, &mut state(&p, 0)), 2);
        let p = SamplingParams {
            min_tokens: 1,
            ..SamplingParams::greedy(4)
        };
        let mut st = state(&p, 0);
        // eos (id 0 here) is best but held back for the first token only.
        assert_eq!(draw(&[5.0, 1.0, 0.0], &p, &mut st), 1);
        assert_eq!(draw(&[5.0, 1.0, 0.0], &p, &mut st), 0);
    }

    #[test]
    fn penalties() {
        let p = SamplingParams {
            frequency_penalty: 2.0,
            ..SamplingParams::greedy(8)
        };
        let mut st = state(&p, 0);
        assert_eq!(draw(&[0.0, 3.0, 2.5], &p, &mut st), 1);
        // token 1 now penalised by 2: 1.0 < 2.5
        assert_eq!(draw(&[0.0, 3.0, 2.5], &p, &mut st), 2);
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy(8)
        };
        // prompt holds 1, 2, 3: 3.0/2 = 1.5 < 2.0 (token 0 not in prompt)
        let mut st = SeqSamplingState::new(0, 0, &[1, 2, 3], &p);
        assert_eq!(draw(&[2.0, 3.0, 0.0, 0.0], &p, &mut st), 0);
    }

    #[test]
    fn top_k_top_p_min_p_restrict_the_support() {
        let raw: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.01).collect();
        for (p, allowed) in [
            (
                SamplingParams {
                    temperature: 1.0,
                    top_k: 3,
                    ..Default::default()
                },
                3u32,
            ),
            (
                SamplingParams {
                    temperature: 1.0,
                    top_p: 0.05,
                    ..Default::default()
                },
                60,
            ),
            (
                SamplingParams {
                    temperature: 1.0,
                    min_p: 0.9,
                    ..Default::default()
                },
                11,
            ),
        ] {
            let mut st = state(&p, 7);
            for _ in 0..300 {
                let t = draw(&raw, &p, &mut st);
                assert!(t < allowed, "{p:?} drew {t}");
            }
        }
    }

    #[test]
    fn seeded_streams_repeat_and_differ_by_seed_and_index() {
        let raw: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let run = |seed, index| {
            let mut st = SeqSamplingState::new(seed, index, &[], &p);
            (0..40).map(|_| draw(&raw, &p, &mut st)).collect::<Vec<_>>()
        };
        assert_eq!(run(42, 0), run(42, 0));
        assert_ne!(run(42, 0), run(43, 0));
        assert_ne!(run(42, 0), run(42, 1));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = [0.5, 0.25, 0.25]
        let raw = [2f32.ln(), 0.0, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let mut st = state(&p, 1);
        let n = 20_000;
        let zeros = (0..n).filter(|_| draw(&raw, &p, &mut st) == 0).count();
        let frac = zeros as f64 / n as f64;
        assert!((frac - 0.5).abs() < 0.02, "{frac}");
    }
}

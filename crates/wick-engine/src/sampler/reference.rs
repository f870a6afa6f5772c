//! The sampler wick had before the sampling op (host-only, row by row, xoshiro draws),
//! kept as a second implementation for tests: where both are exact (greedy tokens under
//! every edit, logprobs), the op must agree with it.

use super::SeqSamplingState;
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
    rng: &mut SeqRng,
    stop_ids: &[u32],
    scratch: &mut SampleScratch,
) -> Sampled {
    let vocab = raw.len();
    let logits = &mut scratch.logits;
    logits.clear();
    logits.extend_from_slice(raw);
    if let Some(constraint) = state.constraint() {
        apply_constraint(&constraint, logits);
    }
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
        sample_filtered(logits, params, rng, &mut scratch.candidates)
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

/// The constraint's bias, then its bitset, on one row.
fn apply_constraint(c: &super::SamplingConstraint, logits: &mut [f32]) {
    for &(t, b) in &c.bias {
        if let Some(l) = logits.get_mut(t as usize) {
            *l += b;
        }
    }
    if let Some(allowed) = &c.allowed {
        for (t, l) in logits.iter_mut().enumerate() {
            if !allowed.contains(t as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// log-sum-exp of a row, stable.
pub fn log_sum_exp(v: &[f32]) -> f32 {
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

//! The CPU implementation of [`crate::sample`], the reference of the CUDA kernel. Rows run
//! in parallel (rayon); each row works in a thread-local scratch and never sorts the whole
//! vocabulary: the thresholds of top-k and top-p are found among the candidates within a
//! few units of the largest logit, widened until they hold enough tokens or mass.
//!
//! Cost per row without biases or a bitset: one pass for the maximum, one of `exp` for the
//! total mass (a vectorizable polynomial, [`exp_fast`]), one compare pass to collect
//! candidates, and a scan of the kept set; with logprobs, the raw row's log-sum-exp and a
//! top-N pass.

use crate::philox::sampling_uniform;
use crate::sampling::{RowEdits, RowParams, SampledToken, SamplingBatch};
use rayon::prelude::*;
use std::cell::RefCell;

/// Scratch of one thread, reused across rows and steps.
#[derive(Default)]
struct Scratch {
    /// The row after biases, bitset and penalties.
    work: Vec<f32>,
    /// `(token, y, exp(y - max))` of the candidates, in id order.
    cands: Vec<(u32, f32, f32)>,
    /// Indices into `cands`, by y descending then id.
    order: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Samples every row of `logits` (`batch.len()` rows of `batch.vocab`).
pub(crate) fn sample_rows(logits: &[f32], batch: &SamplingBatch) -> Vec<SampledToken> {
    let vocab = batch.vocab;
    (0..batch.len())
        .into_par_iter()
        .map(|r| {
            let (params, edits) = batch.row(r);
            let raw = &logits[r * vocab..][..vocab];
            SCRATCH.with(|s| sample_row(raw, params, edits, &mut s.borrow_mut()))
        })
        .collect()
}

fn sample_row(raw: &[f32], p: &RowParams, edits: RowEdits<'_>, s: &mut Scratch) -> SampledToken {
    let edited = !edits.bias.is_empty() || !edits.penalties.is_empty() || edits.allowed.is_some();
    let x: &[f32] = if edited {
        s.work.clear();
        s.work.extend_from_slice(raw);
        apply_edits(&mut s.work, p, edits);
        &s.work
    } else {
        raw
    };
    let token = if p.temperature == 0.0 {
        argmax(x)
    } else {
        draw(x, p, &mut s.cands, &mut s.order)
    };
    let (logprob, top) = if p.logprob || p.top_logprobs > 0 {
        let lse = log_sum_exp(raw);
        let lp = raw[token as usize] - lse;
        let top = top_n(raw, p.top_logprobs as usize);
        (
            Some(lp),
            top.into_iter().map(|(t, l)| (t, l - lse)).collect(),
        )
    } else {
        (None, Vec::new())
    };
    SampledToken {
        token,
        logprob,
        top,
    }
}

/// Steps 1-3 of the op (module docs of `sampling`).
fn apply_edits(x: &mut [f32], p: &RowParams, edits: RowEdits<'_>) {
    for &(t, b) in edits.bias {
        x[t as usize] += b;
    }
    if let Some(words) = edits.allowed {
        for (t, l) in x.iter_mut().enumerate() {
            if words[t / 32] & (1 << (t % 32)) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    let rp = p.repetition_penalty;
    for &(t, count) in edits.penalties {
        let l = &mut x[t as usize];
        *l = if *l > 0.0 { *l / rp } else { *l * rp };
        if count > 0 {
            *l -= p.frequency_penalty * count as f32 + p.presence_penalty;
        }
    }
}

/// The first largest element's index (0 if none is above -inf).
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

/// `e^x` to within a few ulp for x in [-87, 88], exactly 0 below -87: Cody-Waite range
/// reduction and a degree-6 polynomial, branch-free so loops over it vectorize. The CUDA
/// kernel uses `__expf`; the two differ by rounding only.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        poly * scale
    }
}

/// `sum(exp_fast(x * inv_t - m))` over `x`, in eight independent lanes.
fn mass(x: &[f32], inv_t: f32, m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&v| exp_fast(v * inv_t - m))
        .sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += exp_fast(v * inv_t - m);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Step 4 with temperature above 0.
fn draw(x: &[f32], p: &RowParams, cands: &mut Vec<(u32, f32, f32)>, order: &mut Vec<u32>) -> u32 {
    let inv_t = 1.0 / p.temperature;
    // Multiplying by a positive number keeps the order, so the max of y is max(x) * inv_t.
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * inv_t;
    if !m.is_finite() {
        return argmax(x);
    }
    let z = mass(x, inv_t, m);
    let theta_min = if p.min_p > 0.0 {
        m + p.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let k = p.top_k as usize;
    let need_k = k > 0 && k < x.len();
    let need_p = p.top_p < 1.0;
    let u = sampling_uniform(p.seed, p.index, p.position);
    if !(need_k || need_p) {
        // Kept: y >= theta_min; scan in id order.
        let total = if theta_min == f32::NEG_INFINITY {
            z
        } else {
            (x.iter().map(|&v| v * inv_t))
                .filter(|&y| y >= theta_min)
                .map(|y| exp_fast(y - m))
                .sum()
        };
        let target = u * total;
        let mut cum = 0.0;
        let mut last = None;
        for (t, &v) in x.iter().enumerate() {
            let y = v * inv_t;
            if y >= theta_min && y > f32::NEG_INFINITY {
                cum += exp_fast(y - m);
                if cum > target {
                    return t as u32;
                }
                last = Some(t as u32);
            }
        }
        return last.unwrap_or_else(|| argmax(x));
    }
    // Candidates within `delta` of the max (and above min-p's floor), widened until they
    // hold k tokens and top_p of the mass, or everything that could be kept.
    let mut delta = 8.0f32;
    loop {
        let floor = if delta > 64.0 {
            f32::NEG_INFINITY
        } else {
            m - delta
        };
        let cut = floor.max(theta_min);
        cands.clear();
        let mut held = 0.0f32;
        for (t, &v) in x.iter().enumerate() {
            let y = v * inv_t;
            if y >= cut && y > f32::NEG_INFINITY {
                let e = exp_fast(y - m);
                held += e;
                cands.push((t as u32, y, e));
            }
        }
        let enough = (!need_k || cands.len() >= k) && (!need_p || held >= p.top_p * z);
        if enough || cut == theta_min || floor == f32::NEG_INFINITY {
            break;
        }
        delta *= 4.0;
    }
    order.clear();
    order.extend(0..cands.len() as u32);
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&cands[a as usize], &cands[b as usize]);
        b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
    });
    let mut theta = theta_min;
    if need_k && k <= order.len() {
        theta = theta.max(cands[order[k - 1] as usize].1);
    }
    if need_p {
        let mut cum = 0.0f32;
        for &i in order.iter() {
            cum += cands[i as usize].2;
            if cum >= p.top_p * z {
                theta = theta.max(cands[i as usize].1);
                break;
            }
        }
    }
    let kept = || cands.iter().filter(|c| c.1 >= theta);
    let total: f32 = kept().map(|c| c.2).sum();
    let target = u * total;
    let mut cum = 0.0f32;
    let mut last = None;
    for c in kept() {
        cum += c.2;
        if cum > target {
            return c.0;
        }
        last = Some(c.0);
    }
    last.unwrap_or_else(|| argmax(x))
}

/// log-sum-exp of a row, stable (the old sampler's arithmetic, so logprobs are unchanged).
fn log_sum_exp(v: &[f32]) -> f32 {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f32 = v.iter().map(|&x| (x - max).exp()).sum();
    max + sum.ln()
}

/// The `n` largest `(id, value)` of `v`, largest first, ties by lower id: one pass keeping
/// a sorted list of at most `n`.
fn top_n(v: &[f32], n: usize) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &x) in v.iter().enumerate() {
        if top.len() == n && (x <= top[n - 1].1 || x.is_nan()) {
            continue;
        }
        // After every element at least as large (earlier ids win ties).
        let at = top.partition_point(|e| e.1 >= x || x.is_nan());
        top.insert(at, (i as u32, x));
        top.truncate(n);
    }
    top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_a_few_ulp_of_exp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp_fast(x), x.exp());
            assert!((a - b).abs() <= b * 4e-7, "exp({x}): {a} vs {b}");
            x += 0.0137;
        }
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(0.0), 1.0);
    }

    #[test]
    fn top_n_orders_by_value_then_id() {
        let v = [1.0, 3.0, 3.0, -1.0, 2.0, 3.0];
        assert_eq!(top_n(&v, 4), vec![(1, 3.0), (2, 3.0), (5, 3.0), (4, 2.0)]);
        assert_eq!(top_n(&v, 1), vec![(1, 3.0)]);
        assert!(top_n(&v, 0).is_empty());
        assert_eq!(top_n(&v[..2], 5), vec![(1, 3.0), (0, 1.0)]);
    }
}

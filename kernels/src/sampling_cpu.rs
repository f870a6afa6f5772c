//! The CPU implementation of [`crate::sample`], the reference of the CUDA kernel. Rows run
//! in parallel (rayon); each row works in a thread-local scratch and never sorts the whole
//! vocabulary: the thresholds of top-k and top-p are found with a histogram of count and
//! mass by distance from the largest logit, and only the one bucket each threshold falls in
//! is sorted.
//!
//! Cost per row without biases or a bitset: one pass for the maximum, one of `exp` (a
//! vectorizable polynomial, [`exp_fast`]) kept for the later passes, with top-k or top-p
//! one histogram pass and one gather of a bucket, then the kept set's total and the scan;
//! with logprobs, the raw row's log-sum-exp and a top-N pass.

use crate::philox::sampling_uniform;
use crate::sampling::{RowEdits, RowParams, SampledToken, SamplingBatch};
use rayon::prelude::*;
use std::cell::RefCell;

/// Scratch of one thread, reused across rows and steps.
#[derive(Default)]
struct Scratch {
    /// The row after biases, bitset and penalties.
    work: Vec<f32>,
    /// `exp(y - max)` of every token.
    e: Vec<f32>,
    buckets: Buckets,
}

/// The threshold search's histogram and the tokens of one bucket.
#[derive(Default)]
struct Buckets {
    /// Each token's bucket.
    index: Vec<u16>,
    count: Vec<u32>,
    mass: Vec<f32>,
    /// `(token, y, exp(y - max))`.
    cands: Vec<(u32, f32, f32)>,
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
            SCRATCH.with(|s| sample_row_best(raw, params, edits, &mut s.borrow_mut()))
        })
        .collect()
}

/// [`sample_row`] compiled for AVX2 where the CPU has it (its passes are written for the
/// compiler to vectorize), for plain x86-64 / other CPUs elsewhere. The results are the
/// same bits: Rust never contracts a multiply and an add into an FMA.
fn sample_row_best(
    raw: &[f32],
    p: &RowParams,
    edits: RowEdits<'_>,
    s: &mut Scratch,
) -> SampledToken {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { sample_row_avx2(raw, p, edits, s) };
    }
    sample_row(raw, p, edits, s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sample_row_avx2(
    raw: &[f32],
    p: &RowParams,
    edits: RowEdits<'_>,
    s: &mut Scratch,
) -> SampledToken {
    sample_row(raw, p, edits, s)
}

#[inline(always)]
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
        draw(x, p, &mut s.e, &mut s.buckets)
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
#[inline(always)]
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
#[inline(always)]
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
                                     // max/min, not clamp: NaN becomes -87, so every value below is finite.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(-87.0).min(88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let poly = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // SAFETY: n is an integer in [-126, 127] (xc is finite and within [-87, 88]).
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        poly * scale
    }
}

/// Fills `e[t] = exp_fast(x[t] * inv_t - m)` and returns its sum, in eight independent
/// lanes.
#[inline(always)]
fn fill_mass(x: &[f32], inv_t: f32, m: f32, e: &mut Vec<f32>) -> f32 {
    e.resize(x.len(), 0.0);
    for (o, &v) in e.iter_mut().zip(x) {
        *o = exp_fast(v * inv_t - m);
    }
    let mut acc = [0f32; 8];
    let chunks = e.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Buckets of the threshold search: `y` in `(m - RANGE, m]` spread over `BUCKETS` by its
/// distance from the max (the last bucket also takes everything further down).
const BUCKETS: usize = 2048;
const RANGE: f32 = 40.0;

/// The bucket of `y` (the max is `m`); `BUCKETS` (none) for `y` below `floor`, -inf or NaN.
#[inline(always)]
fn bucket(y: f32, m: f32, floor: f32) -> u16 {
    let d = (m - y) * (BUCKETS as f32 / RANGE);
    // Kept values have y in [floor, m] and finite (m is), so d is in [0, inf).
    let d = if y >= floor && y > f32::NEG_INFINITY {
        d.min((BUCKETS - 1) as f32)
    } else {
        BUCKETS as f32
    };
    // SAFETY: d is in [0, BUCKETS]: not NaN (NaN y takes the else branch), not negative.
    unsafe { d.to_int_unchecked::<i32>() as u16 }
}

/// A row's scale: `y = x * inv_t`, its max `m`, the mass `z = sum(exp(y - m))`, and the
/// min-p `floor` under which no token is kept.
#[derive(Clone, Copy)]
struct Scale {
    inv_t: f32,
    m: f32,
    z: f32,
    floor: f32,
}

/// Which filter a threshold search serves.
#[derive(Clone, Copy)]
enum Want {
    /// The k-th largest y.
    Count(usize),
    /// The y at which the mass of the largest values first reaches this much.
    Mass(f32),
}

/// The thresholds of top-k and top-p in O(vocab): a histogram of count and mass by
/// bucket finds the bucket each threshold lies in (every y of a lower bucket is larger),
/// and only that bucket's tokens are sorted. Tokens below `floor` (min-p) never count.
#[inline(always)]
fn thresholds(x: &[f32], e: &[f32], scale: &Scale, wants: &[Want], s: &mut Buckets) -> f32 {
    let Scale { inv_t, m, z, floor } = *scale;
    // Bucket indices in a pass the compiler vectorizes, then the scatter.
    // With top-p alone, a token whose mass is under half of (1 - top_p) of the total over
    // the vocabulary cannot reach the threshold: the tokens above that bound hold at least
    // top_p of the mass. They stay out of the histogram (most of a vocabulary, usually).
    let min_e = match wants {
        [Want::Mass(w)] => 0.5 * (z - w).max(0.0) / x.len() as f32,
        _ => 0.0,
    };
    s.index.resize(x.len(), 0);
    for ((i, &v), &ev) in s.index.iter_mut().zip(x).zip(e) {
        let b = bucket(v * inv_t, m, floor);
        *i = if ev >= min_e { b } else { BUCKETS as u16 };
    }
    // Four interleaved histograms, merged after, so that runs of one bucket do not chain
    // every add through memory.
    const WAYS: usize = 4;
    let width = BUCKETS + 1;
    s.count.clear();
    s.count.resize(WAYS * width, 0);
    s.mass.clear();
    s.mass.resize(WAYS * width, 0.0);
    let (index, e4) = (s.index.chunks_exact(WAYS), e.chunks_exact(WAYS));
    for (&b, &ev) in index.remainder().iter().zip(e4.remainder()) {
        s.count[b as usize] += 1;
        s.mass[b as usize] += ev;
    }
    for (bs, es) in index.zip(e4) {
        for w in 0..WAYS {
            let at = w * width + bs[w] as usize;
            s.count[at] += 1;
            s.mass[at] += es[w];
        }
    }
    for w in 1..WAYS {
        for b in 0..width {
            s.count[b] += s.count[w * width + b];
            s.mass[b] += s.mass[w * width + b];
        }
    }
    let mut theta = f32::NEG_INFINITY;
    for &want in wants {
        // The bucket where the running count or mass reaches the target, and the running
        // value before it.
        let (mut count, mut mass) = (0usize, 0f32);
        let mut found = None;
        for b in 0..BUCKETS {
            let reached = match want {
                Want::Count(k) => count + s.count[b] as usize >= k,
                Want::Mass(w) => mass + s.mass[b] >= w,
            };
            if reached {
                found = Some(b);
                break;
            }
            count += s.count[b] as usize;
            mass += s.mass[b];
        }
        let Some(b) = found else { continue };
        s.cands.clear();
        for (t, (&i, &ev)) in s.index.iter().zip(e).enumerate() {
            if i as usize == b {
                s.cands.push((t as u32, x[t] * inv_t, ev));
            }
        }
        s.cands
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for c in &s.cands {
            count += 1;
            mass += c.2;
            let reached = match want {
                Want::Count(k) => count >= k,
                Want::Mass(w) => mass >= w,
            };
            if reached {
                theta = theta.max(c.1);
                break;
            }
        }
    }
    theta
}

/// Step 4 with temperature above 0.
#[inline(always)]
fn draw(x: &[f32], p: &RowParams, e: &mut Vec<f32>, buckets: &mut Buckets) -> u32 {
    let inv_t = 1.0 / p.temperature;
    // Multiplying by a positive number keeps the order, so the max of y is max(x) * inv_t.
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * inv_t;
    if !m.is_finite() {
        return argmax(x);
    }
    let z = fill_mass(x, inv_t, m, e);
    let theta_min = if p.min_p > 0.0 {
        m + p.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let k = p.top_k as usize;
    // At most two thresholds to find, in a fixed array: no allocation per row.
    let mut wants = [Want::Count(0); 2];
    let mut num_wants = 0;
    if k > 0 && k < x.len() {
        wants[num_wants] = Want::Count(k);
        num_wants += 1;
    }
    if p.top_p < 1.0 {
        wants[num_wants] = Want::Mass(p.top_p * z);
        num_wants += 1;
    }
    let wants = &wants[..num_wants];
    let mut theta = theta_min;
    if !wants.is_empty() {
        let scale = Scale {
            inv_t,
            m,
            z,
            floor: theta_min,
        };
        theta = theta.max(thresholds(x, e, &scale, wants, buckets));
    }
    // The kept set's total, then the first token in id order past u times it.
    let e = &*e;
    let kept = |v: f32| {
        let y = v * inv_t;
        y >= theta && y > f32::NEG_INFINITY
    };
    let mut lanes = [0f32; 8];
    let (xs, es) = (x.chunks_exact(8), e.chunks_exact(8));
    let tail: f32 = (xs.remainder().iter().zip(es.remainder()))
        .map(|(&v, &ev)| if kept(v) { ev } else { 0.0 })
        .sum();
    for (xc, ec) in xs.zip(es) {
        for i in 0..8 {
            lanes[i] += if kept(xc[i]) { ec[i] } else { 0.0 };
        }
    }
    let total = lanes.iter().sum::<f32>() + tail;
    let target = sampling_uniform(p.seed, p.index, p.position) * total;
    let mut cum = 0.0f32;
    let mut last = None;
    for (t, (&v, &ev)) in x.iter().zip(e).enumerate() {
        if kept(v) {
            cum += ev;
            if cum > target {
                return t as u32;
            }
            last = Some(t as u32);
        }
    }
    last.unwrap_or_else(|| argmax(x))
}

/// log-sum-exp of a row, stable (the old sampler's arithmetic, so logprobs are unchanged).
#[inline(always)]
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
#[inline(always)]
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
        assert!(exp_fast(f32::NAN).is_finite());
    }

    /// The histogram search finds exactly the thresholds a full sort finds: rows with ties,
    /// a spread wider than the histogram's range, -inf entries, and a min-p floor.
    #[test]
    fn thresholds_equal_a_full_sort() {
        let mut seed = 99u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        for case in 0..60 {
            let vocab = 50 + case * 37;
            let spread = [2.0, 30.0, 120.0][case % 3];
            let x: Vec<f32> = (0..vocab)
                .map(|i| match i % 17 {
                    0 => f32::NEG_INFINITY,
                    _ => ((next() * spread) * 2.0).round() / 2.0, // ties
                })
                .collect();
            let inv_t = [1.0, 0.7, 2.5][case % 3];
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) * inv_t;
            let mut e = Vec::new();
            let z = fill_mass(&x, inv_t, m, &mut e);
            let floor = if case % 4 == 0 {
                m - 3.0
            } else {
                f32::NEG_INFINITY
            };
            let mut order: Vec<usize> = (0..vocab).filter(|&t| x[t] * inv_t >= floor).collect();
            order.retain(|&t| x[t] > f32::NEG_INFINITY);
            order.sort_by(|&a, &b| (x[b] * inv_t).total_cmp(&(x[a] * inv_t)).then(a.cmp(&b)));
            let k = 1 + case * 7 % vocab;
            let top_p = 0.05 + (case as f32 * 0.13) % 0.9;
            let want_k = order.get(k - 1).map(|&t| x[t] * inv_t);
            let mut cum = 0.0;
            let want_p = order.iter().find_map(|&t| {
                cum += e[t];
                (cum >= top_p * z).then_some(x[t] * inv_t)
            });
            let mut b = Buckets::default();
            let scale = Scale { inv_t, m, z, floor };
            let got_k = thresholds(&x, &e, &scale, &[Want::Count(k)], &mut b);
            assert_eq!(
                got_k,
                want_k.unwrap_or(f32::NEG_INFINITY),
                "case {case} k {k}"
            );
            let got_p = thresholds(&x, &e, &scale, &[Want::Mass(top_p * z)], &mut b);
            assert_eq!(
                got_p,
                want_p.unwrap_or(f32::NEG_INFINITY),
                "case {case} p {top_p}"
            );
        }
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

//! `sample` against a naive reference written here (f64, a full sort per row): greedy
//! tokens and logprobs equal, and for every parameter the distribution of many seeded
//! draws at fixed logits passes a chi-square test against the reference's probabilities,
//! with nothing drawn outside its support. Draws repeat exactly for a seed and do not
//! depend on the rest of the batch.

use crate::support::{device_tests, expect_err, rng};
use candle_core::{Device, Result, Tensor};
use rand::Rng;
use wick_kernels::{sample, RowEdits, RowParams, SamplingBatch};

/// One row's parameters and edits, owned.
#[derive(Debug, Clone)]
struct Row {
    params: RowParams,
    bias: Vec<(u32, f32)>,
    penalties: Vec<(u32, u32)>,
    allowed: Option<Vec<u32>>,
}

impl Row {
    fn new(params: RowParams) -> Self {
        Self {
            params,
            bias: Vec::new(),
            penalties: Vec::new(),
            allowed: None,
        }
    }

    fn edits(&self) -> RowEdits<'_> {
        RowEdits {
            bias: &self.bias,
            penalties: &self.penalties,
            allowed: self.allowed.as_deref(),
        }
    }

    /// The reference: the row after edits, then the probability of each token (f64).
    fn probabilities(&self, raw: &[f32]) -> Vec<f64> {
        let p = &self.params;
        let mut x: Vec<f64> = raw.iter().map(|&v| v as f64).collect();
        for &(t, b) in &self.bias {
            x[t as usize] += b as f64;
        }
        if let Some(words) = &self.allowed {
            for (t, l) in x.iter_mut().enumerate() {
                if words[t / 32] & (1 << (t % 32)) == 0 {
                    *l = f64::NEG_INFINITY;
                }
            }
        }
        let rp = p.repetition_penalty as f64;
        for &(t, c) in &self.penalties {
            let l = &mut x[t as usize];
            *l = if *l > 0.0 { *l / rp } else { *l * rp };
            if c > 0 {
                *l -= p.frequency_penalty as f64 * c as f64 + p.presence_penalty as f64;
            }
        }
        let mut probs = vec![0.0; x.len()];
        if p.temperature == 0.0 {
            let best = (0..x.len()).fold(0, |b, i| if x[i] > x[b] { i } else { b });
            probs[best] = 1.0;
            return probs;
        }
        let y: Vec<f64> = x.iter().map(|&v| v / p.temperature as f64).collect();
        let m = y.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = y.iter().map(|&v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        let mut order: Vec<usize> = (0..y.len()).collect();
        order.sort_by(|&a, &b| y[b].total_cmp(&y[a]).then(a.cmp(&b)));
        let mut theta = if p.min_p > 0.0 {
            m + (p.min_p as f64).ln()
        } else {
            f64::NEG_INFINITY
        };
        if p.top_k > 0 && (p.top_k as usize) < y.len() {
            theta = theta.max(y[order[p.top_k as usize - 1]]);
        }
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for &i in &order {
                cum += e[i];
                if cum >= p.top_p as f64 * z {
                    theta = theta.max(y[i]);
                    break;
                }
            }
        }
        for (t, pr) in probs.iter_mut().enumerate() {
            if y[t] >= theta {
                *pr = e[t];
            }
        }
        let kept: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|pr| *pr /= kept);
        probs
    }
}

fn batch(vocab: usize, rows: &[Row]) -> Result<SamplingBatch> {
    let mut b = SamplingBatch::new(vocab);
    for r in rows {
        b.push(r.params, r.edits())?;
    }
    Ok(b)
}

fn sampled(dev: &Device, logits: &[f32], vocab: usize, rows: &[Row]) -> Result<Vec<u32>> {
    let t = Tensor::from_slice(logits, (rows.len(), vocab), dev)?;
    Ok(sample(&t, &batch(vocab, rows)?)?
        .into_iter()
        .map(|s| s.token)
        .collect())
}

fn sampling(temperature: f32) -> RowParams {
    RowParams {
        temperature,
        seed: 1234,
        ..RowParams::greedy()
    }
}

/// A row that exercises the edits: biases (one banned token), penalties, a bitset.
fn edited(params: RowParams, vocab: usize) -> Row {
    let mut allowed = vec![0u32; vocab.div_ceil(32)];
    for t in (0..vocab).filter(|t| t % 5 != 3) {
        allowed[t / 32] |= 1 << (t % 32);
    }
    Row {
        params: RowParams {
            repetition_penalty: 1.3,
            presence_penalty: 0.4,
            frequency_penalty: 0.2,
            ..params
        },
        bias: vec![(1, 2.5), (2, f32::NEG_INFINITY), (1, -0.5), (7, 1.0)],
        penalties: vec![(0, 2), (4, 0), (6, 1), (9, 0)],
        allowed: Some(allowed),
    }
}

/// Greedy tokens and raw logprobs equal the reference's, with and without edits.
fn greedy_and_logprobs_match_the_reference(dev: &Device) -> Result<()> {
    let mut g = rng(11);
    let vocab = 1000;
    let rows: Vec<Row> = (0..12)
        .map(|i| {
            let p = RowParams {
                logprob: true,
                top_logprobs: (i % 4) * 5,
                ..RowParams::greedy()
            };
            if i % 2 == 0 {
                Row::new(p)
            } else {
                edited(p, vocab)
            }
        })
        .collect();
    let logits: Vec<f32> = (0..rows.len() * vocab)
        .map(|_| g.random_range(-8.0f32..8.0))
        .collect();
    let t = Tensor::from_slice(&logits, (rows.len(), vocab), dev)?;
    let out = sample(&t, &batch(vocab, &rows)?)?;
    for (r, (row, got)) in rows.iter().zip(&out).enumerate() {
        let raw = &logits[r * vocab..][..vocab];
        let probs = row.probabilities(raw);
        let want = probs.iter().position(|&p| p == 1.0).unwrap() as u32;
        assert_eq!(got.token, want, "row {r}");
        let max = raw
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, |a, b| a.max(b as f64));
        let lse = max
            + raw
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        let lp = got.logprob.unwrap() as f64;
        assert!(
            (lp - (raw[want as usize] as f64 - lse)).abs() < 1e-4,
            "row {r}"
        );
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]).then(a.cmp(&b)));
        assert_eq!(got.top.len(), row.params.top_logprobs as usize);
        for (j, &(id, l)) in got.top.iter().enumerate() {
            assert_eq!(id as usize, order[j], "row {r} alternative {j}");
            assert!((l as f64 - (raw[id as usize] as f64 - lse)).abs() < 1e-4);
        }
    }
    Ok(())
}

/// Chi-square of `draws` rows sampled from `row` at fixed logits (positions 0..draws)
/// against the reference; fails on a draw outside the support.
fn chi_square(dev: &Device, row: &Row, raw: &[f32], draws: usize) -> Result<()> {
    let vocab = raw.len();
    let probs = row.probabilities(raw);
    let rows: Vec<Row> = (0..draws as u64)
        .map(|pos| {
            let mut r = row.clone();
            r.params.position = pos;
            r
        })
        .collect();
    let logits: Vec<f32> = (0..draws).flat_map(|_| raw.iter().copied()).collect();
    let mut counts = vec![0usize; vocab];
    for t in sampled(dev, &logits, vocab, &rows)? {
        assert!(
            probs[t as usize] > 0.0,
            "{:?} drew {t}, outside the support",
            row.params
        );
        counts[t as usize] += 1;
    }
    let support: Vec<usize> = (0..vocab).filter(|&t| probs[t] > 0.0).collect();
    let stat: f64 = (support.iter())
        .map(|&t| {
            let want = probs[t] * draws as f64;
            (counts[t] as f64 - want).powi(2) / want
        })
        .sum();
    let df = (support.len() - 1).max(1) as f64;
    // Wilson-Hilferty: the chi-square quantile at 1 - 1e-4 (z = 3.719).
    let h = 2.0 / (9.0 * df);
    let critical = df * (1.0 - h + 3.719 * h.sqrt()).powi(3);
    assert!(
        stat < critical,
        "{:?}: chi-square {stat:.1} over {critical:.1} (df {df})",
        row.params
    );
    Ok(())
}

/// Every parameter's effect on the distribution, at fixed logits, against the reference.
fn draws_follow_the_reference_distribution(dev: &Device) -> Result<()> {
    let vocab = 40;
    let mut g = rng(5);
    let raw: Vec<f32> = (0..vocab).map(|_| g.random_range(-3.0f32..3.0)).collect();
    let cases = [
        RowParams::greedy(),
        sampling(1.0),
        sampling(0.5),
        sampling(2.0),
        RowParams {
            top_k: 5,
            ..sampling(1.0)
        },
        RowParams {
            top_p: 0.6,
            ..sampling(1.0)
        },
        RowParams {
            min_p: 0.2,
            ..sampling(1.0)
        },
        RowParams {
            top_k: 12,
            top_p: 0.8,
            min_p: 0.05,
            ..sampling(0.7)
        },
    ];
    for params in cases {
        chi_square(dev, &Row::new(params), &raw, 20_000)?;
        chi_square(dev, &edited(params, vocab), &raw, 20_000)?;
    }
    Ok(())
}

/// A seeded row draws the same token alone, in a batch of 16, and again; other seeds,
/// indices or positions draw differently.
fn draws_repeat_and_ignore_the_batch(dev: &Device) -> Result<()> {
    let vocab = 500;
    let mut g = rng(9);
    let rows: Vec<Row> = (0..16u64)
        .map(|i| {
            let p = RowParams {
                seed: 77 + i % 3,
                index: (i % 2) as u32,
                position: 10 + i,
                top_p: 0.95,
                ..sampling(1.0)
            };
            if i % 4 == 1 {
                edited(p, vocab)
            } else {
                Row::new(p)
            }
        })
        .collect();
    let logits: Vec<f32> = (0..rows.len() * vocab)
        .map(|_| g.random_range(-1.0f32..1.0))
        .collect();
    let together = sampled(dev, &logits, vocab, &rows)?;
    assert_eq!(together, sampled(dev, &logits, vocab, &rows)?);
    for (r, row) in rows.iter().enumerate() {
        let alone = sampled(
            dev,
            &logits[r * vocab..][..vocab],
            vocab,
            std::slice::from_ref(row),
        )?;
        assert_eq!(alone, [together[r]], "row {r}");
    }
    // Over 50 positions, each key draws its own stream.
    let stream = |seed: u64, index: u32| -> Result<Vec<u32>> {
        let rows: Vec<Row> = (0..50)
            .map(|pos| {
                Row::new(RowParams {
                    seed,
                    index,
                    position: pos,
                    ..sampling(1.0)
                })
            })
            .collect();
        let logits: Vec<f32> = (0..50)
            .flat_map(|_| logits[..vocab].iter().copied())
            .collect();
        sampled(dev, &logits, vocab, &rows)
    };
    let base = stream(1, 0)?;
    assert_eq!(base, stream(1, 0)?);
    assert_ne!(base, stream(2, 0)?);
    assert_ne!(base, stream(1, 1)?);
    Ok(())
}

/// A row whose bitset allows nothing yields token 0; an allowed set of one token yields
/// it at any temperature.
fn masks_decide_alone(dev: &Device) -> Result<()> {
    let vocab = 70;
    let logits = vec![0.5f32; vocab];
    let none = Row {
        allowed: Some(vec![0; 3]),
        ..Row::new(sampling(1.0))
    };
    let mut only = vec![0u32; 3];
    only[2] |= 1 << 3; // token 67
    let one = Row {
        allowed: Some(only),
        ..Row::new(RowParams {
            top_k: 3,
            top_p: 0.5,
            ..sampling(1.5)
        })
    };
    let logits2: Vec<f32> = logits.iter().chain(&logits).copied().collect();
    assert_eq!(sampled(dev, &logits2, vocab, &[none, one])?, [0, 67]);
    Ok(())
}

/// Shapes, dtypes, parameters and bitsets that do not fit are errors.
fn bad_input_is_an_error(dev: &Device) -> Result<()> {
    let t = Tensor::zeros((2, 10), candle_core::DType::F32, dev)?;
    let one = batch(10, &[Row::new(RowParams::greedy())])?;
    expect_err(sample(&t, &one), "the batch has 1 rows");
    expect_err(
        sample(&t.to_dtype(candle_core::DType::F16)?, &one),
        "must be f32",
    );
    let mut b = SamplingBatch::new(10);
    expect_err(
        b.push(
            RowParams {
                top_p: 0.0,
                ..sampling(1.0)
            },
            RowEdits::default(),
        ),
        "invalid sampling parameters",
    );
    let words = [0u32; 2];
    expect_err(
        b.push(
            sampling(1.0),
            RowEdits {
                allowed: Some(&words),
                ..Default::default()
            },
        ),
        "bitset",
    );
    assert!(b.is_empty());
    Ok(())
}

device_tests!(
    greedy_and_logprobs_match_the_reference,
    draws_follow_the_reference_distribution,
    draws_repeat_and_ignore_the_batch,
    masks_decide_alone,
    bad_input_is_an_error,
);

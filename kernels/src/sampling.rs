//! The sampling op ([`sample`]): a step's logits rows become token ids (and the logprobs
//! asked for) where the logits are, so that only those cross to the host. Every OpenAI
//! sampling parameter is applied here, described per row by a [`SamplingBatch`] built on
//! the host once per step. The CPU implementation (`sampling_cpu`) is the reference the
//! CUDA kernel (kernels/sampling.cu, `cuda::sampling`) is tested against.
//!
//! Per row, in this order (the semantics both devices implement):
//! 1. additive biases, in the order given (a grammar's bias, `logit_bias`, and -inf for
//!    the ids that `min_tokens` holds back);
//! 2. the allowed-token bitset, if any (every other logit becomes -inf);
//! 3. penalties over the listed tokens: the repetition penalty (divide a positive logit,
//!    multiply a negative one) on every listed token (prompt and output), then
//!    `frequency * count + presence` subtracted from tokens with an output count.
//! 4. temperature 0: the first largest logit (greedy). Otherwise `y = logit / T` and the
//!    kept set is `{t : y_t >= θ}`, `θ` the largest of: the k-th largest `y` (top-k), the
//!    `y` at which the mass of the largest values first reaches `top_p` (top-p), and
//!    `max y + ln(min_p)` (min-p). Ties at `θ` are all kept. A uniform `u` from Philox
//!    (key: the seed; counter: position and completion index, see [`crate::philox`])
//!    picks the first token, in id order, at which the kept set's cumulative mass exceeds
//!    `u` times its total.
//! 5. Logprobs are those of the raw row (before 1-4), as vLLM reports them by default: the
//!    chosen token's, and the `top_logprobs` largest (ties by lower id).
//!
//! A row whose every logit is -inf (a grammar that allows nothing) yields token 0.
//! Token ids outside the vocabulary in biases or penalties are ignored, as OpenAI's
//! `logit_bias` is for ids the model does not have.

use crate::cpu_util::contiguous_slice;
use candle_core::{bail, DType, Result, Storage, Tensor};

/// The sampling parameters of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowParams {
    /// 0: greedy; otherwise positive and finite.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0: off.
    pub top_k: u32,
    /// Nucleus mass in (0, 1]; 1: off.
    pub top_p: f32,
    /// Keep tokens at least `min_p` times as likely as the most likely one, in [0, 1];
    /// 0: off.
    pub min_p: f32,
    /// Positive; 1: off.
    pub repetition_penalty: f32,
    /// Subtracted once from every token with an output count.
    pub presence_penalty: f32,
    /// Subtracted per occurrence from every token with an output count.
    pub frequency_penalty: f32,
    /// The request's seed (Philox key).
    pub seed: u64,
    /// The completion's index among the request's `n` (Philox counter).
    pub index: u32,
    /// The position of the token being sampled in its sequence (Philox counter).
    pub position: u64,
    /// Report the chosen token's logprob.
    pub logprob: bool,
    /// Report this many most likely alternatives (at most [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: u32,
}

impl RowParams {
    /// Greedy, no penalties, no logprobs.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
            index: 0,
            position: 0,
            logprob: false,
            top_logprobs: 0,
        }
    }

    fn check(&self) -> Result<()> {
        let ok = self.temperature >= 0.0
            && self.temperature.is_finite()
            && self.top_p > 0.0
            && self.top_p <= 1.0
            && (0.0..=1.0).contains(&self.min_p)
            && self.repetition_penalty > 0.0
            && self.repetition_penalty.is_finite()
            && self.presence_penalty.is_finite()
            && self.frequency_penalty.is_finite()
            && self.top_logprobs as usize <= MAX_TOP_LOGPROBS;
        if !ok {
            bail!("sample: invalid sampling parameters {self:?}");
        }
        Ok(())
    }
}

/// Most alternatives a row may ask for (the CUDA kernel keeps them in shared memory).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One step's rows to sample, in the order of the logits rows: each row's parameters,
/// biases, penalty counts and allowed-token bitset, as flat arrays (row `r`'s entries are
/// `start[r]..start[r + 1]`), ready to upload in one copy each.
#[derive(Debug, Clone)]
pub struct SamplingBatch {
    pub(crate) vocab: usize,
    pub(crate) rows: Vec<RowParams>,
    pub(crate) bias_start: Vec<u32>,
    pub(crate) bias: Vec<(u32, f32)>,
    pub(crate) penalty_start: Vec<u32>,
    /// `(token, output count)`; count 0: the token is only in the prompt.
    pub(crate) penalty: Vec<(u32, u32)>,
    /// Words per bitset: `vocab.div_ceil(32)`.
    pub(crate) mask_words: usize,
    /// Row `r`'s bitset is `masks[mask_of[r] * mask_words..][..mask_words]`; `u32::MAX`:
    /// none.
    pub(crate) mask_of: Vec<u32>,
    pub(crate) masks: Vec<u32>,
}

/// What a row adds to its parameters: see [`SamplingBatch::push`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RowEdits<'a> {
    /// Added to the logits, in order; -inf bans a token.
    pub bias: &'a [(u32, f32)],
    /// `(token, output count)` of every token the penalties apply to: each distinct token of
    /// the output with its count, and (for the repetition penalty) each distinct prompt
    /// token not in the output with count 0. Each token at most once.
    pub penalties: &'a [(u32, u32)],
    /// Only these tokens may be drawn: bit `t % 32` of word `t / 32`, `vocab.div_ceil(32)`
    /// words.
    pub allowed: Option<&'a [u32]>,
}

impl SamplingBatch {
    /// An empty batch over a vocabulary of `vocab` ids.
    pub fn new(vocab: usize) -> Self {
        Self {
            vocab,
            rows: Vec::new(),
            bias_start: vec![0],
            bias: Vec::new(),
            penalty_start: vec![0],
            penalty: Vec::new(),
            mask_words: vocab.div_ceil(32),
            mask_of: Vec::new(),
            masks: Vec::new(),
        }
    }

    /// The vocabulary size the rows are over.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Bytes [`sample`] reads back from the device for this batch: every row's token and,
    /// when any row asks for logprobs, every row's logprob and [`MAX_TOP_LOGPROBS`]
    /// alternatives (id and value). Counted on the CPU too, as what would cross from a GPU.
    pub fn bytes_to_host(&self) -> u64 {
        let rows = self.rows.len() as u64;
        let logprobs = self.rows.iter().any(|p| p.logprob || p.top_logprobs > 0);
        rows * 4
            + if logprobs {
                rows * (4 + 8 * MAX_TOP_LOGPROBS as u64)
            } else {
                0
            }
    }

    /// Appends a row. Entries for ids outside the vocabulary are dropped. Errors (adding
    /// nothing) on invalid parameters, a bitset of the wrong size, or a batch past u32
    /// sizes.
    pub fn push(&mut self, params: RowParams, edits: RowEdits<'_>) -> Result<()> {
        params.check()?;
        if let Some(words) = edits.allowed {
            if words.len() != self.mask_words {
                bail!(
                    "sample: an allowed-token bitset of {} words for a vocabulary of {} ({} words)",
                    words.len(),
                    self.vocab,
                    self.mask_words
                );
            }
        }
        let in_vocab = |t: u32| (t as usize) < self.vocab;
        let bias_len = self.bias.len() + edits.bias.len();
        let penalty_len = self.penalty.len() + edits.penalties.len();
        let masks_len = self.masks.len() + self.mask_words;
        if [bias_len, penalty_len, masks_len, self.rows.len() + 1]
            .iter()
            .any(|&n| u32::try_from(n).is_err())
        {
            bail!("sample: the batch is too large");
        }
        self.bias
            .extend(edits.bias.iter().filter(|e| in_vocab(e.0)).copied());
        self.bias_start.push(self.bias.len() as u32);
        self.penalty
            .extend(edits.penalties.iter().filter(|e| in_vocab(e.0)).copied());
        self.penalty_start.push(self.penalty.len() as u32);
        match edits.allowed {
            Some(words) => {
                self.mask_of
                    .push((self.masks.len() / self.mask_words.max(1)) as u32);
                self.masks.extend_from_slice(words);
            }
            None => self.mask_of.push(u32::MAX),
        }
        self.rows.push(params);
        Ok(())
    }

    /// Row `r`'s parameters and edits.
    pub(crate) fn row(&self, r: usize) -> (&RowParams, RowEdits<'_>) {
        let span = |start: &[u32]| start[r] as usize..start[r + 1] as usize;
        let allowed = (self.mask_of[r] != u32::MAX).then(|| {
            let at = self.mask_of[r] as usize * self.mask_words;
            &self.masks[at..at + self.mask_words]
        });
        let edits = RowEdits {
            bias: &self.bias[span(&self.bias_start)],
            penalties: &self.penalty[span(&self.penalty_start)],
            allowed,
        };
        (&self.rows[r], edits)
    }
}

/// One row's result.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The token drawn.
    pub token: u32,
    /// Its logprob under the raw logits, when asked for.
    pub logprob: Option<f32>,
    /// The `top_logprobs` most likely tokens under the raw logits, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Samples one token per row of `logits` (`[rows, vocab]` f32, contiguous) as `batch`
/// describes (one entry per row, same vocabulary). Runs where the logits are; only the
/// results are read back. Errors on shapes, dtypes or a batch that do not match.
pub fn sample(logits: &Tensor, batch: &SamplingBatch) -> Result<Vec<SampledToken>> {
    let (rows, vocab) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        bail!("sample: logits must be f32, got {:?}", logits.dtype());
    }
    if rows != batch.len() || vocab != batch.vocab {
        bail!(
            "sample: logits are [{rows}, {vocab}] but the batch has {} rows over a vocabulary of {}",
            batch.len(),
            batch.vocab
        );
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    if vocab == 0 || u32::try_from(vocab).is_err() {
        bail!("sample: a vocabulary of {vocab} ids is not supported");
    }
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => {
            let data = contiguous_slice::<f32>(s, layout, "logits")?;
            Ok(crate::sampling_cpu::sample_rows(data, batch))
        }
        #[cfg(feature = "cuda")]
        Storage::Cuda(s) => crate::cuda::sampling::sample(s, layout, batch),
        #[allow(unreachable_patterns)]
        _ => bail!("sample: logits on an unsupported device"),
    }
}

//! The host side of sampling: per-sequence state (seed, penalty counts, the logits
//! processor) and [`push_row`], which describes a sequence's next draw as one row of a
//! [`SamplingBatch`]. The draw itself is wick-kernels' sampling op
//! ([`wick_kernels::sample`]), which runs where the logits are and applies every OpenAI
//! sampling parameter: logit_bias, min_tokens (eos and stop ids banned), repetition /
//! presence / frequency penalties, temperature (0 = greedy), top_k, top_p, min_p, with
//! Philox draws keyed by the request's seed, the completion's index and the token's
//! position, so a seeded request draws the same tokens whatever else is in the batch (and
//! again after a preemption). Logprobs (chosen and top-N alternatives) are those of the
//! model's raw distribution, as vLLM reports them by default.
//!
//! A sequence may carry a [`LogitsProcessor`] (the `processor` module): its
//! [`SamplingConstraint`] (allowed-token bitset, bias list) goes into the row beside
//! logit_bias, and it is told every token sampled.
//!
//! Penalty counts stay on the host and go into each step's batch as a sparse list (only
//! for sequences with a penalty on), uploaded with it.

mod processor;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

pub use processor::{LogitsProcessor, LogitsProcessorFactory, SamplingConstraint, TokenBitset};

use std::collections::HashMap;
use wick_core::{SamplingParams, TokenLogprobs};
use wick_kernels::{RowEdits, RowParams, SampledToken, SamplingBatch};

/// Per-sequence sampling state, kept by the engine for the sequence's lifetime
/// (including across preemptions): the key of its random draws, the penalty state, and
/// the sequence's logits processor, if any.
pub struct SeqSamplingState {
    /// The request's seed.
    pub seed: u64,
    /// The completion's index among the request's `n`.
    pub index: u32,
    /// Tokens in the prompt (the first sampled token's position).
    pub prompt_len: usize,
    /// How often each token occurs in the output so far (presence/frequency penalties).
    pub output_counts: HashMap<u32, u32>,
    /// Distinct tokens of the prompt, sorted (the repetition penalty looks at prompt
    /// and output); empty when that penalty is off.
    pub prompt_tokens: Vec<u32>,
    /// Tokens generated so far.
    pub num_generated: usize,
    /// The tokens generated so far, kept when a processor wants them.
    generated: Vec<u32>,
    processor: Option<Box<dyn LogitsProcessor>>,
    /// The processor's constraint for the next token, computed ahead (while the forward
    /// pass runs) by [`Self::prepare`].
    prepared: Option<SamplingConstraint>,
}

impl std::fmt::Debug for SeqSamplingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqSamplingState")
            .field("seed", &self.seed)
            .field("index", &self.index)
            .field("output_counts", &self.output_counts)
            .field("prompt_tokens", &self.prompt_tokens)
            .field("num_generated", &self.num_generated)
            .field("processor", &self.processor.is_some())
            .finish()
    }
}

impl SeqSamplingState {
    /// State for completion `index` of a request; `seed` makes it reproducible.
    pub fn new(seed: u64, index: usize, prompt: &[u32], params: &SamplingParams) -> Self {
        Self {
            seed,
            index: index as u32,
            prompt_len: prompt.len(),
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
            generated: Vec::new(),
            processor: None,
            prepared: None,
        }
    }

    /// The same state with `processor` constraining every step (`None`: none).
    pub fn with_processor(mut self, processor: Option<Box<dyn LogitsProcessor>>) -> Self {
        self.processor = processor;
        self
    }

    /// Whether a processor constrains this sequence.
    pub fn has_processor(&self) -> bool {
        self.processor.is_some()
    }

    /// Computes the processor's constraint for the next token now (the engine calls
    /// this off its thread while the forward pass runs); [`Self::constraint`] then
    /// returns it.
    pub fn prepare(&mut self) {
        if self.prepared.is_none() {
            self.prepared = self.compute_constraint();
        }
    }

    fn compute_constraint(&mut self) -> Option<SamplingConstraint> {
        let generated = &self.generated;
        (self.processor.as_mut()).map(|p| p.constraint(generated))
    }

    /// The processor's constraint for the next token (prepared, or computed now), if
    /// there is a processor.
    pub fn constraint(&mut self) -> Option<SamplingConstraint> {
        match self.prepared.take() {
            Some(c) => Some(c),
            None => self.compute_constraint(),
        }
    }

    /// Records a generated token (and tells the processor).
    pub fn push(&mut self, token: u32) {
        self.prepared = None;
        *self.output_counts.entry(token).or_insert(0) += 1;
        self.num_generated += 1;
        if let Some(p) = &mut self.processor {
            p.accept(token);
            self.generated.push(token);
        }
    }

    /// The tokens the processor forces after the last one (see
    /// [`LogitsProcessor::forced`]), recorded as generated; empty without a processor.
    pub fn take_forced(&mut self) -> Vec<u32> {
        let Some(p) = &mut self.processor else {
            return Vec::new();
        };
        let forced = p.forced();
        for &t in &forced {
            *self.output_counts.entry(t).or_insert(0) += 1;
            self.num_generated += 1;
            self.generated.push(t);
        }
        forced
    }

    /// Why the processor ends the sequence here, if it does.
    pub fn ended(&self) -> Option<String> {
        self.processor.as_ref().and_then(|p| p.ended())
    }
}

/// Buffers [`push_row`] reuses across rows and steps.
#[derive(Debug, Default)]
pub struct RowScratch {
    bias: Vec<(u32, f32)>,
    penalties: Vec<(u32, u32)>,
    allowed: Vec<u32>,
}

/// Appends the row of `state`'s next draw to `batch`: `params`, the processor's
/// constraint, `logit_bias`, `stop_ids` banned while `min_tokens` holds them back, and the
/// penalties' token counts. Errors (adding nothing) when the batch refuses the row.
pub fn push_row(
    batch: &mut SamplingBatch,
    params: &SamplingParams,
    state: &mut SeqSamplingState,
    stop_ids: &[u32],
    scratch: &mut RowScratch,
) -> candle_core::Result<()> {
    let constraint = state.constraint();
    let bias = &mut scratch.bias;
    bias.clear();
    if let Some(c) = &constraint {
        bias.extend_from_slice(&c.bias);
    }
    bias.extend(params.logit_bias.iter().map(|(&t, &b)| (t, b)));
    if state.num_generated < params.min_tokens {
        bias.extend(stop_ids.iter().map(|&t| (t, f32::NEG_INFINITY)));
    }
    let penalties = &mut scratch.penalties;
    penalties.clear();
    let penalised = params.repetition_penalty != 1.0
        || params.presence_penalty != 0.0
        || params.frequency_penalty != 0.0;
    if penalised {
        penalties.extend(state.output_counts.iter().map(|(&t, &c)| (t, c)));
        // Prompt tokens also in the output are listed once, with their output count.
        let prompt_only = (state.prompt_tokens.iter())
            .filter(|t| !state.output_counts.contains_key(t))
            .map(|&t| (t, 0));
        penalties.extend(prompt_only);
    }
    let row = RowParams {
        temperature: params.temperature,
        top_k: u32::try_from(params.top_k).unwrap_or(u32::MAX),
        top_p: params.top_p,
        min_p: params.min_p,
        repetition_penalty: params.repetition_penalty,
        presence_penalty: params.presence_penalty,
        frequency_penalty: params.frequency_penalty,
        seed: state.seed,
        index: state.index,
        position: (state.prompt_len + state.num_generated) as u64,
        logprob: params.logprobs || params.top_logprobs > 0,
        top_logprobs: params.top_logprobs.min(wick_kernels::MAX_TOP_LOGPROBS) as u32,
    };
    // A bitset over another vocabulary size (the tokenizer's, not the model's): ids past
    // it are not allowed.
    let allowed = (constraint.as_ref().and_then(|c| c.allowed.as_ref())).map(|a| {
        let words = a.words();
        let want = batch.vocab().div_ceil(32);
        scratch.allowed.clear();
        scratch.allowed.extend(words.iter().take(want));
        scratch.allowed.resize(want, 0);
        &scratch.allowed[..]
    });
    let edits = RowEdits {
        bias,
        penalties,
        allowed,
    };
    batch.push(row, edits)
}

/// The logprobs of a sampled row, when its request asked for them.
pub fn token_logprobs(sampled: &SampledToken) -> Option<TokenLogprobs> {
    sampled.logprob.map(|logprob| TokenLogprobs {
        logprob,
        top: sampled.top.clone(),
    })
}

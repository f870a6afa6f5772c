//! The runner: a step's scheduled sequences (plain data) become one flattened model input, one
//! forward pass over the paged cache, and the logits rows of the sequences to sample, which
//! the sampling op turns into tokens where they are. The three are separate calls so that
//! the engine can time each phase of a step: [`ModelRunner::prepare`],
//! [`ModelRunner::forward`], [`ModelRunner::sample`].

use crate::kv::SeqId;
use crate::scheduler::ScheduledSeq;
use candle_core::Tensor;
use wick_kernels::{SampledToken, SamplingBatch};
use wick_models::{InputBuffer, KvCache, Model, ModelInput, SequenceChunk};

/// Owns the model, its KV cache storage and the device memory steps' inputs are written to.
pub struct ModelRunner {
    model: Model,
    cache: KvCache,
    inputs: InputBuffer,
}

/// A step's logits where the model left them: `[rows, vocab]` f32, one row per
/// scheduled sequence with `sample` set, in batch order.
pub struct StepLogits {
    logits: Tensor,
    rows: Vec<SeqId>,
}

impl StepLogits {
    /// The sequence of each logits row.
    pub fn rows(&self) -> &[SeqId] {
        &self.rows
    }

    /// The vocabulary size (the rows' length).
    pub fn vocab(&self) -> usize {
        self.logits.dims().last().copied().unwrap_or(0)
    }
}

impl ModelRunner {
    /// A runner over `model` and its `cache`.
    pub fn new(model: Model, cache: KvCache) -> Self {
        Self {
            model,
            cache,
            inputs: InputBuffer::new(),
        }
    }

    /// Lays `seqs` out as one model input on the model's device, written by one copy into
    /// the runner's persistent input memory. Only sequences with `sample` set get a logits
    /// row; a prompt chunk mid-way never reaches `lm_head`.
    pub fn prepare(&self, seqs: &[&ScheduledSeq]) -> wick_models::Result<ModelInput> {
        let chunks: Vec<SequenceChunk<'_>> = seqs
            .iter()
            .map(|s| SequenceChunk {
                tokens: &s.token_ids,
                num_computed_tokens: s.num_computed_tokens,
                block_table: &s.block_table,
                lora_slot: s.lora_slot,
                sample: s.sample,
            })
            .collect();
        let (block_size, device) = (self.cache.block_size, self.model.device());
        ModelInput::build_in(&self.inputs, &chunks, block_size, device)
    }

    /// One forward pass over `input` (laid out from `seqs` by [`Self::prepare`]); waits
    /// for the device, so that the time of this call is the forward pass's.
    pub fn forward(
        &mut self,
        seqs: &[&ScheduledSeq],
        input: &ModelInput,
    ) -> wick_models::Result<StepLogits> {
        let logits = self.model.forward(input, &mut self.cache)?;
        self.model.device().synchronize()?;
        Ok(StepLogits {
            logits,
            rows: seqs.iter().filter(|s| s.sample).map(|s| s.seq).collect(),
        })
    }

    /// Draws one token per row of `step` as `batch` (one row each, in order) describes,
    /// where the logits are; only the tokens and requested logprobs reach the host.
    pub fn sample(
        step: &StepLogits,
        batch: &SamplingBatch,
    ) -> wick_models::Result<Vec<SampledToken>> {
        Ok(wick_kernels::sample(&step.logits, batch)?)
    }

    /// [`Self::prepare`] and [`Self::forward`] in one call.
    pub fn run(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<StepLogits> {
        let input = self.prepare(seqs)?;
        self.forward(seqs, &input)
    }

    /// Copies `adapter` into the model's LoRA `slot` (`None` empties it).
    pub fn load_lora(
        &mut self,
        slot: u32,
        adapter: Option<&wick_models::LoraAdapter>,
    ) -> wick_models::Result<()> {
        self.model.set_lora(slot as usize, adapter)
    }
}

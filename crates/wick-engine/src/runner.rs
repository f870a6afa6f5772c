//! The runner: a step's scheduled sequences (plain data) become one flattened model input, one
//! forward pass over the paged cache, and the logits rows of the sequences to sample.
//! The three are separate calls so that the engine can time each phase of a step:
//! [`ModelRunner::prepare`], [`ModelRunner::forward`], [`ModelRunner::logits_to_host`].

use crate::scheduler::ScheduledSeq;
use candle_core::Tensor;
use wick_models::{KvCache, Model, ModelInput, SequenceChunk};

/// Owns the model and its KV cache storage.
pub struct ModelRunner {
    model: Model,
    cache: KvCache,
}

/// A step's logits where the model left them: `[num_sampled, vocab]` f32, one row per
/// scheduled sequence with `sample` set, in batch order.
pub struct StepLogits {
    logits: Tensor,
    sampled: Vec<bool>,
}

/// Each scheduled sequence's logits row on the host (`None`: not sampled this step, or
/// its forward pass failed), and how many bytes were read back for them.
pub struct HostLogits {
    /// One entry per scheduled sequence, in batch order.
    pub rows: Vec<Option<Vec<f32>>>,
    /// Bytes read back from the model's device (counted on the CPU too: what would
    /// cross from a GPU).
    pub device_to_host_bytes: u64,
}

impl ModelRunner {
    /// A runner over `model` and its `cache`.
    pub fn new(model: Model, cache: KvCache) -> Self {
        Self { model, cache }
    }

    /// Lays `seqs` out as one model input on the model's device. Only sequences with
    /// `sample` set get a logits row; a prompt chunk mid-way never reaches `lm_head`.
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
        ModelInput::build(&chunks, self.cache.block_size, self.model.device())
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
            sampled: seqs.iter().map(|s| s.sample).collect(),
        })
    }

    /// Reads `step`'s logits back to the host, one row per sampled sequence.
    pub fn logits_to_host(step: StepLogits) -> wick_models::Result<HostLogits> {
        let bytes = step.logits.elem_count() as u64 * 4;
        let mut rows = step.logits.to_vec2::<f32>()?.into_iter();
        let rows = (step.sampled.iter())
            .map(|&sampled| if sampled { rows.next() } else { None })
            .collect();
        Ok(HostLogits {
            rows,
            device_to_host_bytes: bytes,
        })
    }

    /// [`Self::prepare`], [`Self::forward`] and [`Self::logits_to_host`] in one call.
    pub fn run(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<HostLogits> {
        let input = self.prepare(seqs)?;
        let logits = self.forward(seqs, &input)?;
        Self::logits_to_host(logits)
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

//! The runner: a [`SchedulerOutput`] (plain data) becomes one flattened model input, one
//! forward pass over the paged cache, and the logits rows of the sequences to sample.

use crate::scheduler::{ScheduledSeq, SchedulerOutput};
use candle_core::Tensor;
use wick_models::{KvCache, Model, ModelInput, SequenceChunk};

/// Owns the model and its KV cache storage.
pub struct ModelRunner {
    model: Model,
    cache: KvCache,
}

impl ModelRunner {
    /// A runner over `model` and its `cache`.
    pub fn new(model: Model, cache: KvCache) -> Self {
        Self { model, cache }
    }

    /// Runs `seqs` as one batch; returns f32 logits `[seqs.len(), vocab]` on the CPU,
    /// one row per sequence (rows of sequences not sampled this step are computed but
    /// ignored by the caller).
    pub fn run(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<Vec<Vec<f32>>> {
        let chunks: Vec<SequenceChunk<'_>> = seqs
            .iter()
            .map(|s| SequenceChunk {
                tokens: &s.token_ids,
                num_computed_tokens: s.num_computed_tokens,
                block_table: &s.block_table,
                lora_slot: s.lora_slot,
            })
            .collect();
        let input = ModelInput::build(&chunks, self.cache.block_size, self.model.device())?;
        let logits: Tensor = self.model.forward(&input, &mut self.cache)?;
        Ok(logits.to_vec2::<f32>()?)
    }

    /// Copies `adapter` into the model's LoRA `slot` (`None` empties it).
    pub fn load_lora(
        &mut self,
        slot: u32,
        adapter: Option<&wick_models::LoraAdapter>,
    ) -> wick_models::Result<()> {
        self.model.set_lora(slot as usize, adapter)
    }

    /// Runs a whole step.
    pub fn run_step(&mut self, output: &SchedulerOutput) -> wick_models::Result<Vec<Vec<f32>>> {
        let seqs: Vec<&ScheduledSeq> = output.scheduled.iter().collect();
        self.run(&seqs)
    }
}

//! Test support: locating the SmolLM2 GGUF and the golden fixtures, and a small batch
//! driver that runs many sequences together through the model (what the engine's runner
//! will do), so tests can check that batching, chunking and shared blocks change nothing.
#![allow(dead_code, unused_imports)]

pub mod tiny;

pub use wick_test_support::{
    assert_matches_golden, fixtures_dir, golden_cases, smollm2_gguf, Case,
};

use candle_core::{DType, Device};
use wick_models::{KvCache, LoadedModel, Model, ModelInput, SequenceChunk};
use wick_test_support::greedy::log_softmax;

pub use wick_test_support::load_smollm2;

/// One sequence in a [`run_batch`].
pub struct Seq {
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub computed: usize,
    pub block_table: Vec<u32>,
    pub out: Vec<(u32, f32)>,
    /// The model's LoRA slot it runs on (`None`: the base model).
    pub lora_slot: Option<u32>,
}

impl Seq {
    pub fn new(prompt: &[u32], max_tokens: usize, block_table: Vec<u32>) -> Self {
        Self {
            tokens: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_tokens,
            computed: 0,
            block_table,
            out: vec![],
            lora_slot: None,
        }
    }
    fn done(&self, eos: u32) -> bool {
        self.out.len() >= self.max_tokens || self.out.last().map(|t| t.0) == Some(eos)
    }
}

/// Runs every sequence to completion, all of them in each step, prefill in chunks of
/// `chunk` tokens. Sequences may start with `computed > 0` when their first blocks are
/// shared with (and already filled by) another sequence.
pub fn run_batch(model: &Model, cache: &mut KvCache, seqs: &mut [Seq], chunk: usize, eos: u32) {
    let build = |chunks: &[SequenceChunk], bs: usize| ModelInput::build(chunks, bs, model.device());
    run_batch_laid_out(model, cache, seqs, chunk, eos, build);
}

/// [`run_batch`] with each step's input laid out by `build(chunks, block_size)`; logits
/// rows past the sampled sequences' (a padded step's dummy rows) are ignored.
pub fn run_batch_laid_out(
    model: &Model,
    cache: &mut KvCache,
    seqs: &mut [Seq],
    chunk: usize,
    eos: u32,
    build: impl Fn(&[SequenceChunk], usize) -> wick_models::Result<ModelInput>,
) {
    loop {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| !seqs[i].done(eos)).collect();
        if active.is_empty() {
            return;
        }
        let ends: Vec<usize> = active
            .iter()
            .map(|&i| {
                seqs[i]
                    .computed
                    .saturating_add(chunk)
                    .min(seqs[i].tokens.len())
            })
            .collect();
        let chunks: Vec<SequenceChunk> = active
            .iter()
            .zip(&ends)
            .map(|(&i, &end)| SequenceChunk {
                tokens: &seqs[i].tokens[seqs[i].computed..end],
                num_computed_tokens: seqs[i].computed,
                block_table: &seqs[i].block_table,
                lora_slot: seqs[i].lora_slot,
                sample: end == seqs[i].tokens.len(),
            })
            .collect();
        let input = build(&chunks, cache.block_size).unwrap();
        let logits = model.forward(&input, cache).unwrap();
        let sampled = chunks.iter().filter(|c| c.sample).count();
        let logits = logits.narrow(0, 0, sampled).unwrap();
        let lp: Vec<Vec<f32>> = if sampled == 0 {
            vec![] // every chunk mid-prompt: no logits rows
        } else {
            log_softmax(&logits).unwrap().to_vec2().unwrap()
        };
        assert_eq!(lp.len(), chunks.iter().filter(|c| c.sample).count());
        let mut rows = lp.iter();
        for (&i, &end) in active.iter().zip(&ends) {
            let s = &mut seqs[i];
            s.computed = end;
            if end < s.tokens.len() {
                continue; // mid-prompt: no logits row
            }
            let row = rows.next().unwrap();
            let (id, v) = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (j, &v)| if v > b.1 { (j, v) } else { b },
                );
            s.out.push((id as u32, v));
            s.tokens.push(id as u32);
        }
    }
}

/// Hands out block ids in order.
pub struct BlockCounter(pub u32);

impl BlockCounter {
    pub fn take(&mut self, n: usize) -> Vec<u32> {
        let v = (self.0..self.0 + n as u32).collect();
        self.0 += n as u32;
        v
    }
}

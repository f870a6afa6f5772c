//! `Sequence`: one completion's known tokens (prompt, then output), its progress, and
//! the rules that end it ([`StopConfig`], applied by the scheduler's
//! `update_from_output`, the one place every stop rule is decided).
//!
//! Invariants, kept by the scheduler: `num_computed_tokens <= num_tokens()`; a sequence
//! that is not running holds no KV blocks and has `num_computed_tokens == 0`; output
//! tokens are only appended, and survive preemption (they are recomputed as a prefill
//! on resumption).

use wick_core::{FinishReason, SamplingParams};

use super::LoraId;
use crate::kv::SeqId;

/// Where a sequence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Queued, never run.
    Waiting,
    /// Holds KV blocks and is scheduled every step while the budget lasts.
    Running,
    /// Queued again after preemption (blocks freed); first in line, by arrival order.
    Preempted,
    /// Done; returned by [`super::Scheduler::finish`] and the like, no longer held.
    Finished(FinishReason),
}

/// The token-level rules that end a sequence before max_tokens: eos (unless
/// `ignore_eos`) and the request's stop token ids, neither before `min_tokens` tokens.
/// Stop strings are the frontend's (it ends a completion through the engine handle).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopConfig {
    /// Tokens that end the sequence: eos ids (unless `ignore_eos`) and `stop_token_ids`.
    stop_ids: Vec<u32>,
    /// Output tokens before which a stop id does not end the sequence.
    min_tokens: usize,
}

impl StopConfig {
    /// The rules of `params` for a model whose end-of-sequence ids are `eos_token_ids`.
    pub fn new(params: &SamplingParams, eos_token_ids: &[u32]) -> Self {
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend_from_slice(eos_token_ids);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self {
            stop_ids,
            min_tokens: params.min_tokens,
        }
    }

    /// Every token id that ends the sequence (sorted): the sampler holds these back while
    /// fewer than `min_tokens` were generated.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Output tokens before which no stop id ends the sequence.
    pub fn min_tokens(&self) -> usize {
        self.min_tokens
    }

    /// Whether `token`, the `num_output`-th output token, ends the sequence.
    pub fn is_stop(&self, token: u32, num_output: usize) -> bool {
        num_output >= self.min_tokens && self.stop_ids.binary_search(&token).is_ok()
    }
}

/// One sequence: each of a request's `n` completions is its own.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub(super) id: SeqId,
    /// Prompt tokens followed by output tokens.
    pub(super) token_ids: Vec<u32>,
    pub(super) num_prompt_tokens: usize,
    pub(super) num_computed_tokens: usize,
    pub(super) max_tokens: usize,
    pub(super) extra_key: Option<u64>,
    pub(super) lora: Option<LoraId>,
    pub(super) stop: StopConfig,
    pub(super) arrival: u64,
    pub(super) status: SeqStatus,
    pub(super) num_preemptions: u32,
}

impl Sequence {
    /// A new waiting sequence generating at most `max_tokens` after `prompt_token_ids`,
    /// with no stop tokens (see [`Sequence::with_stop`]).
    pub fn new(id: SeqId, prompt_token_ids: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            num_prompt_tokens: prompt_token_ids.len(),
            token_ids: prompt_token_ids,
            num_computed_tokens: 0,
            max_tokens,
            extra_key: None,
            lora: None,
            stop: StopConfig::default(),
            arrival: 0,
            status: SeqStatus::Waiting,
            num_preemptions: 0,
        }
    }

    /// Sets the key that keeps its prefix-cache blocks apart from others' with the same
    /// tokens (e.g. a LoRA adapter id; `None` for the base model).
    pub fn with_extra_key(mut self, extra_key: Option<u64>) -> Self {
        self.extra_key = extra_key;
        self
    }

    /// Runs it on LoRA adapter `lora` (`None`: the base model); the adapter also keys its
    /// prefix-cache blocks, so two adapters never share KV of the same prompt.
    pub fn with_lora(mut self, lora: Option<LoraId>) -> Self {
        self.lora = lora;
        self.extra_key = lora;
        self
    }

    /// Its LoRA adapter, if any.
    pub fn lora(&self) -> Option<LoraId> {
        self.lora
    }

    /// Sets the rules that end it early (eos, stop token ids, min_tokens).
    pub fn with_stop(mut self, stop: StopConfig) -> Self {
        self.stop = stop;
        self
    }

    /// The rules that end it early.
    pub fn stop(&self) -> &StopConfig {
        &self.stop
    }

    /// Its id.
    pub fn id(&self) -> SeqId {
        self.id
    }

    /// The prompt.
    pub fn prompt_token_ids(&self) -> &[u32] {
        &self.token_ids[..self.num_prompt_tokens]
    }

    /// The tokens generated so far.
    pub fn output_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    /// Prompt then output: every known token.
    pub fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    /// Known tokens (prompt + output).
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Tokens whose K/V is in the cache.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    /// Most tokens to generate.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Prefix-cache separation key (see [`Sequence::with_extra_key`]).
    pub fn extra_key(&self) -> Option<u64> {
        self.extra_key
    }

    /// Order of admission to the scheduler (smaller is earlier).
    pub fn arrival(&self) -> u64 {
        self.arrival
    }

    /// Its status.
    pub fn status(&self) -> SeqStatus {
        self.status
    }

    /// How often it was preempted.
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }

    /// Whether it is done.
    pub fn is_finished(&self) -> bool {
        matches!(self.status, SeqStatus::Finished(_))
    }
}

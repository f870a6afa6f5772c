//! `Sequence`: one completion's known tokens (prompt, then output) and its progress.
//!
//! Invariants, kept by the scheduler: `num_computed_tokens <= num_tokens()`; a sequence
//! that is not running holds no KV blocks and has `num_computed_tokens == 0`; output
//! tokens are only appended, and survive preemption (they are recomputed as a prefill
//! on resumption).

use wick_core::FinishReason;

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
    pub(super) arrival: u64,
    pub(super) status: SeqStatus,
    pub(super) num_preemptions: u32,
}

impl Sequence {
    /// A new waiting sequence generating at most `max_tokens` after `prompt_token_ids`.
    pub fn new(id: SeqId, prompt_token_ids: Vec<u32>, max_tokens: usize) -> Self {
        Self {
            id,
            num_prompt_tokens: prompt_token_ids.len(),
            token_ids: prompt_token_ids,
            num_computed_tokens: 0,
            max_tokens,
            extra_key: None,
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

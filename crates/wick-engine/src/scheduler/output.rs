//! The scheduler's configuration, and the plain data it hands out: what to compute in a
//! step ([`SchedulerOutput`], the only thing a runner sees), what a step produced
//! ([`SeqUpdate`]), and counters for metrics ([`SchedulerStats`]).

use wick_core::{ErrorKind, FinishReason, WickError};

use crate::kv::{BlockId, SeqId};

/// Limits of the scheduler and the KV cache it manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Token budget of one step (sum of every scheduled sequence's new tokens).
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// The model's context length: prompt + max_tokens may not exceed it.
    pub max_model_len: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Blocks in the KV cache.
    pub num_blocks: usize,
    /// Reuse full blocks across sequences by prefix hash.
    pub enable_prefix_caching: bool,
    /// Most tokens one sequence may take in a step (so a long prompt does not hold up
    /// everyone's decode); `None`: only the budget limits it.
    pub long_prefill_token_threshold: Option<usize>,
    /// LoRA adapter slots of the model (adapters resident at once); 0: LoRA disabled.
    pub max_loras: usize,
}

impl SchedulerConfig {
    /// A config for a cache of `num_blocks` blocks of `block_size` tokens and a model of
    /// `max_model_len` tokens, with a budget of 8192 tokens, 256 sequences, and prefix
    /// caching on.
    pub fn new(num_blocks: usize, block_size: usize, max_model_len: usize) -> Self {
        Self {
            max_num_batched_tokens: 8192,
            max_num_seqs: 256,
            max_model_len,
            block_size,
            num_blocks,
            enable_prefix_caching: true,
            long_prefill_token_threshold: None,
            max_loras: 0,
        }
    }

    /// Tokens the whole cache holds.
    pub fn cache_tokens(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_size)
    }

    /// Whether `prompt_tokens + max_tokens` fits the model's context and the whole cache
    /// (see [`check_context`]).
    pub fn check_context(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), WickError> {
        check_context(
            prompt_tokens,
            max_tokens,
            self.max_model_len,
            self.num_blocks,
            self.block_size,
        )
    }

    /// Checks that every limit is usable; the error names the field.
    pub fn validate(&self) -> Result<(), WickError> {
        let positive = [
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_num_seqs", self.max_num_seqs),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
            (
                "long_prefill_token_threshold",
                self.long_prefill_token_threshold.unwrap_or(1),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(WickError::invalid_param(name, "must be at least 1"));
        }
        if u32::try_from(self.num_blocks).is_err() {
            return Err(WickError::invalid_param(
                "num_blocks",
                format!("{} is more than {}", self.num_blocks, u32::MAX),
            ));
        }
        Ok(())
    }
}

/// The one rule deciding the context limit, used by the engine handle's submit, the
/// scheduler's admission and the HTTP routes (through `EngineInfo::check_context`): a
/// request of `prompt_tokens` that may generate `max_tokens` must fit both the model's
/// context (`max_model_len`) and the whole KV cache (`num_blocks * block_size`), or no
/// amount of waiting can serve it. The error is `TooLong`, with one message text.
pub fn check_context(
    prompt_tokens: usize,
    max_tokens: usize,
    max_model_len: usize,
    num_blocks: usize,
    block_size: usize,
) -> Result<(), WickError> {
    let total = prompt_tokens.saturating_add(max_tokens);
    let cache_tokens = num_blocks.saturating_mul(block_size);
    let limit = max_model_len.min(cache_tokens);
    if total <= limit {
        return Ok(());
    }
    let why = if cache_tokens < max_model_len {
        format!(" (the KV cache holds {num_blocks} blocks of {block_size} tokens)")
    } else {
        String::new()
    };
    Err(WickError::new(
        ErrorKind::TooLong,
        format!(
            "this model's maximum context length is {limit} tokens{why}; the prompt has \
             {prompt_tokens} tokens and max_tokens is {max_tokens} ({total} in all)"
        ),
    ))
}

/// One sequence's work in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The sequence.
    pub seq: SeqId,
    /// Tokens to compute this step, at positions `num_computed_tokens..` (a decode step
    /// has one: the last sampled token).
    pub token_ids: Vec<u32>,
    /// Tokens already in the cache before this step (= position of `token_ids[0]`).
    pub num_computed_tokens: usize,
    /// The sequence's whole block table; it covers every position up to and including
    /// this step's.
    pub block_table: Vec<BlockId>,
    /// Whether this step reaches the end of the known tokens, so the logits of the last
    /// position are to be sampled (false for a chunk of a prefill).
    pub sample: bool,
    /// The model's adapter slot its tokens use; `None`: the base model.
    pub lora_slot: Option<u32>,
}

impl ScheduledSeq {
    /// Tokens of context after this step (keys attended by its last position).
    pub fn seq_len(&self) -> usize {
        self.num_computed_tokens + self.token_ids.len()
    }

    /// Positions of `token_ids`.
    pub fn positions(&self) -> std::ops::Range<usize> {
        self.num_computed_tokens..self.seq_len()
    }
}

/// What to compute in one step: plain data, the only thing the runner sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchedulerOutput {
    /// Scheduled sequences: running ones first, then newly admitted, by arrival.
    pub scheduled: Vec<ScheduledSeq>,
    /// Sequences preempted in this step (blocks freed, back to waiting).
    pub preempted: Vec<SeqId>,
    /// Sum of `token_ids.len()` over `scheduled`.
    pub total_num_scheduled_tokens: usize,
    /// Adapters to copy into the model's slots before this step runs: `(slot, adapter)`.
    pub lora_loads: Vec<(u32, super::LoraId)>,
}

impl SchedulerOutput {
    /// Whether nothing is to be computed.
    pub fn is_empty(&self) -> bool {
        self.scheduled.is_empty()
    }

    /// The scheduled sequences whose logits are to be sampled, in order.
    pub fn to_sample(&self) -> impl Iterator<Item = &ScheduledSeq> {
        self.scheduled.iter().filter(|s| s.sample)
    }
}

/// A token appended to a sequence by [`super::Scheduler::update_from_output`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqUpdate {
    /// The sequence.
    pub seq: SeqId,
    /// The sampled token, now its last output token.
    pub token: u32,
    /// Set when this token ended the sequence (freed already): `Stop` for eos or a stop
    /// token id (from min_tokens on), `Length` for max_tokens or the context length.
    pub finish: Option<FinishReason>,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerStats {
    /// Sequences running.
    pub num_running: usize,
    /// Sequences waiting (new or preempted).
    pub num_waiting: usize,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Tokens asked of the prefix cache since start (on admission).
    pub prefix_cache_queries: u64,
    /// Tokens found in the prefix cache since start.
    pub prefix_cache_hits: u64,
    /// Fraction of KV blocks in use.
    pub kv_usage: f64,
    /// KV blocks free (some still hold reusable prefixes).
    pub num_free_blocks: usize,
}

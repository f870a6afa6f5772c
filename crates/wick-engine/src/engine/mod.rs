//! The engine: the loop on its own OS thread (never inside tokio) and the handle that
//! feeds it. One responsibility per file:
//!
//! - [`handle`]: [`EngineHandle`] (start, submit, health, stats) and [`RequestStream`];
//! - `engine_loop`: the loop, one step = `schedule` -> `run` -> `postprocess`;
//! - `request`: what the loop keeps per request (events channel, timing, metrics);
//! - `queue`: the waiting-queue permit, given back when dropped;
//! - [`health`]: liveness ([`EngineHealth`]) and step timing shared with the handle;
//! - [`lora`]: the adapters offered, by name ([`LoraRegistry`]).
//!
//! This file holds the plain data around them: configuration, fixed facts, counters.

mod engine_loop;
mod gpu_memory;
pub mod handle;
pub mod health;
pub mod lora;
mod queue;
mod request;
mod step_timing;
pub mod token_budget;

pub use handle::{EngineHandle, RequestStream};
pub use health::EngineHealth;
pub use lora::{LoraEntry, LoraRegistry};

use crate::sampler::LogitsProcessorFactory;
use std::sync::Arc;
use std::time::Duration;
use wick_core::{SamplingParams, WickError};

/// Default KV cache memory on the CPU, when none is given.
pub const DEFAULT_KV_CACHE_MEMORY: u64 = 1 << 30;

/// Default [`EngineConfig::gpu_memory_utilization`] (vLLM's).
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// Engine limits (each also a `wick serve` flag).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step; `None`: chosen at start (see [`token_budget`]: on the
    /// CPU from the measured step cost, on CUDA 2048).
    pub max_num_batched_tokens: Option<usize>,
    /// Most requests waiting to start; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache; `None`: on a GPU, what [`Self::gpu_memory_utilization`] leaves
    /// (see the `gpu_memory` module), on the CPU [`DEFAULT_KV_CACHE_MEMORY`].
    pub kv_cache_memory: Option<u64>,
    /// Fraction of a GPU's memory wick may use (weights, activations and KV cache), in
    /// (0, 1]; sizes the KV cache when `kv_cache_memory` is `None`. Unused on the CPU.
    pub gpu_memory_utilization: f64,
    /// Longest prompt + completion; `None`: the model's context length.
    pub max_model_len: Option<usize>,
    /// Reuse full KV blocks across requests by prefix hash.
    pub enable_prefix_caching: bool,
    /// Capture decode steps as CUDA graphs and replay them (see [`crate::runner`]).
    pub cuda_graphs: bool,
    /// LoRA adapters resident in the model at once (its adapter slots); 0: LoRA off.
    pub max_loras: usize,
    /// Highest adapter rank accepted.
    pub max_lora_rank: usize,
    /// How long the engine may have work without completing a step before
    /// [`EngineHandle::health`] reports it stalled.
    pub stall_timeout: Duration,
    /// Test-only fault injection (see [`Fault`]); `None` in any real deployment.
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: Some(token_budget::DEVICE_TOKEN_BUDGET),
            max_waiting: 1024,
            block_size: wick_models::DEFAULT_BLOCK_SIZE,
            kv_cache_memory: None,
            gpu_memory_utilization: DEFAULT_GPU_MEMORY_UTILIZATION,
            max_model_len: None,
            enable_prefix_caching: true,
            cuda_graphs: false,
            max_loras: 0,
            max_lora_rank: 64,
            stall_timeout: Duration::from_secs(60),
            fault: None,
        }
    }
}

/// Test-only fault injection, so that tests can drive the real loop into the failures
/// health reporting exists for. Always compiled in the engine; only the `wick` binary's
/// flag that sets it is behind a cargo feature. Steps count from 1.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The engine thread panics in model step `n`.
    PanicAtStep(u64),
    /// The engine thread blocks forever in model step `n`, as a hung kernel would.
    StallAtStep(u64),
}

/// A generation request as the engine takes it: token ids, sampling parameters, and an
/// optional logits processor per completion.
#[derive(Clone, Default)]
pub struct EngineRequest {
    /// Prompt tokens (already templated and tokenized).
    pub prompt_token_ids: Vec<u32>,
    /// Sampling parameters (validated again on submit).
    pub params: SamplingParams,
    /// Makes one [`crate::sampler::LogitsProcessor`] per completion (of `n`), which
    /// constrains every sampling step of it (structured output, tool calls); `None`:
    /// unconstrained.
    pub logits_processor: Option<Arc<dyn LogitsProcessorFactory>>,
    /// The LoRA adapter to run it on, by registered name; `None`: the base model.
    pub lora: Option<String>,
}

impl EngineRequest {
    /// A request for `prompt_token_ids` sampled with `params`, unconstrained.
    pub fn new(prompt_token_ids: Vec<u32>, params: SamplingParams) -> Self {
        Self {
            prompt_token_ids,
            params,
            logits_processor: None,
            lora: None,
        }
    }

    /// The same request on the LoRA adapter registered as `name`.
    pub fn with_lora(mut self, name: impl Into<String>) -> Self {
        self.lora = Some(name.into());
        self
    }

    /// The same request with `factory` making a logits processor per completion.
    pub fn with_logits_processor(mut self, factory: Arc<dyn LogitsProcessorFactory>) -> Self {
        self.logits_processor = Some(factory);
        self
    }
}

impl std::fmt::Debug for EngineRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineRequest")
            .field("prompt_token_ids", &self.prompt_token_ids)
            .field("params", &self.params)
            .field("logits_processor", &self.logits_processor.is_some())
            .field("lora", &self.lora)
            .finish()
    }
}

impl PartialEq for EngineRequest {
    /// Equal prompts and parameters, and the same processor factory (or none).
    fn eq(&self, other: &Self) -> bool {
        let same_processor = match (&self.logits_processor, &other.logits_processor) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.prompt_token_ids == other.prompt_token_ids
            && self.params == other.params
            && self.lora == other.lora
            && same_processor
    }
}

/// Fixed facts about a running engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineInfo {
    /// Longest prompt + completion accepted.
    pub max_model_len: usize,
    /// Vocabulary size; prompt ids must be below it.
    pub vocab_size: usize,
    /// KV blocks.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Tokens that end generation unless `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// Token budget of one step (as configured, or as chosen at start).
    pub max_num_batched_tokens: usize,
}

impl EngineInfo {
    /// THE check of the context limit, used by [`EngineHandle::submit`], the scheduler's
    /// admission and the HTTP routes: `prompt_tokens + max_tokens` must fit both
    /// `max_model_len` and the whole KV cache. Err: kind `TooLong`, message "this
    /// model's maximum context length is L tokens; the prompt has P tokens and
    /// max_tokens is M (T in all)" (with the cache's size when the cache is the limit).
    pub fn check_context(&self, prompt_tokens: usize, max_tokens: usize) -> Result<(), WickError> {
        crate::scheduler::check_context(
            prompt_tokens,
            max_tokens,
            self.max_model_len,
            self.num_blocks,
            self.block_size,
        )
    }

    /// The most tokens (prompt + completion) one request may have: the smaller of
    /// `max_model_len` and the whole KV cache.
    pub fn context_limit(&self) -> usize {
        self.max_model_len
            .min(self.num_blocks.saturating_mul(self.block_size))
    }

    /// How many requests of `tokens` tokens each (prompt + completion) the KV cache
    /// holds at once, with no prefix shared (vLLM logs the same figure at start).
    pub fn max_concurrency_at(&self, tokens: usize) -> f64 {
        let blocks = tokens.max(1).div_ceil(self.block_size.max(1));
        self.num_blocks as f64 / blocks as f64
    }
}

/// Upper bounds (seconds) of [`EngineStats::step_duration`]'s buckets.
pub const STEP_DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
];

/// Upper bounds (seconds) of the buckets of each phase's histogram
/// ([`EngineStats::step_phase_duration`]): finer than a whole step's, since scheduling
/// takes microseconds.
pub const STEP_PHASE_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The phases of an engine step, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPhase {
    /// The scheduler plans the step (admission, preemption, block allocation).
    Schedule,
    /// The batch is laid out as a model input and copied to the model's device.
    PrepareInputs,
    /// The forward pass, up to the logits of the sampled rows (waited for on a GPU).
    Forward,
    /// From the logits to token ids on the host: the sampling rows built, the sampling op
    /// (where the logits are) and its tokens read back.
    Sample,
    /// The scheduler appends the tokens and applies stop rules; tokens go to clients.
    Postprocess,
}

impl StepPhase {
    /// Every phase, in order.
    pub const ALL: [StepPhase; 5] = [
        StepPhase::Schedule,
        StepPhase::PrepareInputs,
        StepPhase::Forward,
        StepPhase::Sample,
        StepPhase::Postprocess,
    ];

    /// The phase's name in metrics (`phase` label) and logs.
    pub fn name(self) -> &'static str {
        match self {
            StepPhase::Schedule => "schedule",
            StepPhase::PrepareInputs => "prepare_inputs",
            StepPhase::Forward => "forward",
            StepPhase::Sample => "sample",
            StepPhase::Postprocess => "postprocess",
        }
    }
}

/// One histogram per [`StepPhase`], indexed by `phase as usize`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPhaseHistograms(pub [DurationHistogram; 5]);

impl StepPhaseHistograms {
    /// The histogram of `phase`.
    pub fn get(&self, phase: StepPhase) -> &DurationHistogram {
        &self.0[phase as usize]
    }

    /// Records `secs` for `phase`.
    pub fn observe(&mut self, phase: StepPhase, secs: f64) {
        self.0[phase as usize].observe(secs);
    }
}

impl Default for StepPhaseHistograms {
    /// Empty, over [`STEP_PHASE_BUCKETS`].
    fn default() -> Self {
        Self(std::array::from_fn(|_| {
            DurationHistogram::new(STEP_PHASE_BUCKETS.to_vec())
        }))
    }
}

/// A histogram of durations as plain data (the metrics layer renders it).
#[derive(Debug, Clone, PartialEq)]
pub struct DurationHistogram {
    /// Upper bounds of the buckets, seconds, ascending.
    pub bounds: Vec<f64>,
    /// Observations per bucket, NOT cumulative (`counts[i]`: in `(bounds[i-1],
    /// bounds[i]]`); len = `bounds.len()`; values above the last bound are only in
    /// `count`.
    pub counts: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl DurationHistogram {
    /// An empty histogram with buckets ending at `bounds` (ascending).
    pub fn new(bounds: Vec<f64>) -> Self {
        Self {
            counts: vec![0; bounds.len()],
            bounds,
            sum: 0.0,
            count: 0,
        }
    }

    /// Records one duration of `secs`.
    pub fn observe(&mut self, secs: f64) {
        let i = self.bounds.partition_point(|&b| b < secs);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

impl Default for DurationHistogram {
    /// Empty, over [`STEP_DURATION_BUCKETS`].
    fn default() -> Self {
        Self::new(STEP_DURATION_BUCKETS.to_vec())
    }
}

/// A snapshot of the engine's counters, refreshed every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Sequences running.
    pub num_running: usize,
    /// Sequences waiting (new or preempted).
    pub num_waiting: usize,
    /// Fraction of KV blocks in use.
    pub kv_usage: f64,
    /// Blocks in use (0 when idle: nothing leaked).
    pub num_used_blocks: usize,
    /// Preemptions since start.
    pub num_preemptions: u64,
    /// Prompt tokens looked up in the prefix cache since start.
    pub prefix_cache_queries: u64,
    /// Prompt tokens found there.
    pub prefix_cache_hits: u64,
    /// Steps run.
    pub steps: u64,
    /// Tokens computed (prefill and decode) since start.
    pub computed_tokens: u64,
    /// Wall time of each model step (schedule, forward, sampling, events).
    pub step_duration: DurationHistogram,
    /// Wall time of each phase of each step.
    pub step_phase_duration: StepPhaseHistograms,
    /// Bytes the steps read back from the model's device (sampled token ids and the
    /// logprobs asked for; counted on the CPU too, as what would cross from a GPU).
    pub device_to_host_bytes: u64,
    /// Steps that ran through a captured decode graph (its capture or a replay).
    pub graph_steps: u64,
    /// Decode shapes captured as graphs (see [`crate::runner`]).
    pub graph_shapes: usize,
    /// When the last step finished, seconds since the Unix epoch; `None` before any.
    pub last_step_unix_s: Option<f64>,
    /// Names of the LoRA adapters of running sequences.
    pub running_loras: Vec<String>,
    /// Names of the LoRA adapters of waiting sequences.
    pub waiting_loras: Vec<String>,
    /// LoRA adapter slots (`--max-loras`; 0: LoRA off).
    pub max_loras: usize,
    /// Most distinct LoRA adapters in one step since start.
    pub max_loras_in_step: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_not_cumulative() {
        let mut h = DurationHistogram::new(vec![0.1, 1.0]);
        for s in [0.05, 0.1, 0.5, 2.0] {
            h.observe(s);
        }
        assert_eq!(h.counts, vec![2, 1]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 2.65).abs() < 1e-9);
        assert_eq!(DurationHistogram::default().bounds.len(), 16);
    }

    #[test]
    fn check_context_covers_model_length_and_cache() {
        let info = EngineInfo {
            max_model_len: 100,
            vocab_size: 10,
            num_blocks: 4,
            block_size: 16,
            eos_token_ids: vec![],
            max_num_batched_tokens: 2048,
        };
        assert_eq!(info.context_limit(), 64);
        assert!(info.check_context(60, 4).is_ok());
        let e = info.check_context(60, 5).unwrap_err();
        assert_eq!(e.kind, wick_core::ErrorKind::TooLong);
        assert!(e.message.contains("65 in all"), "{e}");
        // 4 blocks of 16: two requests of 32 tokens; of 33 tokens (3 blocks each), 4/3.
        assert_eq!(info.max_concurrency_at(32), 2.0);
        assert!((info.max_concurrency_at(33) - 4.0 / 3.0).abs() < 1e-12);
    }
}

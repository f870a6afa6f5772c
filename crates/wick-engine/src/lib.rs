//! wick-engine: many requests share the model at every step.
//!
//! - [`kv`]: block pool and per-sequence block tables (prefix caching, LRU eviction);
//! - [`scheduler`]: fills each step's token budget (decode first, chunked prefill,
//!   preemption by recompute); its output is plain data;
//! - [`runner`]: that plain data -> one model forward -> logits -> the sampling op
//!   (wick-kernels), which draws the tokens where the logits are;
//! - [`sampler`]: per-sequence sampling state (seed, penalty counts, logits processor)
//!   and each sequence's row of the sampling op;
//! - [`engine`]: the loop on its own thread and the [`EngineHandle`] to submit requests.

pub mod engine;
pub mod kv;
pub mod runner;
pub mod sampler;
pub mod scheduler;

pub use engine::{
    DurationHistogram, EngineConfig, EngineHandle, EngineHealth, EngineInfo, EngineRequest,
    EngineStats, Fault, RequestStream, StepPhase, StepPhaseHistograms,
};
pub use sampler::{LogitsProcessor, LogitsProcessorFactory, SamplingConstraint, TokenBitset};

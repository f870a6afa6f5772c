//! The default token budget of a step (`--max-num-batched-tokens` left unset). A step
//! that holds a prefill chunk stalls every running stream for its whole duration, so on
//! the CPU, where a token of prefill costs a good part of a whole decode step, a large
//! budget (vLLM's 2048) turns one long prompt into seconds of silence for everyone. There
//! the budget is chosen at start-up from the measured cost: a step of a full budget costs
//! at most [`STALL_IN_DECODE_STEPS`] decode steps of one sequence. On CUDA, where a chunk
//! of thousands of tokens costs a few decode steps anyway, it is
//! [`DEVICE_TOKEN_BUDGET`], as in vLLM.

use crate::kv::SeqId;
use crate::runner::ModelRunner;
use crate::scheduler::ScheduledSeq;
use std::time::{Duration, Instant};
use wick_core::RequestId;

/// The budget on an accelerator.
pub const DEVICE_TOKEN_BUDGET: usize = 2048;

/// On the CPU, a step with a full budget of prompt tokens costs at most this many decode
/// steps of one sequence.
pub const STALL_IN_DECODE_STEPS: f64 = 4.0;

/// The CPU budget's bounds: at least two blocks of prompt per step, at most the device's.
const MIN_CPU_BUDGET: usize = 32;

/// Tokens of the prefill chunk timed.
pub const PROBE_TOKENS: usize = 64;

/// What one step costs: a fixed part and a part per token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCost {
    /// One decode step of one sequence.
    pub decode: Duration,
    /// Each further token of a prefill chunk.
    pub per_token: Duration,
}

impl StepCost {
    /// The largest budget (a multiple of `block_size`, within bounds) whose full step
    /// costs at most [`STALL_IN_DECODE_STEPS`] decode steps.
    pub fn cpu_budget(&self, block_size: usize) -> usize {
        let spare = self.decode.as_secs_f64() * (STALL_IN_DECODE_STEPS - 1.0);
        let per_token = self.per_token.as_secs_f64().max(1e-9);
        let tokens = (spare / per_token) as usize;
        let tokens = tokens / block_size.max(1) * block_size.max(1);
        tokens.clamp(MIN_CPU_BUDGET, DEVICE_TOKEN_BUDGET)
    }
}

/// Times a decode step and a prefill chunk of [`PROBE_TOKENS`] on the runner's model,
/// writing into the cache's first blocks (nothing is cached yet: every block is free and
/// is written again before any request reads it). Each figure is the median of three
/// runs after a warm-up.
pub fn measure(runner: &mut ModelRunner, block_size: usize) -> wick_models::Result<StepCost> {
    let blocks = PROBE_TOKENS.div_ceil(block_size) + 1;
    let probe = |n: usize, computed: usize| ScheduledSeq {
        seq: SeqId::new(RequestId(0), 0),
        token_ids: (0..n as u32).map(|t| 100 + t).collect(),
        num_computed_tokens: computed,
        block_table: (0..blocks as u32).collect(),
        sample: true,
        lora_slot: None,
    };
    let mut time = |s: &ScheduledSeq| -> wick_models::Result<Duration> {
        runner.run(&[s])?; // warm-up
        let mut runs = Vec::with_capacity(3);
        for _ in 0..3 {
            let start = Instant::now();
            runner.run(&[s])?;
            runs.push(start.elapsed());
        }
        runs.sort();
        Ok(runs[1])
    };
    let prefill = time(&probe(PROBE_TOKENS, 0))?;
    let decode = time(&probe(1, PROBE_TOKENS))?;
    let per_token = prefill.saturating_sub(decode) / (PROBE_TOKENS as u32 - 1);
    Ok(StepCost { decode, per_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(decode_ms: u64, per_token_us: u64) -> StepCost {
        StepCost {
            decode: Duration::from_millis(decode_ms),
            per_token: Duration::from_micros(per_token_us),
        }
    }

    #[test]
    fn a_full_cpu_step_costs_a_few_decode_steps() {
        // SmolLM2 Q4_1 on 2 cores: ~25 ms a decode step, ~3.5 ms a prompt token.
        let c = cost(25, 1000);
        let b = c.cpu_budget(16);
        assert_eq!(b, 64);
        let full = c.decode + c.per_token * b as u32;
        assert!(full.as_secs_f64() <= STALL_IN_DECODE_STEPS * c.decode.as_secs_f64());
        // Bounds: never below two blocks, never above the device default.
        assert_eq!(cost(25, 3500).cpu_budget(16), MIN_CPU_BUDGET);
        assert_eq!(cost(100, 1).cpu_budget(16), DEVICE_TOKEN_BUDGET);
        assert_eq!(cost(100, 0).cpu_budget(16), DEVICE_TOKEN_BUDGET);
        assert_eq!(cost(40, 1000).cpu_budget(16) % 16, 0);
    }
}

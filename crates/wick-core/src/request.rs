//! What a generation request asks for and what comes back, as plain data.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Identifies a request inside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

/// Every OpenAI sampling parameter the engine honours. Validated by
/// [`SamplingParams::validate`] before a request reaches the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    pub top_p: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Drop tokens whose probability is below `min_p` times the top one; 0 disables.
    pub min_p: f32,
    /// OpenAI presence penalty, in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty, in [-2, 2].
    pub frequency_penalty: f32,
    /// Multiplicative penalty on tokens seen in prompt or output (1 disables).
    pub repetition_penalty: f32,
    /// Added to the logits of the given tokens.
    pub logit_bias: HashMap<u32, f32>,
    /// Seed for reproducible sampling, independent of batch composition.
    pub seed: Option<u64>,
    /// Return the chosen token's logprob.
    pub logprobs: bool,
    /// Also return this many most likely alternatives (at most 20).
    pub top_logprobs: usize,
    /// Number of completions (they share the prompt's KV blocks).
    pub n: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that may not end generation before this many were generated.
    pub min_tokens: usize,
    /// Token ids that end generation (besides eos).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past eos.
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
            seed: None,
            logprobs: false,
            top_logprobs: 0,
            n: 1,
            max_tokens: 16,
            min_tokens: 0,
            stop_token_ids: vec![],
            ignore_eos: false,
        }
    }
}

/// Most alternatives `top_logprobs` may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingParams {
    /// Greedy decoding of up to `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Checks every value's range; the error names the parameter.
    pub fn validate(&self) -> Result<(), crate::WickError> {
        let bad = |param: &str, msg: String| Err(crate::WickError::invalid_param(param, msg));
        if !(0.0..=2.0).contains(&self.temperature) || self.temperature.is_nan() {
            return bad(
                "temperature",
                format!("{} is not in [0, 2]", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} is not in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} is not in [0, 1]", self.min_p));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return bad(name, format!("{v} is not in [-2, 2]"));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(
                "repetition_penalty",
                format!("{} must be > 0", self.repetition_penalty),
            );
        }
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return bad(
                "top_logprobs",
                format!("{} is more than {MAX_TOP_LOGPROBS}", self.top_logprobs),
            );
        }
        if self.n < 1 {
            return bad("n", "must be at least 1".into());
        }
        if self.max_tokens < 1 {
            return bad("max_tokens", "must be at least 1".into());
        }
        if self.min_tokens > self.max_tokens {
            return bad(
                "min_tokens",
                format!(
                    "{} is more than max_tokens {}",
                    self.min_tokens, self.max_tokens
                ),
            );
        }
        for (tok, b) in &self.logit_bias {
            if !(-100.0..=100.0).contains(b) {
                return bad(
                    "logit_bias",
                    format!("bias {b} for token {tok} is not in [-100, 100]"),
                );
            }
        }
        Ok(())
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// eos or a stop token/string.
    Stop,
    /// max_tokens or the context limit.
    Length,
    /// The client went away or the request was cancelled.
    Abort,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// A token's logprob and the most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprobs {
    /// The chosen token's logprob.
    pub logprob: f32,
    /// (token id, logprob), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What the engine sends down a request's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokenEvent {
    /// One new token of completion `index` (0..n).
    Token {
        /// Which of the n completions.
        index: usize,
        /// The token.
        id: u32,
        /// Its logprobs, when asked for.
        logprobs: Option<TokenLogprobs>,
        /// Set on the completion's last token.
        finish_reason: Option<FinishReason>,
    },
    /// Every completion has finished; nothing more follows.
    Finished(RequestMetrics),
    /// The request failed; nothing more follows.
    Error(crate::WickError),
}

/// Timings and counts of one finished request, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestMetrics {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
    /// Generated tokens, over all n completions.
    pub generation_tokens: usize,
    /// Arrival to first scheduled step, seconds.
    pub queue_time_s: f64,
    /// Arrival to first token, seconds.
    pub ttft_s: f64,
    /// Arrival to last token, seconds.
    pub e2e_s: f64,
    /// Times between consecutive tokens of each completion, seconds.
    pub inter_token_s: Vec<f64>,
    /// Times this request's sequences were preempted.
    pub preemptions: u32,
}

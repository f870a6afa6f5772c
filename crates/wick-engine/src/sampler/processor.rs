//! The per-sequence logits-processor hook: structured output and tool calling plug in
//! here. A [`LogitsProcessor`] does not edit logits itself; each step it hands the
//! sampler a [`SamplingConstraint`] (an allowed-token bitset and a bias list), which goes
//! into the sequence's row of the sampling op beside `logit_bias` (see
//! [`super::push_row`]). It is then told the token sampled, to advance
//! its own state (e.g. a grammar's). Penalty state (token counts of the output, the
//! prompt's tokens) lives beside it in [`super::SeqSamplingState`].
//!
//! Two more answers let a grammar drive a sequence beyond one token: after a token is
//! accepted, [`LogitsProcessor::forced`] names the tokens that must follow (appended
//! without sampling; their KV is computed with the sequence's next chunk), and
//! [`LogitsProcessor::ended`] says the sequence must stop here (`finish_reason: stop`).
//!
//! The engine asks for the next constraint while the forward pass runs (off the engine
//! thread, in parallel over sequences), so a processor must be `Send` and its
//! `constraint` must not depend on anything but its own state.
//!
//! One processor serves one sequence (one of a request's `n` completions); a
//! [`LogitsProcessorFactory`] given with the request makes one per completion.

use wick_core::WickError;

/// A set of token ids, one bit per id: bit `t % 32` of word `t / 32` (the shape of
/// llguidance's token masks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBitset {
    words: Vec<u32>,
}

impl TokenBitset {
    /// The empty set over a vocabulary of `vocab_size` ids.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            words: vec![0; vocab_size.div_ceil(32)],
        }
    }

    /// The set whose bits are `words`.
    pub fn from_words(words: Vec<u32>) -> Self {
        Self { words }
    }

    /// The set of `tokens` over a vocabulary of `vocab_size` ids (ids beyond it are left
    /// out).
    pub fn from_tokens(vocab_size: usize, tokens: impl IntoIterator<Item = u32>) -> Self {
        let mut set = Self::new(vocab_size);
        for t in tokens {
            set.insert(t);
        }
        set
    }

    /// Adds `token`; ids beyond the set's size are ignored.
    pub fn insert(&mut self, token: u32) {
        if let Some(w) = self.words.get_mut(token as usize / 32) {
            *w |= 1 << (token % 32);
        }
    }

    /// Whether `token` is in the set (ids beyond its size are not).
    pub fn contains(&self, token: u32) -> bool {
        (self.words.get(token as usize / 32)).is_some_and(|w| w & (1 << (token % 32)) != 0)
    }

    /// The words, bit `t % 32` of word `t / 32` for token `t`.
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The words, to fill in place.
    pub fn words_mut(&mut self) -> &mut [u32] {
        &mut self.words
    }
}

/// The inputs a [`LogitsProcessor`] gives one sampling step. The default constrains
/// nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingConstraint {
    /// Only these tokens may be sampled (every other logit becomes -inf); `None`: all.
    /// If it allows no token of the vocabulary, the sampler falls back to token 0.
    pub allowed: Option<TokenBitset>,
    /// `(token, bias)` added to the logits, as `logit_bias` is.
    pub bias: Vec<(u32, f32)>,
}

/// Constrains the sampling of one sequence, step by step. See the module docs.
pub trait LogitsProcessor: Send {
    /// The constraint for the next token, given the tokens `generated` so far.
    fn constraint(&mut self, generated: &[u32]) -> SamplingConstraint;

    /// The token sampled under the last constraint (it is now the last of the output).
    fn accept(&mut self, token: u32);

    /// Tokens that must follow the last accepted one, already accepted by the
    /// processor; the engine appends them without sampling. Asked after each
    /// [`accept`](Self::accept) unless the request wants logprobs (forced tokens have
    /// none of their own). Empty: sample the next token as usual.
    fn forced(&mut self) -> Vec<u32> {
        Vec::new()
    }

    /// Why the sequence must end after the tokens accepted so far (the grammar is
    /// complete and allows nothing more, or cannot continue); `None`: go on.
    fn ended(&self) -> Option<String> {
        None
    }
}

/// Makes the [`LogitsProcessor`] of each completion of a request.
pub trait LogitsProcessorFactory: Send + Sync {
    /// The processor of completion `index` after `prompt`; an error fails the request
    /// (e.g. a grammar that does not compile).
    fn create(&self, index: usize, prompt: &[u32]) -> Result<Box<dyn LogitsProcessor>, WickError>;
}

impl<F> LogitsProcessorFactory for F
where
    F: Fn(usize, &[u32]) -> Result<Box<dyn LogitsProcessor>, WickError> + Send + Sync,
{
    fn create(&self, index: usize, prompt: &[u32]) -> Result<Box<dyn LogitsProcessor>, WickError> {
        self(index, prompt)
    }
}

//! The sample phase of an engine step: each part of the step's logits (one, or one per
//! sequence after a failed batch) becomes a [`wick_kernels::SamplingBatch`] of the
//! sequences' rows, the sampling op draws their tokens where the logits are, and each token
//! is recorded in its sequence's state with what its logits processor decides after it.

use super::{AfterSample, EngineLoop, StepSamples};
use crate::kv::SeqId;
use crate::runner::{ModelRunner, StepLogits};
use crate::sampler::{push_row, token_logprobs};
use wick_core::{ErrorKind, WickError};

impl EngineLoop {
    /// The next token of each sampled sequence (and its logprobs, when asked for), drawn
    /// by the sampling op where the logits are.
    pub(super) fn sample(&mut self, parts: Vec<StepLogits>) -> StepSamples {
        let mut samples = StepSamples::default();
        for part in parts {
            let mut batch = wick_kernels::SamplingBatch::new(part.vocab());
            // Sequences whose request is gone keep their row (the logits have it), unused.
            let mut live = Vec::with_capacity(part.rows().len());
            for &seq in part.rows() {
                let pushed = match (
                    self.requests.get(&seq.request),
                    self.seq_states.get_mut(&seq),
                    self.scheduler.get(seq),
                ) {
                    (Some(r), Some(state), Some(s)) => {
                        let stop_ids = s.stop().stop_ids();
                        push_row(&mut batch, r.params(), state, stop_ids, &mut self.scratch)
                            .map_err(|e| Some(format!("cannot sample: {e}")))
                    }
                    _ => Err(None),
                };
                if let Err(why) = &pushed {
                    if let Some(why) = why {
                        let error = WickError::new(ErrorKind::InvalidRequest, why.clone());
                        self.fail_request(seq.request, error);
                    }
                    // A greedy row without edits is always accepted.
                    let _ = batch.push(wick_kernels::RowParams::greedy(), Default::default());
                }
                live.push(pushed.is_ok());
            }
            match ModelRunner::sample(&part, &batch) {
                Ok(drawn) => {
                    self.timing.add_bytes(batch.bytes_to_host());
                    for ((&seq, ok), d) in part.rows().iter().zip(live).zip(drawn) {
                        if ok {
                            self.accept(seq, &d, &mut samples);
                        }
                    }
                }
                Err(e) => {
                    for &seq in part.rows() {
                        let error = WickError::internal(format!("sampling failed: {e}"));
                        self.fail_request(seq.request, error);
                    }
                }
            }
        }
        samples
    }

    /// Records a sampled token in its sequence's state and in `samples`, with what the
    /// sequence's logits processor decides after it.
    fn accept(
        &mut self,
        seq: SeqId,
        drawn: &wick_kernels::SampledToken,
        samples: &mut StepSamples,
    ) {
        let (Some(request), Some(state)) = (
            self.requests.get(&seq.request),
            self.seq_states.get_mut(&seq),
        ) else {
            return;
        };
        state.push(drawn.token);
        samples.0.push((seq, drawn.token));
        samples.1.insert(seq, token_logprobs(drawn));
        if state.has_processor() {
            // Forced tokens would have no logprobs of their own: with logprobs asked
            // for, each is sampled (the mask allows only it) in its own step.
            let params = request.params();
            let wants_logprobs = params.logprobs || params.top_logprobs > 0;
            let forced = if wants_logprobs {
                vec![]
            } else {
                state.take_forced()
            };
            let ended = state.ended();
            if !forced.is_empty() || ended.is_some() {
                samples.2.insert(seq, AfterSample { forced, ended });
            }
        }
    }
}

//! What the loop keeps for one request while it is in flight ([`RequestState`]): its
//! events channel (which doubles as cancellation: a closed channel means the client
//! left), its waiting-queue permit until it starts, its timing and metrics, and how many
//! of its `n` completions are still unfinished.
//!
//! Invariants: the permit is held exactly until the first step that schedules the
//! request (or until the state is dropped); nothing is sent after `Finished` or `Error`,
//! because sending either consumes the state.

use super::lora::LoraEntry;
use super::queue::QueuePermit;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use wick_core::{
    FinishReason, RequestMetrics, SamplingParams, TokenEvent, TokenLogprobs, WickError,
};

/// One request in flight.
#[derive(Debug)]
pub(crate) struct RequestState {
    events: UnboundedSender<TokenEvent>,
    params: SamplingParams,
    /// Its place in the waiting queue, until it starts.
    permit: Option<QueuePermit>,
    arrival: Instant,
    first_token: Option<Instant>,
    /// Per completion: when its last token was sent.
    last_token: Vec<Option<Instant>>,
    unfinished: usize,
    metrics: RequestMetrics,
    /// Its LoRA adapter (held, so unloading the name lets it finish).
    lora: Option<Arc<LoraEntry>>,
}

impl RequestState {
    /// A request sampled with `params` (its `n` completions) over `prompt_tokens`, not
    /// yet started.
    pub(crate) fn new(
        events: UnboundedSender<TokenEvent>,
        permit: QueuePermit,
        arrival: Instant,
        params: SamplingParams,
        prompt_tokens: usize,
        lora: Option<Arc<LoraEntry>>,
    ) -> Self {
        let n = params.n;
        Self {
            events,
            params,
            permit: Some(permit),
            arrival,
            first_token: None,
            last_token: vec![None; n],
            unfinished: n,
            metrics: RequestMetrics {
                prompt_tokens,
                ..Default::default()
            },
            lora,
        }
    }

    /// Its LoRA adapter, if any.
    pub(crate) fn lora(&self) -> Option<&Arc<LoraEntry>> {
        self.lora.as_ref()
    }

    /// Its sampling parameters.
    pub(crate) fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether the client has gone (its stream was dropped).
    pub(crate) fn is_abandoned(&self) -> bool {
        self.events.is_closed()
    }

    /// Called for each scheduled sequence of it: the first time, the request has started
    /// (its queue place is given back, queue time and cached tokens recorded).
    pub(crate) fn on_scheduled(&mut self, now: Instant, cached_tokens: usize) {
        if self.permit.take().is_some() {
            self.metrics.queue_time_s = now.duration_since(self.arrival).as_secs_f64();
            self.metrics.cached_tokens = cached_tokens;
        }
    }

    /// Counts a preemption of one of its sequences.
    pub(crate) fn on_preempted(&mut self) {
        self.metrics.preemptions += 1;
    }

    /// Sends token `id` of completion `index`, recording timings.
    pub(crate) fn send_token(
        &mut self,
        now: Instant,
        index: usize,
        id: u32,
        logprobs: Option<TokenLogprobs>,
        finish_reason: Option<FinishReason>,
    ) {
        if self.first_token.is_none() {
            self.first_token = Some(now);
            self.metrics.ttft_s = now.duration_since(self.arrival).as_secs_f64();
        }
        if let Some(slot) = self.last_token.get_mut(index) {
            if let Some(last) = slot.replace(now) {
                (self.metrics.inter_token_s).push(now.duration_since(last).as_secs_f64());
            }
        }
        self.metrics.generation_tokens += 1;
        let _ = self.events.send(TokenEvent::Token {
            index,
            id,
            logprobs,
            finish_reason,
        });
    }

    /// One completion ended; returns whether every one has.
    pub(crate) fn finish_one(&mut self) -> bool {
        self.unfinished = self.unfinished.saturating_sub(1);
        self.unfinished == 0
    }

    /// Sends [`TokenEvent::Finished`] with its metrics.
    pub(crate) fn complete(mut self) {
        self.metrics.e2e_s = self.arrival.elapsed().as_secs_f64();
        let _ = self.events.send(TokenEvent::Finished(self.metrics));
    }

    /// Sends [`TokenEvent::Error`].
    pub(crate) fn fail(self, error: WickError) {
        let _ = self.events.send(TokenEvent::Error(error));
    }
}

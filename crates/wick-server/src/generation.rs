//! One engine request seen from the HTTP side: submits prompt ids, then turns the
//! engine's token events into text pieces per completion (incremental detokenization,
//! stop strings, stop-token text dropped), counts usage, records metrics and writes the
//! request's log line. Chat and completions, streamed or not, all go through
//! [`PromptRun`]; dropping it aborts the request in the engine.

use crate::backend::EventStream;
use crate::detokenizer::{IncrementalDetokenizer, StopMatcher};
use crate::error::ApiError;
use crate::state::Serving;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Instant;
use wick_core::{FinishReason, RequestMetrics, TokenEvent, TokenLogprobs, WickError};
use wick_engine::EngineRequest;

/// One generated token, kept for logprobs.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// The token.
    pub id: u32,
    /// Its logprobs, when asked for.
    pub logprobs: Option<TokenLogprobs>,
}

/// New output of one completion (choice).
#[derive(Debug, Clone)]
pub struct ChoiceDelta {
    /// The choice's index in the response.
    pub index: usize,
    /// Text that became final (may be empty while characters or stop strings are
    /// pending).
    pub text: String,
    /// The token(s) behind it.
    pub tokens: Vec<TokenOut>,
    /// Set on the choice's last piece.
    pub finish_reason: Option<FinishReason>,
}

struct ChoiceState {
    detok: IncrementalDetokenizer,
    stop: StopMatcher,
    tokens: usize,
    finish: Option<FinishReason>,
}

/// A submitted prompt and its `n` completions.
pub struct PromptRun {
    serving: Arc<Serving>,
    stream: EventStream,
    log_id: String,
    prompt_len: usize,
    first_index: usize,
    choices: Vec<ChoiceState>,
    stop_ids: Vec<u32>,
    start: Instant,
    done: bool,
    /// Its LoRA adapter, for the log line.
    lora: Option<String>,
}

impl PromptRun {
    /// Submits `request` (prompt, sampling, adapter, constraint); its choices are
    /// numbered from `first_index`.
    pub fn submit(
        serving: Arc<Serving>,
        log_id: &str,
        request: EngineRequest,
        stops: &[String],
        first_index: usize,
    ) -> Result<Self, ApiError> {
        let params = &request.params;
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&serving.backend.info().eos_token_ids);
        }
        let choices = (0..params.n)
            .map(|_| ChoiceState {
                detok: IncrementalDetokenizer::new(&request.prompt_token_ids),
                stop: StopMatcher::new(stops),
                tokens: 0,
                finish: None,
            })
            .collect();
        let prompt_len = request.prompt_token_ids.len();
        let lora = request.lora.clone();
        let stream = serving.backend.submit(request)?;
        Ok(Self {
            serving,
            stream,
            log_id: log_id.to_string(),
            prompt_len,
            first_index,
            choices,
            stop_ids,
            start: Instant::now(),
            done: false,
            lora,
        })
    }

    /// Index of this prompt's first choice in the response.
    pub fn first_index(&self) -> usize {
        self.first_index
    }

    /// Prompt tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_len
    }

    /// Tokens generated so far over the choices (up to each one's end).
    pub fn completion_tokens(&self) -> usize {
        self.choices.iter().map(|c| c.tokens).sum()
    }

    /// The next piece of output; `None` when every choice has finished.
    pub async fn next(&mut self) -> Option<Result<ChoiceDelta, ApiError>> {
        while !self.done {
            let event = self.stream.next().await;
            match event {
                Some(TokenEvent::Token {
                    index,
                    id,
                    logprobs,
                    finish_reason,
                }) => match self.on_token(index, id, logprobs, finish_reason) {
                    Ok(Some(delta)) => return Some(Ok(delta)),
                    Ok(None) => continue,
                    Err(e) => return Some(Err(self.fail(e))),
                },
                Some(TokenEvent::Finished(metrics)) => self.on_finished(&metrics),
                Some(TokenEvent::Error(e)) => return Some(Err(self.fail(e.into()))),
                None => {
                    // The stream ended without its last event: the engine went away.
                    let e = WickError::internal("the engine stopped before the request finished");
                    return Some(Err(self.fail(e.into())));
                }
            }
        }
        None
    }

    fn on_token(
        &mut self,
        index: usize,
        id: u32,
        logprobs: Option<TokenLogprobs>,
        finish: Option<FinishReason>,
    ) -> Result<Option<ChoiceDelta>, ApiError> {
        let p = &self.serving.prompt;
        let Some(c) = self.choices.get_mut(index) else {
            return Ok(None);
        };
        if c.finish.is_some() {
            return Ok(None); // made after a stop string ended this choice
        }
        c.tokens += 1;
        let stopped_by_token = finish == Some(FinishReason::Stop) && self.stop_ids.contains(&id);
        let mut text = if stopped_by_token {
            String::new()
        } else {
            c.detok.push(p, id)?
        };
        if finish.is_some() {
            text.push_str(&c.detok.flush(p)?);
        }
        let released = c.stop.push(&text);
        let mut text = released.text;
        let finish = if released.stopped {
            self.stream.finish_completion(index);
            Some(FinishReason::Stop)
        } else {
            if finish.is_some() {
                text.push_str(&c.stop.flush());
            }
            finish
        };
        c.finish = finish;
        Ok(Some(ChoiceDelta {
            index: self.first_index + index,
            text,
            tokens: vec![TokenOut { id, logprobs }],
            finish_reason: finish,
        }))
    }

    fn on_finished(&mut self, m: &RequestMetrics) {
        self.done = true;
        let reasons: Vec<&'static str> = self
            .choices
            .iter()
            .map(|c| c.finish.unwrap_or(FinishReason::Stop).as_str())
            .collect();
        self.serving.metrics.record_finished(m, &reasons);
        tracing::info!(
            request = %self.log_id,
            engine_id = %self.stream.id(),
            lora = self.lora.as_deref().unwrap_or("-"),
            prompt_tokens = m.prompt_tokens,
            cached_tokens = m.cached_tokens,
            output_tokens = self.completion_tokens(),
            queue_s = m.queue_time_s,
            ttft_s = m.ttft_s,
            total_s = m.e2e_s,
            preemptions = m.preemptions,
            finish_reason = reasons.join(","),
            status = 200,
            "request finished"
        );
    }

    fn fail(&mut self, e: ApiError) -> ApiError {
        if !self.done {
            self.done = true;
            self.serving
                .metrics
                .record_unfinished(self.prompt_len, self.completion_tokens());
            tracing::warn!(
                request = %self.log_id,
                engine_id = %self.stream.id(),
                lora = self.lora.as_deref().unwrap_or("-"),
                prompt_tokens = self.prompt_len,
                output_tokens = self.completion_tokens(),
                total_s = self.start.elapsed().as_secs_f64(),
                status = e.status.as_u16(),
                error = %e.message,
                "request failed"
            );
        }
        e
    }
}

impl Drop for PromptRun {
    fn drop(&mut self) {
        if !self.done {
            // The client went away (or another prompt of the request failed): dropping
            // the stream aborts the request in the engine at its next step.
            self.serving
                .metrics
                .record_unfinished(self.prompt_len, self.completion_tokens());
            tracing::info!(
                request = %self.log_id,
                engine_id = %self.stream.id(),
                lora = self.lora.as_deref().unwrap_or("-"),
                prompt_tokens = self.prompt_len,
                output_tokens = self.completion_tokens(),
                total_s = self.start.elapsed().as_secs_f64(),
                finish_reason = "abort",
                status = 499,
                "request aborted: client disconnected"
            );
        }
    }
}

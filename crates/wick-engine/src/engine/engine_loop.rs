//! The engine loop, on its own OS thread (never inside tokio). Each iteration takes the
//! commands that arrived (waiting for one when idle), drops requests whose client left,
//! and runs one step, which reads in three lines: `schedule` -> `run` -> `postprocess`.
//! Stop rules are the scheduler's (`update_from_output`); the loop only forwards each
//! token with its finish reason. A failing forward pass is retried sequence by sequence
//! so that an error reaches only the request it belongs to.
//!
//! The loop runs under `catch_unwind`: if it panics, the panic message is logged, the
//! engine is marked dead (so submits refuse), and every request in flight, admitted or
//! still in the command channel, gets an `Internal` error instead of hanging.

#[path = "sample_step.rs"]
mod sample_step;

use super::handle::{Command, Submission};
use super::health::{panic_message, Monitor};
use super::request::RequestState;
use super::step_timing::StepTiming;
use super::{EngineInfo, EngineRequest, EngineStats, Fault, StepPhase};
use crate::kv::SeqId;
use crate::runner::{ModelRunner, StepLogits};
use crate::sampler::{RowScratch, SeqSamplingState};
use crate::scheduler::ScheduledSeq;
use crate::scheduler::{
    LoraId, Scheduler, SchedulerOutput, SeqStatus, SeqUpdate, Sequence, StopConfig,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wick_core::{ErrorKind, FinishReason, RequestId, TokenLogprobs, WickError};

/// A step's sampled `(sequence, token)` pairs, each one's logprobs, and what a
/// logits processor decided after it.
type StepSamples = (
    Vec<(SeqId, u32)>,
    HashMap<SeqId, Option<TokenLogprobs>>,
    HashMap<SeqId, AfterSample>,
);

/// What a sequence's logits processor decided after its sampled token: tokens forced
/// to follow it, and whether (and why) the sequence ends there.
#[derive(Debug, Default)]
struct AfterSample {
    forced: Vec<u32>,
    ended: Option<String>,
}

/// The loop's state; lives on the engine thread.
pub(crate) struct EngineLoop {
    runner: ModelRunner,
    scheduler: Scheduler,
    info: Arc<EngineInfo>,
    stats: Arc<Mutex<EngineStats>>,
    monitor: Arc<Monitor>,
    fault: Option<Fault>,
    requests: HashMap<RequestId, RequestState>,
    seq_states: HashMap<SeqId, SeqSamplingState>,
    scratch: RowScratch,
    steps: u64,
    computed_tokens: u64,
    timing: StepTiming,
    last_step_unix_s: Option<f64>,
    max_loras_in_step: usize,
}

impl EngineLoop {
    /// A loop over `runner` and `scheduler`, publishing to `stats` and `monitor`.
    pub(crate) fn new(
        runner: ModelRunner,
        scheduler: Scheduler,
        info: Arc<EngineInfo>,
        stats: Arc<Mutex<EngineStats>>,
        monitor: Arc<Monitor>,
        fault: Option<Fault>,
    ) -> Self {
        Self {
            runner,
            scheduler,
            info,
            stats,
            monitor,
            fault,
            requests: HashMap::new(),
            seq_states: HashMap::new(),
            scratch: RowScratch::default(),
            steps: 0,
            computed_tokens: 0,
            timing: StepTiming::default(),
            last_step_unix_s: None,
            max_loras_in_step: 0,
        }
    }

    /// Runs the loop until shutdown (or until every handle is gone), catching a panic:
    /// see the module docs.
    pub(crate) fn run_guarded(mut self, commands: mpsc::Receiver<Command>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run(&commands)));
        let (reason, error) = match outcome {
            Ok(()) => (
                "the engine was shut down".to_string(),
                WickError::new(ErrorKind::Unavailable, "the engine is shutting down"),
            ),
            Err(payload) => {
                let msg = panic_message(payload.as_ref());
                tracing::error!(panic = %msg, "the engine thread panicked");
                let error = WickError::internal(format!("the engine stopped: {msg}"));
                (msg, error)
            }
        };
        // Dead first, so that no submit is accepted while in-flight requests are failed.
        self.monitor.set_dead(reason);
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.requests.remove(&id) {
                r.fail(error.clone());
            }
        }
        while let Ok(command) = commands.try_recv() {
            if let Command::Submit(sub) = command {
                let _ = sub.events.send(wick_core::TokenEvent::Error(error.clone()));
            }
        }
    }

    fn run(&mut self, commands: &mpsc::Receiver<Command>) {
        while self.receive(commands) {
            self.reap_abandoned();
            self.step();
            self.publish_stats();
        }
        // Free every block now; the requests themselves are failed by `run_guarded`.
        for &id in self.requests.keys() {
            self.scheduler.abort_request(id);
        }
        self.seq_states.clear();
        self.publish_stats();
    }

    /// One step: plan, run the model, sample and forward the tokens; each phase timed
    /// ([`StepPhase`]).
    fn step(&mut self) {
        let started = Instant::now();
        self.timing.begin();
        let output = self.scheduler.schedule();
        if output.is_empty() {
            return;
        }
        self.timing.add(StepPhase::Schedule, started);
        let logits = self.run_model_and_prepare(&output);
        let sampling = Instant::now();
        let samples = self.sample(logits);
        self.timing.add(StepPhase::Sample, sampling);
        let postprocessing = Instant::now();
        self.postprocess(&output, samples);
        self.timing.add(StepPhase::Postprocess, postprocessing);
        self.record_step(started, &output);
    }

    /// [`Self::run_model`], while the next-token constraints of the constrained
    /// sequences to sample (grammar masks) are computed on other threads, in parallel
    /// over sequences: their cost hides behind the forward pass.
    fn run_model_and_prepare(&mut self, output: &SchedulerOutput) -> Vec<StepLogits> {
        let ids: Vec<SeqId> = (output.scheduled.iter())
            .filter(|s| s.sample)
            .filter(|s| (self.seq_states.get(&s.seq)).is_some_and(|st| st.has_processor()))
            .map(|s| s.seq)
            .collect();
        let mut constrained: Vec<(SeqId, SeqSamplingState)> = (ids.into_iter())
            .filter_map(|id| Some((id, self.seq_states.remove(&id)?)))
            .collect();
        if constrained.is_empty() {
            return self.run_model(output);
        }
        let logits = std::thread::scope(|scope| {
            let masks = scope.spawn(|| {
                use rayon::prelude::*;
                (constrained.par_iter_mut()).for_each(|(_, state)| state.prepare());
            });
            let logits = self.run_model(output);
            if let Err(panic) = masks.join() {
                std::panic::resume_unwind(panic);
            }
            logits
        });
        for (seq, state) in constrained {
            // A request failed by the forward pass is gone: its states go with it.
            if self.requests.contains_key(&seq.request) {
                self.seq_states.insert(seq, state);
            }
        }
        logits
    }

    /// Takes the commands that arrived, first waiting for one when idle. Returns false
    /// on shutdown or when every handle is gone.
    fn receive(&mut self, commands: &mpsc::Receiver<Command>) -> bool {
        if self.requests.is_empty() {
            self.monitor.set_busy(false);
            let Ok(c) = commands.recv() else {
                return false;
            };
            if !self.handle(c) {
                return false;
            }
        }
        while let Ok(c) = commands.try_recv() {
            if !self.handle(c) {
                return false;
            }
        }
        self.monitor.set_busy(!self.requests.is_empty());
        true
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Shutdown => return false,
            Command::FinishCompletion { id, index } => self.finish_completion(id, index),
            Command::Submit(sub) => self.admit(*sub),
        }
        true
    }

    /// Queues a submitted request's `n` sequences, or fails it.
    fn admit(&mut self, sub: Submission) {
        let Submission {
            id,
            request,
            events,
            arrival,
            permit,
            lora,
        } = sub;
        let lora_id = lora.as_ref().map(|l| l.id);
        let seed = request.params.seed.unwrap_or_else(|| {
            arrival.elapsed().as_nanos() as u64 ^ id.0.wrapping_mul(0x9E37_79B9)
        });
        let state = RequestState::new(
            events,
            permit,
            arrival,
            request.params.clone(),
            request.prompt_token_ids.len(),
            lora,
        );
        match self.add_sequences(id, &request, seed, lora_id) {
            Ok(()) => {
                self.requests.insert(id, state);
            }
            Err(e) => {
                self.scheduler.abort_request(id);
                self.seq_states.retain(|s, _| s.request != id);
                state.fail(e);
            }
        }
    }

    fn add_sequences(
        &mut self,
        id: RequestId,
        request: &EngineRequest,
        seed: u64,
        lora: Option<LoraId>,
    ) -> Result<(), WickError> {
        let (prompt, params) = (&request.prompt_token_ids, &request.params);
        let stop = StopConfig::new(params, &self.info.eos_token_ids);
        for index in 0..params.n {
            let processor = match &request.logits_processor {
                Some(factory) => Some(factory.create(index, prompt)?),
                None => None,
            };
            let seq_id = SeqId::new(id, index as u32);
            let seq = Sequence::new(seq_id, prompt.clone(), params.max_tokens).with_lora(lora);
            self.scheduler.add_request(seq.with_stop(stop.clone()))?;
            let state = SeqSamplingState::new(seed, index, prompt, params);
            (self.seq_states).insert(seq_id, state.with_processor(processor));
        }
        Ok(())
    }

    /// Ends one completion of a request early (a stop string), as a stop token would.
    fn finish_completion(&mut self, id: RequestId, index: usize) {
        let seq = SeqId::new(id, index as u32);
        if self.seq_states.remove(&seq).is_none() {
            return; // unknown, or already finished
        }
        self.scheduler.finish(seq, FinishReason::Stop);
        self.finish_one(id);
    }

    /// One completion of `id` ended; when it was the last, sends `Finished`.
    fn finish_one(&mut self, id: RequestId) {
        if self.requests.get_mut(&id).is_some_and(|r| r.finish_one()) {
            if let Some(r) = self.remove(id) {
                r.complete();
            }
        }
    }

    /// Aborts requests whose stream was dropped.
    fn reap_abandoned(&mut self) {
        let gone: Vec<RequestId> = (self.requests.iter())
            .filter(|(_, r)| r.is_abandoned())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::debug!(request = %id, "client gone; aborting");
            self.remove(id);
        }
    }

    /// Forgets request `id` and its sequences (their blocks are freed); dropping the
    /// returned state gives back its queue place if it had not started.
    fn remove(&mut self, id: RequestId) -> Option<RequestState> {
        self.scheduler.abort_request(id);
        self.seq_states.retain(|s, _| s.request != id);
        self.requests.remove(&id)
    }

    fn fail_request(&mut self, id: RequestId, error: WickError) {
        if let Some(r) = self.remove(id) {
            r.fail(error);
        }
    }

    /// One forward pass; if it fails, each sequence alone, so a failure stays with its own
    /// request. Returns the logits of the sampled sequences that did not fail, where the
    /// model left them (one part, or one per sequence after a failure). Times the prepare
    /// and forward phases.
    fn run_model(&mut self, output: &SchedulerOutput) -> Vec<StepLogits> {
        let now = Instant::now();
        for s in &output.scheduled {
            if let Some(r) = self.requests.get_mut(&s.seq.request) {
                r.on_scheduled(now, s.num_computed_tokens);
            }
        }
        self.steps += 1;
        self.computed_tokens += output.total_num_scheduled_tokens as u64;
        self.inject_fault();
        self.load_loras(output);
        let seqs: Vec<&ScheduledSeq> = output.scheduled.iter().collect();
        match self.run_timed(&seqs) {
            Ok(logits) => vec![logits],
            Err(e) => {
                tracing::warn!(error = %e, "batch failed; retrying its sequences one by one");
                let retrying = Instant::now();
                let mut parts = Vec::with_capacity(output.scheduled.len());
                for s in &output.scheduled {
                    match self.runner.run(&[s]) {
                        Ok(part) => parts.push(part),
                        Err(e) => {
                            self.scheduler.fail_step(&SchedulerOutput {
                                scheduled: vec![s.clone()],
                                ..Default::default()
                            });
                            self.fail_request(
                                s.seq.request,
                                WickError::internal(format!("model step failed: {e}")),
                            );
                        }
                    }
                }
                self.timing.add(StepPhase::Forward, retrying);
                parts
            }
        }
    }

    /// The runner's prepare and forward calls, each timed as its phase.
    fn run_timed(&mut self, seqs: &[&ScheduledSeq]) -> wick_models::Result<StepLogits> {
        let t = Instant::now();
        let input = self.runner.prepare(seqs)?;
        self.timing.add(StepPhase::PrepareInputs, t);
        let t = Instant::now();
        let logits = self.runner.forward(seqs, &input)?;
        self.timing.add(StepPhase::Forward, t);
        Ok(logits)
    }

    /// Copies the adapters the scheduler placed in new slots into the model. A failed
    /// copy fails the requests on that adapter (the slot's contents are then unknown, so
    /// it is emptied).
    fn load_loras(&mut self, output: &SchedulerOutput) {
        let distinct: HashSet<u32> = output
            .scheduled
            .iter()
            .filter_map(|s| s.lora_slot)
            .collect();
        self.max_loras_in_step = self.max_loras_in_step.max(distinct.len());
        for &(slot, id) in &output.lora_loads {
            let entry = (self.requests.values())
                .find_map(|r| r.lora().filter(|l| l.id == id))
                .cloned();
            let result = match &entry {
                Some(e) => self.runner.load_lora(slot, Some(&e.adapter)),
                None => Ok(()), // its requests are gone; nothing will run on it
            };
            match (result, entry) {
                (Ok(()), Some(e)) => {
                    tracing::debug!(lora = %e.name, slot, "adapter loaded into its slot")
                }
                (Ok(()), None) => {}
                (Err(err), e) => {
                    tracing::error!(slot, error = %err, "cannot load a LoRA adapter into its slot");
                    let _ = self.runner.load_lora(slot, None);
                    let failed: Vec<RequestId> = (self.requests.iter())
                        .filter(|(_, r)| r.lora().is_some_and(|l| l.id == id))
                        .map(|(&rid, _)| rid)
                        .collect();
                    let name = e.map(|e| e.name.clone()).unwrap_or_default();
                    for rid in failed {
                        self.fail_request(
                            rid,
                            WickError::internal(format!("cannot load LoRA adapter {name}: {err}")),
                        );
                    }
                }
            }
        }
    }

    /// Test-only faults (see [`Fault`]), in the step they name.
    fn inject_fault(&self) {
        match self.fault {
            Some(Fault::PanicAtStep(n)) if n == self.steps => {
                panic!("injected fault: panic at step {n}")
            }
            Some(Fault::StallAtStep(n)) if n == self.steps => {
                tracing::warn!(step = n, "injected fault: stalling forever");
                loop {
                    std::thread::park();
                }
            }
            _ => {}
        }
    }

    /// Lets the scheduler apply the sampled tokens and its stop rules, and forwards each
    /// token with its finish reason.
    fn postprocess(&mut self, output: &SchedulerOutput, samples: StepSamples) {
        let (sampled, mut logprobs, mut after) = samples;
        let now = Instant::now();
        for u in self.scheduler.update_from_output(output, &sampled) {
            let lp = logprobs.remove(&u.seq).flatten();
            let mut updates = vec![u];
            if let (None, Some(a)) = (u.finish, after.remove(&u.seq)) {
                updates.extend(self.scheduler.append_output(u.seq, &a.forced));
                if let (Some(last), Some(why)) = (updates.last_mut(), a.ended) {
                    if last.finish.is_none() {
                        tracing::debug!(seq = %u.seq, reason = %why, "constraint ended the sequence");
                        self.scheduler.finish(u.seq, FinishReason::Stop);
                        last.finish = Some(FinishReason::Stop);
                    }
                }
            }
            let mut lp = lp;
            for u in updates {
                self.forward(u, lp.take(), now);
            }
        }
        for seq in &output.preempted {
            if let Some(r) = self.requests.get_mut(&seq.request) {
                r.on_preempted();
            }
        }
    }

    /// Sends one appended token; a finished sequence's sampling state goes with it.
    fn forward(&mut self, u: SeqUpdate, logprobs: Option<TokenLogprobs>, now: Instant) {
        let Some(request) = self.requests.get_mut(&u.seq.request) else {
            return;
        };
        request.send_token(now, u.seq.index as usize, u.token, logprobs, u.finish);
        if u.finish.is_some() {
            self.seq_states.remove(&u.seq);
            self.finish_one(u.seq.request);
        }
    }

    /// Names of the adapters of running and of waiting sequences (sorted, distinct).
    fn lora_names(&self) -> (Vec<String>, Vec<String>) {
        if self.scheduler.config().max_loras == 0 {
            return (Vec::new(), Vec::new()); // LoRA off: nothing to look at every step
        }
        let mut running = BTreeSet::new();
        let mut waiting = BTreeSet::new();
        for (&id, r) in &self.requests {
            let Some(l) = r.lora() else { continue };
            let seqs =
                (0..r.params().n as u32).filter_map(|i| self.scheduler.get(SeqId::new(id, i)));
            for seq in seqs {
                match seq.status() {
                    SeqStatus::Running => running.insert(l.name.clone()),
                    _ => waiting.insert(l.name.clone()),
                };
            }
        }
        (running.into_iter().collect(), waiting.into_iter().collect())
    }

    fn record_step(&mut self, started: Instant, output: &SchedulerOutput) {
        self.monitor.progress();
        let sampled = output.scheduled.iter().filter(|s| s.sample).count();
        let (seqs, tokens) = (output.scheduled.len(), output.total_num_scheduled_tokens);
        (self.timing).end(started, self.steps, seqs, sampled, tokens);
        self.last_step_unix_s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
    }

    fn publish_stats(&self) {
        let s = self.scheduler.stats();
        let (running_loras, waiting_loras) = self.lora_names();
        if let Ok(mut stats) = self.stats.lock() {
            *stats = EngineStats {
                num_running: s.num_running,
                num_waiting: s.num_waiting,
                kv_usage: s.kv_usage,
                num_used_blocks: self.scheduler.kv().pool().num_used_blocks(),
                num_preemptions: s.num_preemptions,
                prefix_cache_queries: s.prefix_cache_queries,
                prefix_cache_hits: s.prefix_cache_hits,
                steps: self.steps,
                computed_tokens: self.computed_tokens,
                step_duration: self.timing.step_duration.clone(),
                step_phase_duration: self.timing.phase_duration.clone(),
                device_to_host_bytes: self.timing.device_to_host_bytes,
                graph_steps: self.runner.graph_steps(),
                graph_shapes: self.runner.graph_shapes().len(),
                last_step_unix_s: self.last_step_unix_s,
                running_loras,
                waiting_loras,
                max_loras: self.scheduler.config().max_loras,
                max_loras_in_step: self.max_loras_in_step,
            };
        }
    }
}

//! The engine loop, on its own OS thread (never inside tokio): every step reads as
//! `schedule` -> `run` -> `postprocess`. Requests arrive through [`EngineHandle::submit`],
//! which returns a [`RequestStream`] of [`TokenEvent`]s; dropping the stream aborts the
//! request and frees its blocks at the next step. A failing forward pass is retried
//! sequence by sequence so that an error reaches only the request it belongs to.

use crate::kv::SeqId;
use crate::runner::ModelRunner;
use crate::sampler::{sample_row, SampleScratch, SeqSamplingState};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput, Sequence};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use wick_core::{
    ErrorKind, FinishReason, RequestId, RequestMetrics, SamplingParams, TokenEvent, WickError,
};
use wick_models::{KvCache, LlamaModel};

/// Default KV cache memory when none is given and the device's free memory is unknown.
pub const DEFAULT_KV_CACHE_MEMORY: u64 = 1 << 30;

/// Engine limits (each also a `wick serve` flag).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one step.
    pub max_num_batched_tokens: usize,
    /// Most requests waiting to start; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV cache; `None`: [`DEFAULT_KV_CACHE_MEMORY`].
    pub kv_cache_memory: Option<u64>,
    /// Longest prompt + completion; `None`: the model's context length.
    pub max_model_len: Option<usize>,
    /// Reuse full KV blocks across requests by prefix hash.
    pub enable_prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_waiting: 1024,
            block_size: wick_models::DEFAULT_BLOCK_SIZE,
            kv_cache_memory: None,
            max_model_len: None,
            enable_prefix_caching: true,
        }
    }
}

/// A generation request as the engine takes it: token ids and sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRequest {
    /// Prompt tokens (already templated and tokenized).
    pub prompt_token_ids: Vec<u32>,
    /// Sampling parameters (validated again on submit).
    pub params: SamplingParams,
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
}

enum Command {
    Submit(Box<Submission>),
    /// Completion `index` of a request is done (the frontend saw a stop string).
    FinishCompletion {
        id: RequestId,
        index: usize,
    },
    Shutdown,
}

struct Submission {
    id: RequestId,
    request: EngineRequest,
    events: UnboundedSender<TokenEvent>,
    arrival: Instant,
}

/// The events of one request; drop it to abort the request.
#[derive(Debug)]
pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<TokenEvent>,
    commands: mpsc::Sender<Command>,
}

impl RequestStream {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        self.rx.recv().await
    }

    /// The next event, blocking the thread (not for use inside an async runtime).
    pub fn blocking_next(&mut self) -> Option<TokenEvent> {
        self.rx.blocking_recv()
    }

    /// Ends completion `index` now with finish reason `stop` (the caller found a stop
    /// string in its text): its blocks are freed at the next step, and tokens it made in
    /// the meantime may still arrive and are to be ignored. When every completion has
    /// ended, [`TokenEvent::Finished`] follows as usual.
    pub fn finish_completion(&self, index: usize) {
        let _ = self
            .commands
            .send(Command::FinishCompletion { id: self.id, index });
    }
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    info: Arc<EngineInfo>,
    stats: Arc<Mutex<EngineStats>>,
    next_id: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl EngineHandle {
    /// Sizes the KV cache, then starts the engine thread over `model`.
    pub fn start(
        model: LlamaModel,
        eos_token_ids: Vec<u32>,
        config: EngineConfig,
    ) -> Result<Self, WickError> {
        let cfg = model.config().clone();
        let max_model_len = match config.max_model_len {
            Some(n) if n > cfg.max_position_embeddings => {
                return Err(WickError::invalid_param(
                    "max_model_len",
                    format!(
                        "{n} exceeds the model's context length {}",
                        cfg.max_position_embeddings
                    ),
                ))
            }
            Some(n) => n,
            None => cfg.max_position_embeddings,
        };
        let memory = config.kv_cache_memory.unwrap_or(DEFAULT_KV_CACHE_MEMORY);
        let cache = KvCache::with_memory(
            &cfg,
            config.block_size,
            memory,
            model.dtype(),
            model.device(),
        )
        .map_err(|e| WickError::invalid_param("kv_cache_memory", e))?;
        let sched_cfg = SchedulerConfig {
            max_num_batched_tokens: config.max_num_batched_tokens,
            max_num_seqs: config.max_num_seqs,
            max_model_len,
            block_size: config.block_size,
            num_blocks: cache.num_blocks,
            enable_prefix_caching: config.enable_prefix_caching,
            long_prefill_token_threshold: None,
        };
        let scheduler = Scheduler::new(sched_cfg)?;
        let info = Arc::new(EngineInfo {
            max_model_len,
            vocab_size: cfg.vocab_size,
            num_blocks: cache.num_blocks,
            block_size: cache.block_size,
            eos_token_ids,
        });
        tracing::info!(
            num_blocks = cache.num_blocks,
            block_size = cache.block_size,
            kv_cache_bytes = memory,
            max_model_len,
            max_num_seqs = config.max_num_seqs,
            max_num_batched_tokens = config.max_num_batched_tokens,
            "KV cache allocated"
        );
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let queued = Arc::new(AtomicUsize::new(0));
        let mut engine = EngineLoop {
            runner: ModelRunner::new(model, cache),
            scheduler,
            info: info.clone(),
            stats: stats.clone(),
            queued: queued.clone(),
            requests: HashMap::new(),
            seq_states: HashMap::new(),
            scratch: SampleScratch::default(),
            steps: 0,
            computed_tokens: 0,
        };
        std::thread::Builder::new()
            .name("wick-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| WickError::internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            commands: tx,
            info,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
            queued,
            max_waiting: config.max_waiting,
        })
    }

    /// Fixed facts about the engine.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The latest counters.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests submitted but not yet started.
    pub fn num_queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Checks `request` and queues it. Refused at once: invalid parameters or token ids,
    /// prompt + max_tokens beyond `max_model_len` or the whole KV cache, a full queue, or
    /// a stopped engine.
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, WickError> {
        request.params.validate()?;
        let info = &self.info;
        if request.prompt_token_ids.is_empty() {
            return Err(WickError::new(
                ErrorKind::InvalidRequest,
                "the prompt is empty",
            ));
        }
        if let Some(bad) = request
            .prompt_token_ids
            .iter()
            .find(|&&t| t as usize >= info.vocab_size)
        {
            return Err(WickError::invalid_param(
                "prompt",
                format!(
                    "token id {bad} is outside the vocabulary of {}",
                    info.vocab_size
                ),
            ));
        }
        let total = request.prompt_token_ids.len() + request.params.max_tokens;
        let cache_tokens = info.num_blocks * info.block_size;
        if total > info.max_model_len || total > cache_tokens {
            let limit = info.max_model_len.min(cache_tokens);
            return Err(WickError::new(
                ErrorKind::TooLong,
                format!(
                    "this model's maximum context length is {limit} tokens; the prompt has {} tokens and max_tokens is {} ({total} in all)",
                    request.prompt_token_ids.len(),
                    request.params.max_tokens
                ),
            ));
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(WickError::new(
                ErrorKind::Overloaded,
                format!(
                    "the server is overloaded: {} requests are already waiting",
                    self.max_waiting
                ),
            ));
        }
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = unbounded_channel();
        let sub = Submission {
            id,
            request,
            events: tx,
            arrival: Instant::now(),
        };
        if self.commands.send(Command::Submit(Box::new(sub))).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(WickError::new(
                ErrorKind::Unavailable,
                "the engine has stopped",
            ));
        }
        Ok(RequestStream {
            id,
            rx,
            commands: self.commands.clone(),
        })
    }

    /// Stops the engine thread; requests still in flight get an error event.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// What the loop keeps for one request.
struct Active {
    events: UnboundedSender<TokenEvent>,
    params: SamplingParams,
    stop_ids: Vec<u32>,
    arrival: Instant,
    started: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Vec<Option<Instant>>,
    unfinished: usize,
    metrics: RequestMetrics,
}

struct EngineLoop {
    runner: ModelRunner,
    scheduler: Scheduler,
    info: Arc<EngineInfo>,
    stats: Arc<Mutex<EngineStats>>,
    queued: Arc<AtomicUsize>,
    requests: HashMap<RequestId, Active>,
    seq_states: HashMap<SeqId, SeqSamplingState>,
    scratch: SampleScratch,
    steps: u64,
    computed_tokens: u64,
}

impl EngineLoop {
    fn run(&mut self, commands: mpsc::Receiver<Command>) {
        loop {
            // Idle: wait for work. Busy: take whatever arrived since the last step.
            if self.requests.is_empty() {
                match commands.recv() {
                    Ok(c) => {
                        if !self.handle(c) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            while let Ok(c) = commands.try_recv() {
                if !self.handle(c) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            self.reap_abandoned();
            let output = self.scheduler.schedule();
            if !output.is_empty() {
                let logits = self.run_model(&output);
                self.postprocess(&output, logits);
            }
            self.publish_stats();
        }
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            self.fail_request(
                id,
                WickError::new(ErrorKind::Unavailable, "the engine is shutting down"),
            );
        }
        self.publish_stats();
    }

    /// Returns false on shutdown.
    fn handle(&mut self, command: Command) -> bool {
        let sub = match command {
            Command::Shutdown => return false,
            Command::FinishCompletion { id, index } => {
                self.finish_completion(id, index);
                return true;
            }
            Command::Submit(s) => s,
        };
        let Submission {
            id,
            request,
            events,
            arrival,
        } = *sub;
        let params = request.params;
        let seed = params.seed.unwrap_or_else(|| {
            arrival.elapsed().as_nanos() as u64 ^ id.0.wrapping_mul(0x9E37_79B9)
        });
        for index in 0..params.n {
            let seq_id = SeqId::new(id, index as u32);
            let seq = Sequence::new(seq_id, request.prompt_token_ids.clone(), params.max_tokens);
            if let Err(e) = self.scheduler.add_request(seq) {
                self.scheduler.abort_request(id);
                self.queued.fetch_sub(1, Ordering::SeqCst);
                let _ = events.send(TokenEvent::Error(e));
                return true;
            }
            self.seq_states.insert(
                seq_id,
                SeqSamplingState::new(seed, index, &request.prompt_token_ids, &params),
            );
        }
        let mut stop_ids = params.stop_token_ids.clone();
        if !params.ignore_eos {
            stop_ids.extend(&self.info.eos_token_ids);
        }
        self.requests.insert(
            id,
            Active {
                events,
                stop_ids,
                arrival,
                started: None,
                first_token: None,
                last_token: vec![None; params.n],
                unfinished: params.n,
                metrics: RequestMetrics {
                    prompt_tokens: request.prompt_token_ids.len(),
                    ..Default::default()
                },
                params,
            },
        );
        true
    }

    /// Ends one completion of a request early, as if it had sampled a stop token.
    fn finish_completion(&mut self, id: RequestId, index: usize) {
        let seq = SeqId::new(id, index as u32);
        if self.seq_states.remove(&seq).is_none() {
            return; // unknown, or already finished
        }
        self.scheduler.finish(seq, FinishReason::Stop);
        let Some(active) = self.requests.get_mut(&id) else {
            return;
        };
        active.unfinished = active.unfinished.saturating_sub(1);
        if active.unfinished == 0 {
            self.complete(id);
        }
    }

    /// Sends [`TokenEvent::Finished`] for a request whose completions have all ended.
    fn complete(&mut self, id: RequestId) {
        if let Some(mut active) = self.remove(id) {
            active.metrics.e2e_s = active.arrival.elapsed().as_secs_f64();
            let _ = active.events.send(TokenEvent::Finished(active.metrics));
        }
    }

    /// Aborts requests whose stream was dropped.
    fn reap_abandoned(&mut self) {
        let gone: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            tracing::debug!(request = %id, "client gone; aborting");
            self.remove(id);
        }
    }

    fn remove(&mut self, id: RequestId) -> Option<Active> {
        for seq in self.scheduler.abort_request(id) {
            self.seq_states.remove(&seq.id());
        }
        self.seq_states.retain(|s, _| s.request != id);
        let active = self.requests.remove(&id)?;
        if active.started.is_none() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        Some(active)
    }

    fn fail_request(&mut self, id: RequestId, error: WickError) {
        if let Some(a) = self.remove(id) {
            let _ = a.events.send(TokenEvent::Error(error));
        }
    }

    /// One forward pass; if it fails, each sequence alone, so a failure stays with its
    /// own request. Returns a logits row per scheduled sequence (`None`: failed).
    fn run_model(&mut self, output: &SchedulerOutput) -> Vec<Option<Vec<f32>>> {
        let now = Instant::now();
        for s in &output.scheduled {
            if let Some(a) = self.requests.get_mut(&s.seq.request) {
                if a.started.is_none() {
                    a.started = Some(now);
                    a.metrics.queue_time_s = now.duration_since(a.arrival).as_secs_f64();
                    a.metrics.cached_tokens = s.num_computed_tokens;
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        self.steps += 1;
        self.computed_tokens += output.total_num_scheduled_tokens as u64;
        match self.runner.run_step(output) {
            Ok(rows) => rows.into_iter().map(Some).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "batch failed; retrying its sequences one by one");
                let mut rows = Vec::with_capacity(output.scheduled.len());
                for s in &output.scheduled {
                    match self.runner.run(&[s]) {
                        Ok(mut r) => rows.push(r.pop()),
                        Err(e) => {
                            self.scheduler.fail_step(&SchedulerOutput {
                                scheduled: vec![s.clone()],
                                ..Default::default()
                            });
                            self.fail_request(
                                s.seq.request,
                                WickError::internal(format!("model step failed: {e}")),
                            );
                            rows.push(None);
                        }
                    }
                }
                rows
            }
        }
    }

    /// Samples, advances the scheduler and sends events.
    fn postprocess(&mut self, output: &SchedulerOutput, logits: Vec<Option<Vec<f32>>>) {
        let mut sampled = Vec::new();
        let mut logprobs = HashMap::new();
        for (s, row) in output.scheduled.iter().zip(&logits) {
            let (true, Some(row)) = (s.sample, row) else {
                continue;
            };
            let (Some(active), Some(state)) = (
                self.requests.get(&s.seq.request),
                self.seq_states.get_mut(&s.seq),
            ) else {
                continue;
            };
            let r = sample_row(
                row,
                &active.params,
                state,
                &active.stop_ids,
                &mut self.scratch,
            );
            sampled.push((s.seq, r.token));
            logprobs.insert(s.seq, r.logprobs);
        }
        let now = Instant::now();
        for u in self.scheduler.update_from_output(output, &sampled) {
            let Some(active) = self.requests.get_mut(&u.seq.request) else {
                continue;
            };
            let generated = self
                .seq_states
                .get(&u.seq)
                .map(|s| s.num_generated)
                .unwrap_or(0);
            let is_stop =
                active.stop_ids.contains(&u.token) && generated >= active.params.min_tokens;
            let finish = if is_stop {
                if u.finish.is_none() {
                    self.scheduler.finish(u.seq, FinishReason::Stop);
                }
                Some(FinishReason::Stop)
            } else {
                u.finish
            };
            let index = u.seq.index as usize;
            if active.first_token.is_none() {
                active.first_token = Some(now);
                active.metrics.ttft_s = now.duration_since(active.arrival).as_secs_f64();
            }
            if let Some(Some(last)) = active.last_token.get(index) {
                active
                    .metrics
                    .inter_token_s
                    .push(now.duration_since(*last).as_secs_f64());
            }
            if let Some(slot) = active.last_token.get_mut(index) {
                *slot = Some(now);
            }
            active.metrics.generation_tokens += 1;
            let _ = active.events.send(TokenEvent::Token {
                index,
                id: u.token,
                logprobs: logprobs.remove(&u.seq).flatten(),
                finish_reason: finish,
            });
            if finish.is_some() {
                self.seq_states.remove(&u.seq);
                active.unfinished = active.unfinished.saturating_sub(1);
                if active.unfinished == 0 {
                    self.complete(u.seq.request);
                }
            }
        }
        for seq in &output.preempted {
            if let Some(a) = self.requests.get_mut(&seq.request) {
                a.metrics.preemptions += 1;
            }
        }
    }

    fn publish_stats(&self) {
        let s = self.scheduler.stats();
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
            };
        }
    }
}

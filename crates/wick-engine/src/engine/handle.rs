//! [`EngineHandle`]: starts the engine thread and talks to it through a channel of
//! commands; [`RequestStream`]: one request's events, whose drop cancels the request.
//!
//! Submit checks everything that can be refused at once (parameters, token ids, the
//! context limit via [`EngineInfo::check_context`], a full waiting queue, a dead
//! engine) so that a refused request never reaches the loop.

use super::engine_loop::EngineLoop;
use super::health::{EngineHealth, Monitor};
use super::lora::{LoraEntry, LoraRegistry};
use super::queue::{QueuePermit, WaitingQueue};
use super::{
    gpu_memory, token_budget, EngineConfig, EngineInfo, EngineRequest, EngineStats,
    DEFAULT_KV_CACHE_MEMORY,
};
use crate::runner::ModelRunner;
use crate::scheduler::{Scheduler, SchedulerConfig};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use wick_core::{ErrorKind, RequestId, TokenEvent, WickError};
use wick_models::{KvCache, LoraAdapter, Model, ModelConfig};

/// What the handles ask of the loop.
pub(crate) enum Command {
    Submit(Box<Submission>),
    /// Completion `index` of a request is done (the frontend saw a stop string).
    FinishCompletion {
        id: RequestId,
        index: usize,
    },
    Shutdown,
}

/// A request accepted by submit, on its way to the loop.
pub(crate) struct Submission {
    pub(crate) id: RequestId,
    pub(crate) request: EngineRequest,
    pub(crate) events: UnboundedSender<TokenEvent>,
    pub(crate) arrival: Instant,
    /// Its place in the waiting queue; dropped with the submission if it never starts.
    pub(crate) permit: QueuePermit,
    /// Its LoRA adapter, held until the request ends.
    pub(crate) lora: Option<Arc<LoraEntry>>,
}

/// The events of one request; drop it to abort the request. Also a
/// [`futures_util::Stream`] of the same events.
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

impl futures_util::Stream for RequestStream {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    info: Arc<EngineInfo>,
    stats: Arc<Mutex<EngineStats>>,
    next_id: Arc<AtomicU64>,
    queue: WaitingQueue,
    monitor: Arc<Monitor>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    loras: Arc<LoraRegistry>,
    model_config: Arc<ModelConfig>,
    max_loras: usize,
    max_lora_rank: usize,
}

impl EngineHandle {
    /// Sizes the KV cache, then starts the engine thread over `model`.
    pub fn start(
        mut model: Model,
        eos_token_ids: Vec<u32>,
        config: EngineConfig,
    ) -> Result<Self, WickError> {
        let cfg = model.config().clone();
        if config.max_loras > 0 {
            model
                .enable_lora(config.max_loras)
                .map_err(|e| WickError::internal(format!("cannot enable LoRA: {e}")))?;
        }
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
        let utilization = config.gpu_memory_utilization;
        if !(utilization > 0.0 && utilization <= 1.0) {
            return Err(WickError::invalid_param(
                "gpu_memory_utilization",
                format!("{utilization} is not in (0, 1]"),
            ));
        }
        let on_cpu = model.device().is_cpu();
        let memory = match config.kv_cache_memory {
            Some(bytes) => bytes,
            None => {
                // The GPU's budget is known before the cache: the flag's, or the default.
                let budget =
                    (config.max_num_batched_tokens).unwrap_or(token_budget::DEVICE_TOKEN_BUDGET);
                gpu_memory::kv_cache_bytes_from_device(
                    &model,
                    config.block_size,
                    budget,
                    max_model_len,
                    utilization,
                    config.cuda_graphs.then_some(config.max_num_seqs),
                )?
                .unwrap_or(DEFAULT_KV_CACHE_MEMORY)
            }
        };
        let cache = KvCache::with_memory(
            &cfg,
            config.block_size,
            memory,
            model.dtype(),
            model.device(),
        )
        .map_err(|e| WickError::invalid_param("kv_cache_memory", e))?;
        let (num_blocks, block_size) = (cache.num_blocks, cache.block_size);
        let kv_cache_bytes = num_blocks * KvCache::bytes_per_block(&cfg, block_size, model.dtype());
        let weight_bytes = model.weight_bytes().to_string();
        let mut runner = ModelRunner::new(model, cache);
        if config.cuda_graphs {
            runner.enable_graphs();
            match on_cpu {
                true => tracing::info!(
                    "graphs on the CPU: decode steps are padded and rerun as a CUDA graph \
                     would replay them (for tests; no speedup)"
                ),
                false => {
                    tracing::info!("CUDA graphs on: decode steps captured per shape on first use")
                }
            }
        }
        let max_num_batched_tokens = match config.max_num_batched_tokens {
            Some(n) => n,
            None if on_cpu => {
                let cost = token_budget::measure(&mut runner, block_size)
                    .map_err(|e| WickError::internal(format!("cannot time a step: {e}")))?;
                let budget = cost.cpu_budget(block_size);
                tracing::info!(
                    decode_ms = cost.decode.as_secs_f64() * 1e3,
                    prefill_ms_per_token = cost.per_token.as_secs_f64() * 1e3,
                    max_num_batched_tokens = budget,
                    "token budget chosen from the measured step cost (CPU)"
                );
                budget
            }
            None => token_budget::DEVICE_TOKEN_BUDGET,
        };
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_batched_tokens,
            max_num_seqs: config.max_num_seqs,
            max_model_len,
            block_size: config.block_size,
            num_blocks,
            enable_prefix_caching: config.enable_prefix_caching,
            long_prefill_token_threshold: None,
            max_loras: config.max_loras,
        })?;
        runner
            .reserve_inputs(max_num_batched_tokens, config.max_num_seqs, max_model_len)
            .map_err(|e| WickError::internal(format!("cannot allocate step inputs: {e}")))?;
        let info = Arc::new(EngineInfo {
            max_model_len,
            vocab_size: cfg.vocab_size,
            num_blocks,
            block_size,
            eos_token_ids,
            max_num_batched_tokens,
        });
        tracing::info!(
            num_blocks,
            block_size,
            kv_cache_bytes,
            weight_bytes = %weight_bytes,
            max_model_len,
            max_num_seqs = config.max_num_seqs,
            max_num_batched_tokens,
            max_concurrency_at_max_model_len = format!("{:.2}", info.max_concurrency_at(max_model_len)),
            "KV cache allocated"
        );
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let monitor = Arc::new(Monitor::new(config.stall_timeout));
        let engine = EngineLoop::new(
            runner,
            scheduler,
            info.clone(),
            stats.clone(),
            monitor.clone(),
            config.fault,
        );
        let thread = std::thread::Builder::new()
            .name("wick-engine".into())
            .spawn(move || engine.run_guarded(rx))
            .map_err(|e| WickError::internal(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            commands: tx,
            info,
            stats,
            next_id: Arc::new(AtomicU64::new(1)),
            queue: WaitingQueue::new(config.max_waiting),
            monitor,
            thread: Arc::new(Mutex::new(Some(thread))),
            loras: Arc::new(LoraRegistry::default()),
            model_config: Arc::new(cfg),
            max_loras: config.max_loras,
            max_lora_rank: config.max_lora_rank,
        })
    }

    /// Reads the LoRA adapter at `source` (a local PEFT directory or a hub id), checks it
    /// against the model, and offers it as `name`. Blocking (reads files). Refused
    /// (`InvalidRequest`, naming what is wrong) when LoRA is off, the name is taken, or the
    /// adapter does not fit the model or the server's limits.
    pub fn load_lora(&self, name: &str, source: &str) -> Result<Arc<LoraEntry>, WickError> {
        if self.max_loras == 0 {
            return Err(WickError::invalid_param(
                "lora_name",
                "LoRA adapters are not enabled on this server (--max-loras is 0)",
            ));
        }
        if self.loras.get(name).is_ok() {
            return Err(WickError::invalid_param(
                "lora_name",
                format!("an adapter named {name:?} is already loaded"),
            ));
        }
        let adapter = LoraAdapter::load(source, &self.model_config, self.max_lora_rank)
            .map_err(|e| WickError::invalid_param("lora_path", format!("{source}: {e}")))?;
        let entry = self.loras.add(name, source, adapter)?;
        tracing::info!(
            lora = name,
            source,
            rank = entry.adapter.rank,
            bytes = entry.adapter.num_bytes(),
            "LoRA adapter loaded"
        );
        Ok(entry)
    }

    /// Stops offering adapter `name` (`NotFound` if none): new requests for it are
    /// refused, requests in flight finish on it.
    pub fn unload_lora(&self, name: &str) -> Result<(), WickError> {
        self.loras.remove(name)?;
        tracing::info!(lora = name, "LoRA adapter unloaded");
        Ok(())
    }

    /// The adapters offered, by name.
    pub fn loras(&self) -> Vec<Arc<LoraEntry>> {
        self.loras.list()
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
        self.queue.len()
    }

    /// Whether the engine is alive and stepping: `Dead` once its thread has ended
    /// (panicked or shut down), `Stalled` when it has work but completed no step for
    /// [`EngineConfig::stall_timeout`]; an idle engine is `Healthy`.
    pub fn health(&self) -> EngineHealth {
        let finished = match self.thread.lock() {
            Ok(t) => t.as_ref().is_some_and(|t| t.is_finished()),
            Err(_) => false,
        };
        self.monitor.health(finished)
    }

    /// Checks `request` and queues it. Refused at once: invalid parameters or token ids
    /// (`InvalidRequest`), prompt + max_tokens beyond the context limit (`TooLong`, see
    /// [`EngineInfo::check_context`]), a full waiting queue (`Overloaded`), or a stopped
    /// engine (`Unavailable`).
    pub fn submit(&self, request: EngineRequest) -> Result<RequestStream, WickError> {
        if let Some(reason) = self.monitor.dead_reason() {
            return Err(WickError::new(
                ErrorKind::Unavailable,
                format!("the engine has stopped: {reason}"),
            ));
        }
        request.params.validate()?;
        let info = &self.info;
        if request.prompt_token_ids.is_empty() {
            return Err(WickError::new(
                ErrorKind::InvalidRequest,
                "the prompt is empty",
            ));
        }
        if let Some(bad) =
            (request.prompt_token_ids.iter()).find(|&&t| t as usize >= info.vocab_size)
        {
            return Err(WickError::invalid_param(
                "prompt",
                format!(
                    "token id {bad} is outside the vocabulary of {}",
                    info.vocab_size
                ),
            ));
        }
        info.check_context(request.prompt_token_ids.len(), request.params.max_tokens)?;
        let lora = match &request.lora {
            Some(name) => Some(self.loras.get(name)?),
            None => None,
        };
        let Some(permit) = self.queue.try_acquire() else {
            return Err(WickError::new(
                ErrorKind::Overloaded,
                format!(
                    "the server is overloaded: {} requests are already waiting",
                    self.queue.limit()
                ),
            ));
        };
        let id = RequestId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = unbounded_channel();
        let sub = Submission {
            id,
            request,
            events: tx,
            arrival: Instant::now(),
            permit,
            lora,
        };
        // On failure the submission, and with it the permit, is dropped here.
        if self.commands.send(Command::Submit(Box::new(sub))).is_err() {
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

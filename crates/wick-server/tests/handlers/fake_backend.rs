//! A fake [`Backend`] for handler tests: no model, no engine thread. Each submit is
//! recorded and answered by the next [`Script`] (scripted token events, a refusal, or an
//! endless generation); every stream it hands out reports when it is dropped, so a test
//! sees the server cancel a request.

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use wick_core::{FinishReason, RequestId, RequestMetrics, TokenEvent, WickError};
use wick_engine::{EngineHealth, EngineInfo, EngineRequest, EngineStats};
use wick_server::backend::{Backend, EventStream, RequestEvents};

/// What the next submit does.
pub enum Script {
    /// Streams these events, then ends.
    Events(Vec<TokenEvent>),
    /// Streams these events, then one more token (`id`) every few milliseconds until
    /// the stream is dropped: a long generation.
    Endless(Vec<TokenEvent>, u32),
    /// Refuses the request with this error.
    Refuse(WickError),
}

/// Events of completion 0: `ids` one by one, the last with `finish`, then `Finished`.
pub fn completion(ids: &[u32], finish: FinishReason) -> Vec<TokenEvent> {
    let mut events = choice_tokens(0, ids, finish);
    events.push(finished(ids.len()));
    events
}

/// Token events of completion `index`, the last with `finish`.
pub fn choice_tokens(index: usize, ids: &[u32], finish: FinishReason) -> Vec<TokenEvent> {
    let mut events = tokens(index, ids);
    if let Some(TokenEvent::Token { finish_reason, .. }) = events.last_mut() {
        *finish_reason = Some(finish);
    }
    events
}

/// Token events of completion `index`, none of them its last.
pub fn tokens(index: usize, ids: &[u32]) -> Vec<TokenEvent> {
    ids.iter()
        .map(|&id| TokenEvent::Token {
            index,
            id,
            logprobs: None,
            finish_reason: None,
        })
        .collect()
}

/// The `Finished` event of a request that generated `tokens` tokens.
pub fn finished(tokens: usize) -> TokenEvent {
    TokenEvent::Finished(RequestMetrics {
        generation_tokens: tokens,
        ..RequestMetrics::default()
    })
}

/// The fake backend.
pub struct FakeBackend {
    info: EngineInfo,
    health: Mutex<EngineHealth>,
    scripts: Mutex<VecDeque<Script>>,
    submitted: Mutex<Vec<EngineRequest>>,
    next_id: AtomicU64,
    /// Streams handed out and not yet dropped.
    live: Arc<AtomicUsize>,
    /// Streams dropped.
    dropped: Arc<AtomicUsize>,
    /// `finish_completion` calls: (request id, index).
    finished_completions: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl FakeBackend {
    /// A healthy backend with the given vocabulary size and context length.
    pub fn new(vocab_size: usize, max_model_len: usize, eos: u32) -> Self {
        Self {
            info: EngineInfo {
                max_model_len,
                vocab_size,
                num_blocks: 64,
                block_size: 16,
                eos_token_ids: vec![eos],
                max_num_batched_tokens: 2048,
            },
            health: Mutex::new(EngineHealth::Healthy),
            scripts: Mutex::new(VecDeque::new()),
            submitted: Mutex::new(vec![]),
            next_id: AtomicU64::new(1),
            live: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
            finished_completions: Arc::new(Mutex::new(vec![])),
        }
    }

    /// Queues what a later submit does (in order).
    pub fn script(&self, script: Script) {
        self.scripts.lock().unwrap().push_back(script);
    }

    /// Sets the health the backend reports (a dead backend also refuses submits).
    pub fn set_health(&self, health: EngineHealth) {
        *self.health.lock().unwrap() = health;
    }

    /// Every request submitted so far.
    pub fn submitted(&self) -> Vec<EngineRequest> {
        self.submitted.lock().unwrap().clone()
    }

    /// Streams still held by the server.
    pub fn live_streams(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Streams the server has dropped.
    pub fn dropped_streams(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Completions the server ended early (stop strings): (request id, index).
    pub fn finished_completions(&self) -> Vec<(u64, usize)> {
        self.finished_completions.lock().unwrap().clone()
    }
}

impl Backend for FakeBackend {
    fn submit(&self, request: EngineRequest) -> Result<EventStream, WickError> {
        if let EngineHealth::Dead { reason } = &*self.health.lock().unwrap() {
            return Err(WickError::new(
                wick_core::ErrorKind::Unavailable,
                format!("the engine has stopped: {reason}"),
            ));
        }
        self.info
            .check_context(request.prompt_token_ids.len(), request.params.max_tokens)?;
        self.submitted.lock().unwrap().push(request);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Script::Events(completion(&[3], FinishReason::Stop)));
        let events: BoxStream<'static, TokenEvent> = match script {
            Script::Refuse(e) => return Err(e),
            Script::Events(events) => stream::iter(events).boxed(),
            Script::Endless(events, id) => stream::iter(events)
                .chain(stream::unfold((), move |()| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let token = TokenEvent::Token {
                        index: 0,
                        id,
                        logprobs: None,
                        finish_reason: None,
                    };
                    Some((token, ()))
                }))
                .boxed(),
        };
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeStream {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            events,
            ending: AtomicBool::new(false),
            ended: false,
            live: self.live.clone(),
            dropped: self.dropped.clone(),
            finished_completions: self.finished_completions.clone(),
        }))
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }

    fn health(&self) -> EngineHealth {
        self.health.lock().unwrap().clone()
    }

    fn stats(&self) -> EngineStats {
        EngineStats::default()
    }

    fn shutdown(&self) {}
}

/// A scripted request stream that counts its own drop. `finish_completion` ends it as
/// the engine would: `Finished` next, then nothing.
struct FakeStream {
    id: u64,
    events: BoxStream<'static, TokenEvent>,
    ending: AtomicBool,
    ended: bool,
    live: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    finished_completions: Arc<Mutex<Vec<(u64, usize)>>>,
}

impl Stream for FakeStream {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.ending.load(Ordering::SeqCst) {
            self.ended = true;
            return Poll::Ready(Some(finished(0)));
        }
        self.events.poll_next_unpin(cx)
    }
}

impl RequestEvents for FakeStream {
    fn id(&self) -> RequestId {
        RequestId(self.id)
    }

    fn finish_completion(&self, index: usize) {
        self.ending.store(true, Ordering::SeqCst);
        self.finished_completions
            .lock()
            .unwrap()
            .push((self.id, index));
    }
}

impl Drop for FakeStream {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

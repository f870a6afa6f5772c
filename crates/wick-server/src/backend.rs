//! The one seam between HTTP and generation: the [`Backend`] trait. Handlers know only
//! this trait (submit a request -> a stream of [`TokenEvent`]s; fixed facts; health;
//! counters), so they are tested against a fake backend without a model or a process
//! (crates/wick-server/tests/handlers/fake_backend.rs). [`EngineHandle`] is the real one.
//!
//! A trait object (`Arc<dyn Backend>` in [`crate::state::Serving`]) rather than a generic
//! parameter: the router, the state and every handler stay non-generic, the dynamic
//! call happens once per request (submit) and once per event (a boxed stream), which is
//! nothing beside a model step, and tests swap the backend without monomorphising the
//! whole server twice.
//!
//! Invariants every implementation keeps: dropping the [`EventStream`] aborts the
//! request (its resources are freed); the stream ends after [`TokenEvent::Finished`] or
//! [`TokenEvent::Error`]; a backend that died answers `health()` with `Dead` and refuses
//! later submits.

use futures_util::Stream;
use wick_core::{RequestId, TokenEvent, WickError};
use wick_engine::{
    EngineHandle, EngineHealth, EngineInfo, EngineRequest, EngineStats, RequestStream,
};

/// The events of one submitted request; drop it to abort the request.
pub trait RequestEvents: Stream<Item = TokenEvent> + Send + Unpin {
    /// The request's id (for logs).
    fn id(&self) -> RequestId;

    /// Ends completion `index` now with finish reason `stop` (the server found a stop
    /// string); tokens it made meanwhile may still arrive and are ignored.
    fn finish_completion(&self, index: usize);
}

/// A boxed [`RequestEvents`].
pub type EventStream = Box<dyn RequestEvents>;

/// What the HTTP layer needs from the thing that generates.
pub trait Backend: Send + Sync + 'static {
    /// Queues `request`; refused at once (invalid, too long, overloaded, stopped) with
    /// the error to answer.
    fn submit(&self, request: EngineRequest) -> Result<EventStream, WickError>;

    /// Fixed facts: context length, vocabulary, eos ids, cache size.
    fn info(&self) -> &EngineInfo;

    /// Whether the backend is alive and making progress.
    fn health(&self) -> EngineHealth;

    /// The latest counters.
    fn stats(&self) -> EngineStats;

    /// Stops the backend; requests still in flight get an error event.
    fn shutdown(&self);

    /// The LoRA adapters offered, by name (requests name one in `model`).
    fn loras(&self) -> Vec<LoraInfo> {
        Vec::new()
    }

    /// Loads the adapter at `source` as `name` (blocking: reads files). Refused with a
    /// message saying why (LoRA off, name taken, adapter unreadable or unfit).
    fn load_lora(&self, name: &str, source: &str) -> Result<(), WickError> {
        let _ = source;
        Err(WickError::invalid_param(
            "lora_name",
            format!("{name}: this backend serves no LoRA adapters"),
        ))
    }

    /// Stops offering adapter `name`; requests in flight on it finish. `NotFound` if
    /// there is none.
    fn unload_lora(&self, name: &str) -> Result<(), WickError> {
        Err(WickError::new(
            wick_core::ErrorKind::NotFound,
            format!("the model `{name}` does not exist"),
        ))
    }
}

/// One offered LoRA adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraInfo {
    /// The name requests use.
    pub name: String,
    /// Where it was loaded from.
    pub source: String,
}

impl RequestEvents for RequestStream {
    fn id(&self) -> RequestId {
        RequestStream::id(self)
    }

    fn finish_completion(&self, index: usize) {
        RequestStream::finish_completion(self, index);
    }
}

impl Backend for EngineHandle {
    fn submit(&self, request: EngineRequest) -> Result<EventStream, WickError> {
        Ok(Box::new(EngineHandle::submit(self, request)?))
    }

    fn info(&self) -> &EngineInfo {
        EngineHandle::info(self)
    }

    fn health(&self) -> EngineHealth {
        EngineHandle::health(self)
    }

    fn stats(&self) -> EngineStats {
        EngineHandle::stats(self)
    }

    fn shutdown(&self) {
        EngineHandle::shutdown(self);
    }

    fn loras(&self) -> Vec<LoraInfo> {
        (EngineHandle::loras(self).iter())
            .map(|l| LoraInfo {
                name: l.name.clone(),
                source: l.source.clone(),
            })
            .collect()
    }

    fn load_lora(&self, name: &str, source: &str) -> Result<(), WickError> {
        EngineHandle::load_lora(self, name, source).map(|_| ())
    }

    fn unload_lora(&self, name: &str) -> Result<(), WickError> {
        EngineHandle::unload_lora(self, name)
    }
}

//! Whether the engine is alive and stepping: [`EngineHealth`], computed on demand by
//! [`super::EngineHandle::health`] from a `Monitor` the loop writes and the thread's
//! join handle.
//!
//! Invariants: an engine with no work (nothing running, waiting or submitted) is never
//! stalled, however long ago its last step was; the loop restarts the stall clock when it
//! picks up work after idling, so a request arriving at an idle engine is not stalled on
//! arrival. Dead is final: once the loop has ended (shutdown or panic) the reason is set
//! before any in-flight request is failed, so submits refuse from then on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether the engine can serve.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineHealth {
    /// Alive, and stepping whenever it has work.
    Healthy,
    /// Has work but completed no step for `secs` seconds (at least the stall timeout).
    Stalled {
        /// Seconds since the last completed step (or since the work arrived).
        secs: f64,
    },
    /// The engine thread has ended; nothing will be served again.
    Dead {
        /// Why: the panic message, or that it was shut down.
        reason: String,
    },
}

impl EngineHealth {
    /// Whether it is [`EngineHealth::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy)
    }
}

impl std::fmt::Display for EngineHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Healthy => write!(f, "healthy"),
            Self::Stalled { secs } => write!(f, "the engine made no progress for {secs:.1} s"),
            Self::Dead { reason } => write!(f, "the engine stopped: {reason}"),
        }
    }
}

/// What the loop tells the handles about its progress.
#[derive(Debug)]
pub(crate) struct Monitor {
    /// Set once, when the loop has ended: why.
    dead: Mutex<Option<String>>,
    /// Whether the loop holds work (running or waiting sequences, or is inside a step).
    busy: AtomicBool,
    /// Nanoseconds after `epoch` of the last progress: a completed step, or picking up
    /// work after idling.
    last_progress_ns: AtomicU64,
    epoch: Instant,
    stall_timeout: Duration,
}

impl Monitor {
    /// A live, idle engine's monitor.
    pub(crate) fn new(stall_timeout: Duration) -> Self {
        Self {
            dead: Mutex::new(None),
            busy: AtomicBool::new(false),
            last_progress_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            stall_timeout,
        }
    }

    /// Records progress now (a step completed, or work picked up after idling).
    pub(crate) fn progress(&self) {
        let ns = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_progress_ns.store(ns, Ordering::SeqCst);
    }

    /// Whether the loop has work. Becoming busy restarts the stall clock first.
    pub(crate) fn set_busy(&self, busy: bool) {
        if busy && !self.busy.load(Ordering::SeqCst) {
            self.progress();
        }
        self.busy.store(busy, Ordering::SeqCst);
    }

    /// Marks the engine dead for `reason` (the first reason wins).
    pub(crate) fn set_dead(&self, reason: String) {
        if let Ok(mut dead) = self.dead.lock() {
            dead.get_or_insert(reason);
        }
    }

    /// The reason it died, if it did.
    pub(crate) fn dead_reason(&self) -> Option<String> {
        match self.dead.lock() {
            Ok(dead) => dead.clone(),
            Err(_) => Some("the engine's health state is poisoned".into()),
        }
    }

    /// Health now; `thread_finished`: whether the engine thread has exited.
    pub(crate) fn health(&self, thread_finished: bool) -> EngineHealth {
        if let Some(reason) = self.dead_reason() {
            return EngineHealth::Dead { reason };
        }
        if thread_finished {
            return EngineHealth::Dead {
                reason: "the engine thread exited".into(),
            };
        }
        if !self.busy.load(Ordering::SeqCst) {
            return EngineHealth::Healthy;
        }
        let last = Duration::from_nanos(self.last_progress_ns.load(Ordering::SeqCst));
        let since = self.epoch.elapsed().saturating_sub(last);
        if since >= self.stall_timeout {
            EngineHealth::Stalled {
                secs: since.as_secs_f64(),
            }
        } else {
            EngineHealth::Healthy
        }
    }
}

/// The message of a caught panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_never_stalled_busy_without_progress_is() {
        let m = Monitor::new(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(m.health(false), EngineHealth::Healthy, "idle");
        m.set_busy(true);
        assert_eq!(m.health(false), EngineHealth::Healthy, "work just arrived");
        std::thread::sleep(Duration::from_millis(40));
        let h = m.health(false);
        assert!(
            matches!(h, EngineHealth::Stalled { secs } if secs >= 0.02),
            "{h:?}"
        );
        assert!(h.to_string().contains("no progress"));
        m.progress();
        assert!(m.health(false).is_healthy());
        m.set_dead("boom".into());
        m.set_dead("later".into());
        let h = m.health(false);
        assert_eq!(h.to_string(), "the engine stopped: boom");
        assert!(!h.is_healthy());
    }

    #[test]
    fn panic_payloads_become_messages() {
        let p = std::panic::catch_unwind(|| std::panic::panic_any("static")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "static");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(format!("n={}", 3))).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "n=3");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(5u8)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "a panic without a message");
    }
}

//! The load generator: warm-up, then a closed loop (N workers, each starting the next
//! request when its last one ends) or an open loop (arrivals at a Poisson or constant
//! rate, optionally capped in flight), until the request count or the duration is
//! reached, or the run is cancelled.
//!
//! Invariants: no request starts after the duration, the count, or cancellation; every
//! started request ends by its own timeout or on cancellation, so a run always returns;
//! live counters are updated as each request ends, for the progress line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cancel::CancelToken;
use crate::client::{Client, Outcome, RequestRecord, StreamOpts};
use crate::config::LoadSpec;
use crate::workload::WorkItem;

/// Counters the progress line reads while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Requests started (counted phase).
    pub started: AtomicUsize,
    /// Requests ended successfully.
    pub ok: AtomicUsize,
    /// Requests failed.
    pub failed: AtomicUsize,
    /// Output tokens of ended requests.
    pub output_tokens: AtomicU64,
    records: Mutex<Vec<RequestRecord>>,
}

impl Live {
    fn push(&self, rec: RequestRecord) {
        match rec.outcome {
            Outcome::Ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed { .. } => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Cancelled => {}
        }
        self.output_tokens
            .fetch_add(rec.output_tokens, Ordering::Relaxed);
        if let Ok(mut v) = self.records.lock() {
            v.push(rec);
        }
    }

    fn take(&self) -> Vec<RequestRecord> {
        let mut v = self
            .records
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        v.sort_by_key(|r| r.index);
        v
    }
}

/// Everything one phase needs, shared by its tasks.
#[derive(Clone)]
pub struct Phase {
    /// Endpoint.
    pub client: Client,
    /// Requests, used in order (cycled when the count or duration needs more).
    pub items: Arc<Vec<WorkItem>>,
    /// Request options.
    pub opts: Arc<StreamOpts>,
    /// Cancellation (Ctrl-C).
    pub cancel: CancelToken,
}

/// What a phase measured.
#[derive(Debug)]
pub struct PhaseResult {
    /// One record per started request, in start order.
    pub records: Vec<RequestRecord>,
    /// Wall time from the phase's start to its last request's end.
    pub duration: Duration,
    /// The phase's start (the origin of the records' `start_s`), in seconds since the Unix
    /// epoch.
    pub started_unix_s: f64,
    /// True when cancellation cut the phase short.
    pub interrupted: bool,
}

/// Runs a phase: at most `max_requests` requests, none started after `duration`.
pub async fn run_phase(
    phase: &Phase,
    load: LoadSpec,
    max_requests: Option<usize>,
    duration: Option<Duration>,
    seed: u64,
    live: Arc<Live>,
) -> PhaseResult {
    let start = Instant::now();
    let started_unix_s = unix_now();
    let deadline = duration.map(|d| start + d);
    let limit = max_requests.unwrap_or(usize::MAX);
    let may_start = move |i: usize, cancel: &CancelToken| {
        i < limit && !cancel.is_cancelled() && deadline.is_none_or(|d| Instant::now() < d)
    };
    let mut tasks = JoinSet::new();
    match load {
        LoadSpec::Closed { concurrency } => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..concurrency.max(1) {
                let (phase, next, live) = (phase.clone(), next.clone(), live.clone());
                tasks.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if !may_start(i, &phase.cancel) {
                            break;
                        }
                        live.started.fetch_add(1, Ordering::Relaxed);
                        live.push(one(&phase, i, start).await);
                    }
                });
            }
        }
        LoadSpec::Open {
            rate,
            poisson,
            max_concurrency,
        } => {
            let slots = max_concurrency.map(|n| Arc::new(Semaphore::new(n.max(1))));
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_a771);
            let mut at = start;
            let mut i = 0;
            loop {
                if !may_start(i, &phase.cancel) {
                    break;
                }
                let wait = tokio::time::sleep_until(tokio::time::Instant::from_std(at));
                let stop = deadline.map(tokio::time::Instant::from_std);
                tokio::select! {
                    _ = wait => {}
                    _ = phase.cancel.cancelled() => break,
                    _ = async { match stop { Some(s) => tokio::time::sleep_until(s).await, None => std::future::pending().await } } => break,
                }
                let permit = match &slots {
                    Some(s) => tokio::select! {
                        p = s.clone().acquire_owned() => p.ok(),
                        _ = phase.cancel.cancelled() => break,
                    },
                    None => None,
                };
                if !may_start(i, &phase.cancel) {
                    break;
                }
                let (p, live) = (phase.clone(), live.clone());
                live.started.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let rec = one(&p, i, start).await;
                    drop(permit);
                    live.push(rec);
                });
                i += 1;
                at += next_gap(rate, poisson, &mut rng);
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    PhaseResult {
        records: live.take(),
        duration: start.elapsed(),
        started_unix_s,
        interrupted: phase.cancel.is_cancelled(),
    }
}

/// Seconds since the Unix epoch (0 for a clock set before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

async fn one(phase: &Phase, i: usize, start: Instant) -> RequestRecord {
    let item = &phase.items[i % phase.items.len().max(1)];
    let streamed = phase.opts.streamed(i);
    phase
        .client
        .send(i, item, &phase.opts, streamed, start, &phase.cancel)
        .await
}

/// The gap before the next arrival: exponential with mean `1/rate` (Poisson arrivals) or
/// exactly `1/rate`; zero for an infinite or non-positive rate (all at once).
pub fn next_gap(rate: f64, poisson: bool, rng: &mut StdRng) -> Duration {
    if !rate.is_finite() || rate <= 0.0 {
        return Duration::ZERO;
    }
    let gap = if poisson {
        let u: f64 = rng.random();
        -(1.0 - u).ln() / rate
    } else {
        1.0 / rate
    };
    Duration::from_secs_f64(gap.min(3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_gaps_average_one_over_rate_and_constant_gaps_are_constant() {
        let mut rng = StdRng::seed_from_u64(3);
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|_| next_gap(4.0, true, &mut rng).as_secs_f64())
            .sum::<f64>()
            / n as f64;
        assert!((mean - 0.25).abs() < 0.01, "{mean}");
        assert_eq!(next_gap(4.0, false, &mut rng), Duration::from_millis(250));
        assert_eq!(next_gap(f64::INFINITY, true, &mut rng), Duration::ZERO);
    }
}

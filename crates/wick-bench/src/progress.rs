//! The live progress line on stderr: a bar (by request count, or by time for
//! `--duration` runs), running request and token throughput, errors, elapsed time.
//!
//! Invariant: drawing never blocks or fails the run; `finish` clears the line before the
//! report is printed.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::runner::Live;

/// A running progress line.
pub struct Progress {
    task: JoinHandle<()>,
}

/// The text of one progress line.
pub fn line(
    label: &str,
    live: &Live,
    elapsed: Duration,
    total: Option<usize>,
    duration: Option<Duration>,
) -> String {
    let ok = live.ok.load(Ordering::Relaxed);
    let failed = live.failed.load(Ordering::Relaxed);
    let started = live.started.load(Ordering::Relaxed);
    let tokens = live.output_tokens.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let done = ok + failed;
    let frac = match (total, duration) {
        (_, Some(d)) => elapsed.as_secs_f64() / d.as_secs_f64().max(1e-3),
        (Some(t), None) => done as f64 / t.max(1) as f64,
        (None, None) => 0.0,
    }
    .clamp(0.0, 1.0);
    let width = 24;
    let filled = (frac * width as f64).round() as usize;
    let count = total.map_or(format!("{done}"), |t| format!("{done}/{t}"));
    format!(
        "{label} [{}{}] {count} done, {} in flight | {:.2} req/s | {:.1} tok/s | {failed} errors | {:.1}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        started.saturating_sub(done),
        ok as f64 / secs,
        tokens as f64 / secs,
        secs
    )
}

impl Progress {
    /// Starts redrawing every 250 ms.
    pub fn start(
        label: String,
        live: Arc<Live>,
        total: Option<usize>,
        duration: Option<Duration>,
    ) -> Self {
        let start = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let text = line(&label, &live, start.elapsed(), total, duration);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{text}");
                let _ = err.flush();
            }
        });
        Progress { task }
    }

    /// Stops and clears the line.
    pub fn finish(self) {
        self.task.abort();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_counts_rates_and_a_bar() {
        let live = Live::default();
        live.started.store(12, Ordering::Relaxed);
        live.ok.store(8, Ordering::Relaxed);
        live.failed.store(2, Ordering::Relaxed);
        live.output_tokens.store(400, Ordering::Relaxed);
        let l = line("c=4", &live, Duration::from_secs(4), Some(20), None);
        assert!(l.contains("10/20 done, 2 in flight"), "{l}");
        assert!(
            l.contains("2.00 req/s") && l.contains("100.0 tok/s") && l.contains("2 errors"),
            "{l}"
        );
        assert!(
            l.contains(&format!("[{}{}]", "#".repeat(12), "-".repeat(12))),
            "{l}"
        );
    }
}

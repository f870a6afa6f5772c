//! Shared by the engine's integration tests.

use std::time::{Duration, Instant};
use wick_engine::{EngineHandle, EngineStats};

/// Polls the engine's counters (published after each step) until `done` holds; fails
/// after two minutes.
pub fn wait_for(engine: &EngineHandle, done: impl Fn(&EngineStats) -> bool) -> EngineStats {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = engine.stats();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "engine never settled: {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

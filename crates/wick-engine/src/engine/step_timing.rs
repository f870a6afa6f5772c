//! Where a step's time goes: the engine loop marks each [`StepPhase`] of the step that
//! runs; at its end the phases go into histograms (the `/metrics` page) and one debug
//! log line (target `wick_engine::step`).

use super::{DurationHistogram, StepPhase, StepPhaseHistograms};
use std::time::{Duration, Instant};

/// The timings of the steps run so far, and of the one running.
#[derive(Debug, Default)]
pub(crate) struct StepTiming {
    /// Whole steps.
    pub step_duration: DurationHistogram,
    /// Each phase of each step.
    pub phase_duration: StepPhaseHistograms,
    /// Bytes read back from the model's device, all steps.
    pub device_to_host_bytes: u64,
    /// The running step's time per phase.
    current: [Duration; 5],
    /// The running step's bytes read back.
    current_bytes: u64,
}

impl StepTiming {
    /// A step begins.
    pub fn begin(&mut self) {
        self.current = [Duration::ZERO; 5];
        self.current_bytes = 0;
    }

    /// Adds the time since `since` to `phase` of the running step.
    pub fn add(&mut self, phase: StepPhase, since: Instant) {
        self.current[phase as usize] += since.elapsed();
    }

    /// The running step read `bytes` back from the device.
    pub fn add_bytes(&mut self, bytes: u64) {
        self.current_bytes += bytes;
    }

    /// The running step, begun at `started`, ends: its figures go into the histograms
    /// and the debug log.
    pub fn end(&mut self, started: Instant, step: u64, seqs: usize, sampled: usize, tokens: usize) {
        self.step_duration.observe(started.elapsed().as_secs_f64());
        for phase in StepPhase::ALL {
            let secs = self.current[phase as usize].as_secs_f64();
            self.phase_duration.observe(phase, secs);
        }
        self.device_to_host_bytes += self.current_bytes;
        let us = |p: StepPhase| self.current[p as usize].as_micros() as u64;
        tracing::debug!(
            target: "wick_engine::step",
            step,
            seqs,
            sampled,
            tokens,
            schedule_us = us(StepPhase::Schedule),
            prepare_inputs_us = us(StepPhase::PrepareInputs),
            forward_us = us(StepPhase::Forward),
            sample_us = us(StepPhase::Sample),
            postprocess_us = us(StepPhase::Postprocess),
            device_to_host_bytes = self.current_bytes,
            "step"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_adds_one_observation_per_phase_and_its_bytes() {
        let mut t = StepTiming::default();
        for bytes in [100, 20] {
            let started = Instant::now();
            t.begin();
            t.add(StepPhase::Forward, started);
            t.add_bytes(bytes);
            t.end(started, 1, 2, 1, 3);
        }
        assert_eq!(t.step_duration.count, 2);
        for phase in StepPhase::ALL {
            assert_eq!(t.phase_duration.get(phase).count, 2, "{}", phase.name());
        }
        assert_eq!(t.device_to_host_bytes, 120);
        // A phase is never longer than the step it is part of.
        assert!(t.phase_duration.get(StepPhase::Forward).sum <= t.step_duration.sum);
    }
}

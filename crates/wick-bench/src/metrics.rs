//! The server's own count of the run: Prometheus `/metrics` read before and after the
//! counted phase, so a report can set the server's token and request counts beside the
//! client's.
//!
//! Counters are found by suffix (`generation_tokens_total`, `prompt_tokens_total`,
//! `request_success_total`), so wick's `wick:` names and vLLM's `vllm:` names both work;
//! all label sets of a name are summed. wick's engine figures (steps, time per step
//! phase, bytes read back from the device) are read too when the server has them.

use serde::Serialize;

/// Counter totals read from one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counters {
    /// Sum of `*generation_tokens_total`.
    pub generation_tokens: f64,
    /// Sum of `*prompt_tokens_total`.
    pub prompt_tokens: f64,
    /// Sum of `*request_success_total`.
    pub requests: f64,
    /// `wick:engine_steps_total`.
    pub engine_steps: f64,
    /// `wick:engine_device_to_host_bytes_total`.
    pub device_to_host_bytes: f64,
    /// `wick:engine_step_phase_duration_seconds_sum` of each of [`STEP_PHASES`].
    pub phase_seconds: [f64; 5],
}

/// The phases of a wick engine step (the `phase` label), in order.
pub const STEP_PHASES: [&str; 5] = [
    "schedule",
    "prepare_inputs",
    "forward",
    "sample",
    "postprocess",
];

impl Counters {
    /// Reads the counters from Prometheus text; `None` when none of them is present.
    pub fn parse(text: &str) -> Option<Self> {
        let mut c = Counters::default();
        let mut found = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name_labels, rest) = match line.find('{') {
                Some(b) => match line[b..].find('}') {
                    Some(e) => (&line[..b], &line[b + e + 1..]),
                    None => continue,
                },
                None => match line.split_once(char::is_whitespace) {
                    Some((n, r)) => (n, r),
                    None => continue,
                },
            };
            let Some(value) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            let phase = || {
                let labels = line.split_once('{')?.1.split_once('}')?.0;
                let i = STEP_PHASES
                    .iter()
                    .position(|p| labels.contains(&format!("phase=\"{p}\"")))?;
                Some(i)
            };
            let slot = if name_labels.ends_with("generation_tokens_total") {
                &mut c.generation_tokens
            } else if name_labels.ends_with("prompt_tokens_total") {
                &mut c.prompt_tokens
            } else if name_labels.ends_with("request_success_total") {
                &mut c.requests
            } else if name_labels == "wick:engine_steps_total" {
                &mut c.engine_steps
            } else if name_labels == "wick:engine_device_to_host_bytes_total" {
                &mut c.device_to_host_bytes
            } else if name_labels == "wick:engine_step_phase_duration_seconds_sum" {
                match phase() {
                    Some(i) => &mut c.phase_seconds[i],
                    None => continue,
                }
            } else {
                continue;
            };
            *slot += value;
            found = true;
        }
        found.then_some(c)
    }

    /// `after - self`.
    pub fn delta(&self, after: &Counters) -> Counters {
        Counters {
            generation_tokens: after.generation_tokens - self.generation_tokens,
            prompt_tokens: after.prompt_tokens - self.prompt_tokens,
            requests: after.requests - self.requests,
            engine_steps: after.engine_steps - self.engine_steps,
            device_to_host_bytes: after.device_to_host_bytes - self.device_to_host_bytes,
            phase_seconds: std::array::from_fn(|i| after.phase_seconds[i] - self.phase_seconds[i]),
        }
    }

    /// wick's engine figures per step, when these are deltas over steps: milliseconds
    /// in each of [`STEP_PHASES`], and bytes read back from the device.
    pub fn per_step(&self) -> Option<([f64; 5], f64)> {
        (self.engine_steps > 0.0).then(|| {
            let ms = self.phase_seconds.map(|s| s * 1e3 / self.engine_steps);
            (ms, self.device_to_host_bytes / self.engine_steps)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_label_sets_and_takes_deltas() {
        let before =
            "# HELP wick:generation_tokens_total x\n# TYPE wick:generation_tokens_total counter\n\
                      wick:generation_tokens_total 10\nwick:prompt_tokens_total 100\n\
                      wick:request_success_total{finished_reason=\"length\"} 2\n\
                      wick:request_success_total{finished_reason=\"stop\"} 1\nother_total 5\n";
        let after = "vllm:generation_tokens_total{model_name=\"m\"} 74 1700000000\n\
                     vllm:prompt_tokens_total{model_name=\"m\"} 612\n\
                     vllm:request_success_total{finished_reason=\"length\"} 9\n";
        let b = Counters::parse(before).unwrap();
        assert_eq!(
            (b.generation_tokens, b.prompt_tokens, b.requests),
            (10.0, 100.0, 3.0)
        );
        let d = b.delta(&Counters::parse(after).unwrap());
        assert_eq!(
            (d.generation_tokens, d.prompt_tokens, d.requests),
            (64.0, 512.0, 6.0)
        );
        assert_eq!(Counters::parse("up 1\n"), None);
        assert_eq!(b.per_step(), None, "no engine figures in either");
    }

    #[test]
    fn reads_wicks_engine_steps_phases_and_bytes() {
        let text = |steps: u32, fwd: f64| {
            format!(
                "wick:engine_steps_total{{model_name=\"m\"}} {steps}\n\
                 wick:engine_device_to_host_bytes_total{{model_name=\"m\"}} {}\n\
                 wick:engine_step_phase_duration_seconds_sum{{model_name=\"m\",phase=\"forward\"}} {fwd}\n\
                 wick:engine_step_phase_duration_seconds_count{{model_name=\"m\",phase=\"forward\"}} {steps}\n\
                 wick:engine_step_phase_duration_seconds_sum{{model_name=\"m\",phase=\"sample\"}} 0.5\n\
                 wick:generation_tokens_total{{model_name=\"m\"}} 1\n",
                steps * 1000
            )
        };
        let before = Counters::parse(&text(10, 1.0)).unwrap();
        let d = before.delta(&Counters::parse(&text(30, 3.0)).unwrap());
        let (ms, bytes) = d.per_step().unwrap();
        assert_eq!(d.engine_steps, 20.0);
        assert!(
            (ms[2] - 100.0).abs() < 1e-9,
            "forward: 2 s over 20 steps: {ms:?}"
        );
        assert_eq!(
            (ms[0], ms[3]),
            (0.0, 0.0),
            "schedule absent, sample unchanged"
        );
        assert_eq!(bytes, 1000.0);
    }

    #[test]
    fn reads_wick_exposition_from_prometheus_client() {
        // As wick-server renders it (prometheus-client, text format 0.0.4).
        let text = "# HELP wick:prompt_tokens_total Prompt tokens processed.\n\
            # TYPE wick:prompt_tokens_total counter\n\
            wick:prompt_tokens_total{model_name=\"smol\"} 15\n\
            # HELP wick:generation_tokens_total Tokens generated.\n\
            # TYPE wick:generation_tokens_total counter\n\
            wick:generation_tokens_total{model_name=\"smol\"} 5\n\
            # HELP wick:request_success_total Requests finished, by finish reason.\n\
            # TYPE wick:request_success_total counter\n\
            wick:request_success_total{model_name=\"smol\",finished_reason=\"length\"} 1\n\
            wick:request_success_total{model_name=\"smol\",finished_reason=\"abort\"} 0\n\
            wick:request_success_total{model_name=\"smol\",finished_reason=\"stop\"} 2\n\
            wick:request_queue_time_seconds_sum{model_name=\"smol\"} 0.0\n\
            wick:engine_step_duration_seconds_bucket{model_name=\"smol\",le=\"+Inf\"} 5\n\
            wick:engine_alive{model_name=\"smol\"} 1\n";
        let c = Counters::parse(text).unwrap();
        assert_eq!(
            (c.prompt_tokens, c.generation_tokens, c.requests),
            (15.0, 5.0, 3.0)
        );
    }
}

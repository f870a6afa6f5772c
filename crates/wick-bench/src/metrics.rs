//! The server's own count of the run: Prometheus `/metrics` read before and after the
//! counted phase, so a report can set the server's token and request counts beside the
//! client's.
//!
//! Counters are found by suffix (`generation_tokens_total`, `prompt_tokens_total`,
//! `request_success_total`), so wick's `wick:` names and vLLM's `vllm:` names both work;
//! all label sets of a name are summed.

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
}

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
            let slot = if name_labels.ends_with("generation_tokens_total") {
                &mut c.generation_tokens
            } else if name_labels.ends_with("prompt_tokens_total") {
                &mut c.prompt_tokens
            } else if name_labels.ends_with("request_success_total") {
                &mut c.requests
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
        }
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

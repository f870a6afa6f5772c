//! Unit tests of the exposition: every family wick exposed before the move to
//! prometheus-client keeps its name, type, help and labels.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

/// Every family wick exposed before prometheus-client, as it was: (sample name or
/// histogram base name, TYPE, HELP, label names of its samples besides `le`).
const FAMILIES: &[(&str, &str, &str, &[&str])] = &[
    (
        "wick:num_requests_running",
        "gauge",
        "Sequences running.",
        &["model_name"],
    ),
    (
        "wick:num_requests_waiting",
        "gauge",
        "Sequences waiting.",
        &["model_name"],
    ),
    (
        "wick:kv_cache_usage_perc",
        "gauge",
        "Fraction of KV cache blocks in use (0-1).",
        &["model_name"],
    ),
    (
        "wick:kv_cache_used_blocks",
        "gauge",
        "KV cache blocks in use.",
        &["model_name"],
    ),
    (
        "wick:num_preemptions_total",
        "counter",
        "Preemptions.",
        &["model_name"],
    ),
    (
        "wick:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        &["model_name"],
    ),
    (
        "wick:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        &["model_name"],
    ),
    (
        "wick:prompt_tokens_total",
        "counter",
        "Prompt tokens processed.",
        &["model_name"],
    ),
    (
        "wick:generation_tokens_total",
        "counter",
        "Tokens generated.",
        &["model_name"],
    ),
    (
        "wick:engine_steps_total",
        "counter",
        "Engine steps run.",
        &["model_name"],
    ),
    (
        "wick:request_success_total",
        "counter",
        "Requests finished, by finish reason.",
        &["finished_reason", "model_name"],
    ),
    (
        "wick:time_to_first_token_seconds",
        "histogram",
        "Time to first token.",
        &["model_name"],
    ),
    (
        "wick:inter_token_latency_seconds",
        "histogram",
        "Time between consecutive tokens.",
        &["model_name"],
    ),
    (
        "wick:e2e_request_latency_seconds",
        "histogram",
        "Arrival to last token.",
        &["model_name"],
    ),
    (
        "wick:request_queue_time_seconds",
        "histogram",
        "Arrival to first scheduled step.",
        &["model_name"],
    ),
    (
        "wick:http_requests_total",
        "counter",
        "HTTP requests by route and status.",
        &["route", "status"],
    ),
];

/// Families added with engine health.
const NEW_FAMILIES: &[(&str, &str, &[&str])] = &[
    ("wick:engine_alive", "gauge", &["model_name"]),
    (
        "wick:engine_step_duration_seconds",
        "histogram",
        &["model_name"],
    ),
    (
        "wick:engine_last_step_timestamp_seconds",
        "gauge",
        &["model_name"],
    ),
    (
        "wick:request_time_per_output_token_seconds",
        "histogram",
        &["model_name"],
    ),
    (
        "wick:engine_step_phase_duration_seconds",
        "histogram",
        &["model_name", "phase"],
    ),
    (
        "wick:engine_device_to_host_bytes_total",
        "counter",
        &["model_name"],
    ),
    ("wick:engine_graph_steps_total", "counter", &["model_name"]),
    ("wick:engine_graph_shapes", "gauge", &["model_name"]),
];

#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    /// Sample name suffix ("" or _bucket/_sum/_count) -> label names seen.
    samples: BTreeMap<String, BTreeSet<Vec<String>>>,
}

/// A small Prometheus text (0.0.4) parser: families by name, with their samples.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().help = help.into();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.entry(name.into()).or_default().kind = kind.into();
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line}");
            let (name, rest) = line.split_once('{').unwrap();
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            value.parse::<f64>().unwrap();
            let mut keys: Vec<String> = labels
                .split(',')
                .map(|kv| kv.split_once("=\"").unwrap().0.to_string())
                .filter(|k| k != "le")
                .collect();
            keys.sort();
            let (family, suffix) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    let base = name.strip_suffix(s)?;
                    (families.get(base)?.kind == "histogram").then_some((base, *s))
                })
                .unwrap_or((name, ""));
            let f = families
                .get_mut(family)
                .unwrap_or_else(|| panic!("no TYPE for {line}"));
            f.samples.entry(suffix.into()).or_default().insert(keys);
        }
    }
    families
}

/// Stats of an engine that has stepped 5 times.
fn stepping() -> EngineStats {
    let step_duration = DurationHistogram {
        bounds: vec![0.01, 0.1],
        counts: vec![3, 1],
        sum: 0.5,
        count: 5,
    };
    let last_step_unix_s = Some(1_700_000_000.5);
    EngineStats {
        step_duration,
        last_step_unix_s,
        ..Default::default()
    }
}

fn recorded() -> Metrics {
    let m = Metrics::new("smol");
    m.record_finished(
        &RequestMetrics {
            prompt_tokens: 10,
            generation_tokens: 3,
            ttft_s: 0.03,
            e2e_s: 0.2,
            inter_token_s: vec![0.01, 0.02],
            ..Default::default()
        },
        &["length"],
    );
    m.record_unfinished(5, 2);
    m.record_http("/v1/completions", 200);
    m
}

#[test]
fn renders_counters_histograms_and_gauges() {
    let text = recorded().render(
        &EngineStats {
            num_running: 2,
            kv_usage: 0.25,
            ..Default::default()
        },
        None,
    );
    for line in [
        "wick:prompt_tokens_total{model_name=\"smol\"} 15",
        "wick:generation_tokens_total{model_name=\"smol\"} 5",
        "wick:num_requests_running{model_name=\"smol\"} 2",
        "wick:kv_cache_usage_perc{model_name=\"smol\"} 0.25",
        "wick:request_success_total{model_name=\"smol\",finished_reason=\"length\"} 1",
        "wick:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.04\"} 1",
        "wick:time_to_first_token_seconds_bucket{model_name=\"smol\",le=\"0.02\"} 0",
        "wick:inter_token_latency_seconds_count{model_name=\"smol\"} 2",
        "wick:http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
        "wick:engine_alive{model_name=\"smol\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
}

#[test]
fn every_family_keeps_its_name_type_help_and_labels() {
    let stats = stepping();
    let text = recorded().render(&stats, Some(&EngineHealth::Healthy));
    let families = parse(&text);
    assert_eq!(
        families.len(),
        FAMILIES.len() + NEW_FAMILIES.len(),
        "{text}"
    );
    for &(name, kind, help, labels) in FAMILIES {
        let f = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing\n{text}"));
        assert_eq!((f.kind.as_str(), f.help.as_str()), (kind, help), "{name}");
        let want: BTreeSet<Vec<String>> =
            BTreeSet::from([labels.iter().map(|l| l.to_string()).collect()]);
        let suffixes: &[&str] = if kind == "histogram" {
            &["_bucket", "_sum", "_count"]
        } else {
            &[""]
        };
        assert_eq!(f.samples.len(), suffixes.len(), "{name}: {:?}", f.samples);
        for s in suffixes {
            assert_eq!(f.samples.get(*s), Some(&want), "{name}{s}");
        }
    }
    for &(name, kind, labels) in NEW_FAMILIES {
        let f = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing\n{text}"));
        assert_eq!(f.kind, kind, "{name}");
        let want = labels.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        assert!(
            f.samples
                .values()
                .all(|s| s == &BTreeSet::from([want.clone()])),
            "{name}: {:?}",
            f.samples
        );
    }
    assert_eq!(
        families.len(),
        FAMILIES.len() + NEW_FAMILIES.len(),
        "{text}"
    );

    // The finish reasons are always there; buckets keep their `le` spelling.
    for reason in FINISH_REASONS {
        let sample = format!(
            "wick:request_success_total{{model_name=\"smol\",finished_reason=\"{reason}\"}} "
        );
        assert!(text.contains(&sample), "{sample}\n{text}");
    }
    for le in ["0.001", "1", "2560", "+Inf"] {
        let bucket =
            format!("wick:e2e_request_latency_seconds_bucket{{model_name=\"smol\",le=\"{le}\"}} ");
        assert!(text.contains(&bucket), "{bucket}\n{text}");
    }
    assert!(!text.contains("# EOF"));
}

#[test]
fn engine_health_and_step_histogram() {
    let stats = stepping();
    let m = Metrics::new("smol");
    let text = m.render(&stats, Some(&EngineHealth::Healthy));
    for line in [
        "wick:engine_alive{model_name=\"smol\"} 1",
        "wick:engine_step_duration_seconds_bucket{model_name=\"smol\",le=\"0.01\"} 3",
        "wick:engine_step_duration_seconds_bucket{model_name=\"smol\",le=\"0.1\"} 4",
        "wick:engine_step_duration_seconds_bucket{model_name=\"smol\",le=\"+Inf\"} 5",
        "wick:engine_step_duration_seconds_sum{model_name=\"smol\"} 0.5",
        "wick:engine_step_duration_seconds_count{model_name=\"smol\"} 5",
        "wick:engine_last_step_timestamp_seconds{model_name=\"smol\"} 1700000000.5",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    let dead = EngineHealth::Dead {
        reason: "boom".into(),
    };
    let stalled = EngineHealth::Stalled { secs: 61.0 };
    for health in [None, Some(&dead), Some(&stalled)] {
        let text = m.render(&EngineStats::default(), health);
        assert!(
            text.contains("wick:engine_alive{model_name=\"smol\"} 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("wick:engine_last_step_timestamp_seconds{"),
            "{text}"
        );
    }
}

#[test]
fn each_step_phase_is_a_labelled_histogram() {
    let mut stats = stepping();
    stats.step_phase_duration.observe(StepPhase::Forward, 0.02);
    stats.step_phase_duration.observe(StepPhase::Forward, 0.2);
    stats
        .step_phase_duration
        .observe(StepPhase::Schedule, 0.00003);
    stats.device_to_host_bytes = 4096;
    stats.graph_steps = 7;
    stats.graph_shapes = 2;
    let text = Metrics::new("smol").render(&stats, Some(&EngineHealth::Healthy));
    for line in [
        "wick:engine_step_phase_duration_seconds_bucket{model_name=\"smol\",phase=\"forward\",le=\"0.025\"} 1",
        "wick:engine_step_phase_duration_seconds_bucket{model_name=\"smol\",phase=\"forward\",le=\"+Inf\"} 2",
        "wick:engine_step_phase_duration_seconds_count{model_name=\"smol\",phase=\"forward\"} 2",
        "wick:engine_step_phase_duration_seconds_bucket{model_name=\"smol\",phase=\"schedule\",le=\"0.0001\"} 1",
        "wick:engine_step_phase_duration_seconds_count{model_name=\"smol\",phase=\"sample\"} 0",
        "wick:engine_device_to_host_bytes_total{model_name=\"smol\"} 4096",
        "wick:engine_graph_steps_total{model_name=\"smol\"} 7",
        "wick:engine_graph_shapes{model_name=\"smol\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    for phase in StepPhase::ALL {
        let sum = format!(
            "wick:engine_step_phase_duration_seconds_sum{{model_name=\"smol\",phase=\"{}\"}} ",
            phase.name()
        );
        assert!(text.contains(&sum), "{sum}\n{text}");
    }
}

#[test]
fn label_values_are_sanitised() {
    let m = Metrics::new("a\"b\\c\nd");
    m.record_http("/x\"y", 404);
    let text = m.render(&EngineStats::default(), None);
    assert!(text.contains("{model_name=\"a_b_c_d\"}"), "{text}");
    assert!(text.contains("wick:http_requests_total{route=\"/x_y\",status=\"404\"} 1"));
    parse(&text);
}

#[test]
fn lora_requests_info_names_running_and_waiting_adapters_when_lora_is_on() {
    let off = recorded().render(&EngineStats::default(), None);
    assert!(!off.contains("lora_requests_info"), "{off}");
    let stats = EngineStats {
        running_loras: vec!["a".into(), "b".into()],
        waiting_loras: vec!["c".into()],
        max_loras: 4,
        ..Default::default()
    };
    let text = recorded().render(&stats, None);
    let line = text
        .lines()
        .find(|l| l.starts_with("wick:lora_requests_info{"))
        .unwrap_or_else(|| panic!("no lora_requests_info\n{text}"));
    for label in [
        "running_lora_adapters=\"a,b\"",
        "waiting_lora_adapters=\"c\"",
        "max_lora=\"4\"",
        "model_name=\"smol\"",
    ] {
        assert!(line.contains(label), "{label} missing: {line}");
    }
}

#[test]
fn model_weight_bytes_is_a_gauge_once_loaded() {
    let m = Metrics::new("smol");
    let text = m.render(&EngineStats::default(), None);
    assert!(!text.contains("wick:model_weight_bytes"), "{text}");
    m.set_model_weight_bytes(96_576_768);
    let text = m.render(&EngineStats::default(), Some(&EngineHealth::Healthy));
    assert!(
        text.contains("# TYPE wick:model_weight_bytes gauge\n")
            && text.contains("wick:model_weight_bytes{model_name=\"smol\"} 96576768\n"),
        "{text}"
    );
    parse(&text);
}

#[test]
fn time_per_output_token_is_observed_once_per_request_of_over_one_token() {
    let m = Metrics::new("smol");
    let request = |generation_tokens, reasons: &[&'static str]| {
        m.record_finished(
            &RequestMetrics {
                generation_tokens,
                ttft_s: 0.25,
                e2e_s: 1.25,
                ..Default::default()
            },
            reasons,
        )
    };
    // (1.25 - 0.25) / (5 - 1) = 0.25 s; n = 2 completions of 3 tokens: 1.0 / 2 = 0.5 s;
    // one token: no decode time, not observed.
    request(5, &["length"]);
    request(6, &["stop", "length"]);
    request(1, &["length"]);
    let text = m.render(&EngineStats::default(), None);
    for line in [
        "wick:request_time_per_output_token_seconds_bucket{model_name=\"smol\",le=\"0.2\"} 0",
        "wick:request_time_per_output_token_seconds_bucket{model_name=\"smol\",le=\"0.3\"} 1",
        "wick:request_time_per_output_token_seconds_bucket{model_name=\"smol\",le=\"0.5\"} 2",
        "wick:request_time_per_output_token_seconds_sum{model_name=\"smol\"} 0.75",
        "wick:request_time_per_output_token_seconds_count{model_name=\"smol\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
    parse(&text);
}

#[test]
fn gpu_hour_price_is_a_gauge_once_set() {
    let m = Metrics::new("smol");
    let text = m.render(&EngineStats::default(), None);
    assert!(!text.contains("wick:gpu_hour_price_dollars"), "{text}");
    m.set_gpu_hour_price(2.1);
    let text = m.render(&EngineStats::default(), None);
    assert!(
        text.contains("# TYPE wick:gpu_hour_price_dollars gauge\n")
            && text.contains("wick:gpu_hour_price_dollars{model_name=\"smol\"} 2.1\n"),
        "{text}"
    );
    parse(&text);
}

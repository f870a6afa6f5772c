//! deploy/prometheus and deploy/grafana, checked by the engines that will run them and
//! against a real `wick serve`: promtool checks the example configuration and the rule
//! files and runs their unit tests (deploy/prometheus/tests/*.yml: each alert fires on
//! trouble after its `for` and stays quiet on the near misses, each recording rule gives
//! its exact value on synthetic series); every metric name the rules, the alerts, the
//! dashboard and any other query under deploy/ (KEDA ScaledObjects, PrometheusRules,
//! *.promql) read, taken out by a real PromQL parser, is on this server's /metrics or is
//! a recording rule's output (deploy/prometheus/tests/check_metric_names.py); and that
//! check does report the misses it is shown.
//!
//! Needs promtool (Debian's prometheus package: scripts/install-test-deps.sh) and the
//! venv of deploy/prometheus/tests/venv.sh (both run by scripts/test.sh); a missing one
//! fails the test naming it.

use crate::support::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs `cmd`, which must succeed; its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn promtool() -> Command {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "promtool is not on PATH: run scripts/install-test-deps.sh (Debian's prometheus package)"
    );
    let mut cmd = Command::new("promtool");
    cmd.current_dir(wick_test_support::repo_root());
    cmd
}

/// The checker, run by the monitoring venv's python.
fn name_check(args: &[&Path]) -> Output {
    let root = wick_test_support::repo_root();
    let python = root.join(".cache/monitoring-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run deploy/prometheus/tests/venv.sh",
        python.display()
    );
    Command::new(python)
        .arg(root.join("deploy/prometheus/tests/check_metric_names.py"))
        .args(args)
        .current_dir(&root)
        .output()
        .expect("run check_metric_names.py")
}

#[test]
fn promtool_checks_the_rules_and_passes_their_unit_tests() {
    let root = wick_test_support::repo_root();
    let prom = root.join("deploy/prometheus");
    // The example configuration, and through it both rule files.
    let out = run_ok(
        promtool()
            .args(["check", "config"])
            .arg(prom.join("prometheus.yml")),
    );
    assert!(out.contains("SUCCESS: 2 rule files found"), "{out}");
    let out = run_ok(
        promtool()
            .args(["check", "rules"])
            .arg(prom.join("wick-rules.yml"))
            .arg(prom.join("wick-alerts.yml")),
    );
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
    let mut tests: Vec<PathBuf> = std::fs::read_dir(prom.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    tests.sort();
    assert_eq!(tests.len(), 2, "{tests:?}");
    let out = run_ok(promtool().args(["test", "rules"]).args(&tests));
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");

    // The cost rule computes what `wick bench --gpu-hour-price` does, to the bit: replica
    // a of recording.yml, at 2.5 dollars per hour and 100 output tokens per second.
    let bench = wick_bench::report::Cost::at(
        wick_bench::CostSpec {
            gpu_hour_price: 2.5,
            gpus: 1.0,
        },
        100.0,
        100.0,
    )
    .per_million_output_tokens
    .unwrap();
    let recording = std::fs::read_to_string(prom.join("tests/recording.yml")).unwrap();
    assert!(
        recording.contains(&format!("value: {bench}\n")),
        "bench's cost {bench} is not the rule's expected value in recording.yml"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_monitoring_reads_is_on_a_real_metrics_page() {
    let server = Server::start(&["--gpu-hour-price", "2.5"]).await;
    // One request of several tokens, so that every histogram has a sample.
    let (status, body) = server
        .post(
            "/v1/completions",
            &json!({"model": "smollm2", "prompt": "The capital of France is",
                    "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.wait_idle().await;
    let metrics = server.metrics().await;
    for line in [
        "wick:gpu_hour_price_dollars{model_name=\"smollm2\"} 2.5",
        "wick:request_time_per_output_token_seconds_count{model_name=\"smollm2\"} 1",
        "wick:time_to_first_token_seconds_count{model_name=\"smollm2\"} 1",
        "wick:http_requests_total{route=\"/v1/completions\",status=\"200\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line}:\n{metrics}");
    }
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("metrics.txt");
    std::fs::write(&page, &metrics).unwrap();

    let root = wick_test_support::repo_root();
    let prom = root.join("deploy/prometheus");
    let out = name_check(&[
        &page,
        &prom.join("wick-rules.yml"),
        &prom.join("wick-alerts.yml"),
        &root.join("deploy/grafana/wick.json"),
        // Everything else under deploy/ that holds PromQL (KEDA, canary queries).
        &root.join("deploy"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "metric names missing from a real /metrics:\n{}\n{stdout}\n/metrics was:\n{metrics}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all exist"), "{stdout}");
    eprintln!("{stdout}");
}

#[test]
fn the_name_check_reports_what_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let page = write(
        "metrics.txt",
        "# HELP wick:num_requests_waiting Sequences waiting.\n\
         # TYPE wick:num_requests_waiting gauge\n\
         wick:num_requests_waiting{model_name=\"m\"} 0\n\
         # HELP wick:http_requests HTTP requests by route and status.\n\
         # TYPE wick:http_requests counter\n\
         wick:http_requests_total{route=\"/v1/completions\",status=\"200\"} 1\n",
    );
    let queries = write(
        "canary.promql",
        "# a comment\n\
         sum(wick:num_requests_waiting{job=\"wick\"})\n\
         wick:num_requests_waitin\n\
         sum by (model_name) (rate(wick:http_requests_total[5m]))\n\
         wick:http_requests_total{model=\"m\"}\n\
         {__name__=~\"wick:.*\"}\n\
         rate(wick:http_requests_total[5m]\n",
    );
    let keda = write(
        "keda.yaml",
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: wick}\n\
         spec:\n  scaleTargetRef: {name: wick}\n  triggers:\n\
         \x20   - type: prometheus\n      metadata:\n\
         \x20       query: sum(wick:num_requests_waiting) + sum(wick:queue_depth)\n",
    );
    let dashboard = write(
        "dashboard.json",
        r#"{"panels": [{"title": "row", "panels": [{"title": "p", "targets": [
            {"refId": "A", "expr": "rate(wick:http_request_total[$__rate_interval])"}]}]}],
            "templating": {"list": [{"name": "v", "type": "query",
            "query": {"query": "label_values(wick:nope{job=\"$job\"}, instance)"}}]}}"#,
    );
    let rules = write(
        "rules.yml",
        "groups:\n  - name: g\n    rules:\n\
         \x20     - record: job:waiting:sum\n        expr: sum by (job) (wick:num_requests_waiting)\n\
         \x20     - alert: A\n        expr: job:waiting:sum > 1 and job:running:sum > 1\n",
    );
    let out = name_check(&[&page, &queries, &keda, &dashboard, &rules]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for miss in [
        "canary.promql:3: wick:num_requests_waitin is not on wick's /metrics",
        "canary.promql:4: `by (model_name)` over ['wick:http_requests_total']",
        "canary.promql:5: wick:http_requests_total has no label 'model'",
        "canary.promql:6: a selector without a plain metric name cannot be checked",
        "canary.promql:7: does not parse as PromQL",
        "ScaledObject wick: wick:queue_depth is not on wick's /metrics",
        "panel 'p' A: wick:http_request_total is not on wick's /metrics",
        "variable v: wick:nope is not on wick's /metrics",
        "A: job:running:sum is not on wick's /metrics nor recorded by a rule",
        "9 problem(s) in 11 expressions",
    ] {
        assert!(stderr.contains(miss), "{miss:?} not reported:\n{stderr}");
    }
}

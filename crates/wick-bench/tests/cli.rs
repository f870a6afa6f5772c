//! The `wick bench` entry point end to end against the fake endpoint: a concurrency
//! sweep that writes `--json` and `--plot` files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use clap::Parser;
use common::{start, Behavior};

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: wick_bench::BenchArgs,
}

#[test]
fn sweep_writes_json_and_svg() {
    // The fake runs on its own runtime; `run` builds another, as the binary does.
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let fake = server_rt.block_on(start(
        vec![Behavior::Ok, Behavior::Ok, Behavior::Ok, Behavior::Http429],
        true,
        Duration::ZERO,
    ));
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sweep.json");
    let plot = dir.path().join("sweep.svg");
    let cli = Cli::try_parse_from([
        "wick",
        "--url",
        &fake.url,
        "--sweep",
        "concurrency=1,2,4",
        "--num-requests",
        "8",
        "--input-len",
        "12",
        "--output-len",
        "5",
        "--slo",
        "ttft=60s",
        "--gpu-hour-price",
        "2.10",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--no-progress",
    ])
    .unwrap();
    wick_bench::run(cli.args).unwrap();

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let points = v["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    let concurrency: Vec<u64> = points
        .iter()
        .map(|p| p["load"]["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrency, [1, 2, 4]);
    for p in points {
        // One request in four gets a 429, whatever the order of arrival.
        assert_eq!(p["ok"], 6);
        assert_eq!(p["errors"]["http_429"], 2);
        assert_eq!(p["total_output_tokens"], 30);
        assert_eq!(p["records"].as_array().unwrap().len(), 8);
        let cost = p["cost"]["per_million_output_tokens"].as_f64().unwrap();
        let tps = p["output_throughput"].as_f64().unwrap();
        assert!((cost - 2.10 / (tps * 3600.0) * 1e6).abs() < 1e-6 * cost.max(1.0));
        assert_eq!(p["goodput"]["fraction"], 0.75);
    }
    // Each level sent its own prompts: no level can ride on another's prefix cache.
    let prompts: Vec<String> = fake
        .state
        .bodies
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(prompts.len(), 24);
    let level = |i: usize| {
        let mut p = prompts[i * 8..(i + 1) * 8].to_vec();
        p.sort();
        p
    };
    assert_ne!(level(0), level(1));
    assert_ne!(level(1), level(2));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("Output throughput") && svg.contains("TTFT CDF")
    );
}

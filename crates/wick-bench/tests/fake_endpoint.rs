//! `wick bench` against a fake OpenAI endpoint on loopback: exact counts on success,
//! every failure kind counted and none crashing the tool, concurrency caps honoured,
//! bounded time, cancellation, chat/ShareGPT workloads, and the CLI's files.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{start, Behavior};
use wick_bench::{
    run_benchmark, BenchConfig, CancelToken, LoadSpec, Slo, TokenizerSource, WorkloadSpec,
};

fn synthetic(input_len: usize, output_len: usize) -> WorkloadSpec {
    WorkloadSpec::Synthetic {
        input_len,
        output_len,
        spread: 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_counts_tokens_exactly_and_matches_server_metrics() {
    let fake = start(vec![Behavior::Ok], true, Duration::ZERO).await;
    let config = BenchConfig {
        workload: synthetic(32, 8),
        load: LoadSpec::Closed { concurrency: 4 },
        num_requests: Some(20),
        warmup: 3,
        tokenizer: TokenizerSource::Server,
        slo: Slo {
            e2e_ms: Some(60_000.0),
            ..Slo::default()
        },
        ..BenchConfig::new(format!("{}/v1", fake.url))
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!(r.model, "fake-model");
    assert_eq!(r.tokenizer, "server");
    assert_eq!((r.requests, r.ok, r.failed, r.cancelled), (20, 20, 0, 0));
    assert!(r.errors.is_empty() && r.error_rate == 0.0);
    // Prompts were built to exactly 32 tokens by the server's own /tokenize.
    assert_eq!(r.total_prompt_tokens, 20 * 32);
    assert_eq!((r.prompt_len.min, r.prompt_len.max), (32.0, 32.0));
    assert_eq!(r.total_output_tokens, 20 * 8);
    assert_eq!(r.usage_reported, 20);
    assert_eq!(r.short_outputs, 0);
    assert_eq!(r.ttft_ms.count, 20);
    assert_eq!(r.tpot_ms.count, 20);
    assert_eq!(r.itl_ms.count, 20 * 7);
    assert!(r.ttft_ms.p50 <= r.ttft_ms.p99 && r.ttft_ms.p99 <= r.e2e_ms.max);
    let expected_tps = r.total_output_tokens as f64 / r.duration_s;
    assert!((r.output_throughput - expected_tps).abs() < 1e-6);
    // Warm-up requests reached the server but not the report; /metrics deltas cover the
    // counted phase only and agree with the client's counts exactly.
    assert_eq!(
        fake.state
            .arrivals
            .load(std::sync::atomic::Ordering::SeqCst),
        23
    );
    let m = r.server_metrics.expect("the fake has /metrics");
    assert_eq!(m.server.generation_tokens, 160.0);
    assert_eq!(m.server.prompt_tokens, 640.0);
    assert_eq!(m.server.requests, 20.0);
    assert_eq!((m.client_output_tokens, m.client_prompt_tokens), (160, 640));
    let g = r.goodput.unwrap();
    assert_eq!(g.fraction, 1.0);
    // Every request streamed with usage, ignore_eos and min_tokens.
    let bodies = fake.state.bodies.lock().unwrap();
    for (path, b) in bodies.iter() {
        assert_eq!(path, "/v1/completions");
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["ignore_eos"], true);
        assert_eq!(b["min_tokens"], 8);
        assert_eq!(b["max_tokens"], 8);
        assert_eq!(b["model"], "fake-model");
    }
    let table = r.render();
    assert!(
        table.contains("20 ok, 0 failed") && table.contains("TTFT (ms)"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_kind_is_counted_and_none_crashes_the_tool() {
    use Behavior::*;
    let schedule = vec![
        Ok,
        Ok,
        Short,
        Http429,
        Cut,
        Malformed,
        SlowFirst,
        StreamError,
        Abort,
        Stall,
    ];
    // No /tokenize: the tool falls back to approximate counts by itself.
    let fake = start(schedule, false, Duration::ZERO).await;
    let config = BenchConfig {
        workload: synthetic(16, 6),
        load: LoadSpec::Closed { concurrency: 5 },
        num_requests: Some(30),
        request_timeout: Duration::from_secs(4),
        ttft_timeout: Some(Duration::from_secs(2)),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!(r.tokenizer, "approximate");
    assert_eq!((r.requests, r.ok, r.failed, r.cancelled), (30, 9, 21, 0));
    let count = |k: &str| r.errors.get(k).copied().unwrap_or(0);
    assert_eq!(count("http_429"), 3);
    assert_eq!(count("dropped_stream"), 6, "{:?}", r.errors);
    assert_eq!(count("malformed_chunk"), 3);
    assert_eq!(count("first_token_timeout"), 3);
    assert_eq!(count("stream_error"), 3);
    assert_eq!(count("timeout"), 3);
    assert!((r.error_rate - 0.7).abs() < 1e-9);
    assert_eq!(r.error_examples["stream_error"], "engine overloaded");
    assert!(r.error_examples["http_429"].contains("rate limited"));
    // Latencies and tokens cover the 9 successes only; 3 of them came back short.
    assert_eq!(r.total_output_tokens, 6 * 6 + 3 * 3);
    assert_eq!(r.short_outputs, 3);
    assert_eq!(r.e2e_ms.count, 9);
    let table = r.render();
    assert!(
        table.contains("http_429 3") && table.contains("70.0%"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llama_cpp_python_tokenize_dialect_gives_exact_prompts() {
    let fake = start(vec![Behavior::Ok], true, Duration::ZERO).await;
    fake.state
        .extras_only
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let config = BenchConfig {
        workload: synthetic(24, 3),
        num_requests: Some(5),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!((r.tokenizer.as_str(), r.ok), ("server", 5));
    assert_eq!(r.total_prompt_tokens, 5 * 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loops_never_exceed_their_concurrency() {
    let fake = start(vec![Behavior::Ok], true, Duration::from_millis(2)).await;
    let closed = BenchConfig {
        workload: synthetic(8, 10),
        load: LoadSpec::Closed { concurrency: 3 },
        num_requests: Some(24),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&closed, &CancelToken::new()).await.unwrap();
    assert_eq!(r.ok, 24);
    let max = |f: &common::Fake| {
        f.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    assert!(max(&fake) <= 3, "{}", max(&fake));

    let fake = start(vec![Behavior::Ok], true, Duration::from_millis(2)).await;
    let open = BenchConfig {
        load: LoadSpec::Open {
            rate: f64::INFINITY,
            poisson: true,
            max_concurrency: Some(2),
        },
        ..closed
    };
    let open = BenchConfig {
        url: fake.url.clone(),
        ..open
    };
    let r = run_benchmark(&open, &CancelToken::new()).await.unwrap();
    assert_eq!((r.ok, r.failed), (24, 0));
    assert!(max(&fake) <= 2, "{}", max(&fake));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bounds_the_run_without_a_request_count() {
    let fake = start(vec![Behavior::Ok], true, Duration::from_millis(5)).await;
    let config = BenchConfig {
        workload: synthetic(8, 4),
        load: LoadSpec::Closed { concurrency: 2 },
        duration: Some(Duration::from_millis(800)),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert!(!r.interrupted);
    assert!(r.ok > 0 && r.failed == 0);
    // No request started after the duration (a generous margin for a loaded machine:
    // the check and the start are in the same task, without an await between them).
    assert!(r.records.iter().all(|x| x.start_s < 0.8 + 0.5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_in_flight_requests_and_still_reports() {
    // Every request stalls after its first token, so only cancellation can end them.
    let fake = start(vec![Behavior::Stall], true, Duration::ZERO).await;
    let config = BenchConfig {
        workload: synthetic(8, 4),
        load: LoadSpec::Closed { concurrency: 4 },
        num_requests: Some(100),
        ..BenchConfig::new(fake.url.clone())
    };
    let cancel = CancelToken::new();
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { run_benchmark(&config, &cancel).await }
    });
    while fake
        .state
        .arrivals
        .load(std::sync::atomic::Ordering::SeqCst)
        < 4
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let r = run.await.unwrap().unwrap();
    assert!(r.interrupted);
    assert_eq!((r.ok, r.failed, r.cancelled), (0, 0, 4));
    assert_eq!(
        fake.state
            .arrivals
            .load(std::sync::atomic::Ordering::SeqCst),
        4
    );
    assert!(r.render().contains("INTERRUPTED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharegpt_file_goes_to_chat_with_reference_lengths() {
    let fake = start(vec![Behavior::Ok], true, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sharegpt.json");
    std::fs::write(
        &path,
        r#"[{"conversations": [{"from": "human", "value": "what is a river"},
                               {"from": "gpt", "value": "water that flows downhill"}]},
            {"conversations": [{"from": "system", "value": "be brief"},
                               {"from": "human", "value": "name a planet"},
                               {"from": "gpt", "value": "mars"}]}]"#,
    )
    .unwrap();
    let config = BenchConfig {
        workload: WorkloadSpec::File {
            path,
            output_len: None,
        },
        num_requests: Some(6),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!((r.endpoint.as_str(), r.ok), ("chat", 6));
    let bodies = fake.state.bodies.lock().unwrap();
    let mut lens: Vec<u64> = bodies
        .iter()
        .map(|(_, b)| b["max_tokens"].as_u64().unwrap())
        .collect();
    lens.sort();
    lens.dedup();
    assert_eq!(lens, vec![1, 4]);
    for (path, b) in bodies.iter() {
        assert_eq!(path, "/v1/chat/completions");
        let roles: Vec<&str> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert!(
            roles == ["user"] || roles == ["system", "user"],
            "{roles:?}"
        );
    }
    // Chat deltas are measured the same way as completion text.
    assert_eq!(
        r.total_output_tokens,
        bodies
            .iter()
            .map(|(_, b)| b["max_tokens"].as_u64().unwrap())
            .sum::<u64>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_at_a_finite_rate_honours_count_and_duration() {
    let fake = start(vec![Behavior::Ok], true, Duration::ZERO).await;
    let by_count = BenchConfig {
        workload: synthetic(8, 4),
        load: LoadSpec::Open {
            rate: 50.0,
            poisson: true,
            max_concurrency: None,
        },
        num_requests: Some(12),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&by_count, &CancelToken::new()).await.unwrap();
    assert_eq!((r.ok, r.failed), (12, 0));
    let starts: Vec<f64> = r.records.iter().map(|x| x.start_s).collect();
    // In arrival order; two arrivals a few microseconds apart may record their start
    // times in either order, so allow a millisecond.
    assert!(starts.windows(2).all(|w| w[0] <= w[1] + 1e-3), "{starts:?}");

    let by_time = BenchConfig {
        load: LoadSpec::Open {
            rate: 20.0,
            poisson: false,
            max_concurrency: Some(4),
        },
        num_requests: None,
        duration: Some(Duration::from_millis(500)),
        ..by_count
    };
    let r = run_benchmark(&by_time, &CancelToken::new()).await.unwrap();
    assert!(r.ok >= 1 && r.failed == 0 && !r.interrupted);
    // Constant arrivals every 50 ms within 500 ms: at most 10 starts (index 0..=9).
    assert!(r.ok <= 10, "{}", r.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_fraction_mixes_streamed_and_whole_requests_by_seed() {
    use wick_bench::client::stream_choice;
    let fake = start(vec![Behavior::Ok], true, Duration::ZERO).await;
    let config = BenchConfig {
        workload: synthetic(16, 6),
        load: LoadSpec::Closed { concurrency: 4 },
        num_requests: Some(40),
        tokenizer: TokenizerSource::Server,
        seed: 7,
        stream_fraction: 0.5,
        // Never applies to whole responses: their first token comes with their last.
        ttft_timeout: Some(Duration::from_secs(30)),
        slo: Slo {
            ttft_ms: Some(60_000.0),
            tpot_ms: Some(60_000.0),
            ..Slo::default()
        },
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!((r.requests, r.ok, r.failed), (40, 40, 0), "{:?}", r.errors);
    // The choice is the seed's, per index.
    for x in &r.records {
        assert_eq!(x.streamed, stream_choice(7, x.index, 0.5), "{}", x.index);
    }
    let streamed = r.records.iter().filter(|x| x.streamed).count();
    assert_eq!(r.streamed, streamed);
    assert!((10..=30).contains(&streamed), "{streamed} of 40 streamed");
    // What went over the wire agrees with the records.
    let bodies = fake.state.bodies.lock().unwrap().clone();
    let sent_streamed = bodies.iter().filter(|(_, b)| b["stream"] == true).count();
    assert_eq!(sent_streamed, streamed);
    for (_, b) in bodies.iter().filter(|(_, b)| b["stream"] == false) {
        assert!(b.get("stream_options").is_none(), "{b}");
        assert_eq!(
            (b["max_tokens"].as_u64(), b["min_tokens"].as_u64()),
            (Some(6), Some(6))
        );
    }
    // Whole responses: no TTFT/ITL, counts from usage, measured end to end.
    for x in r.records.iter().filter(|x| !x.streamed) {
        assert!(x.ttft_s.is_none() && x.itl_s.is_empty() && x.tpot_s().is_none());
        assert!(x.usage_reported && x.output_tokens == 6 && x.prompt_tokens == 16);
        assert!(x.e2e_s > 0.0);
    }
    assert_eq!(r.ttft_ms.count, streamed);
    assert_eq!(r.tpot_ms.count, streamed);
    assert_eq!(r.e2e_ms.count, 40);
    assert_eq!((r.total_output_tokens, r.short_outputs), (240, 0));
    // Whole responses meet a TTFT objective by their e2e, and have no TPOT to miss.
    assert_eq!(r.goodput.unwrap().fraction, 1.0);
    assert!(r
        .render()
        .contains(&format!("40 ok, 0 failed (0.0%), {streamed} streamed")));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["records"][0]["streamed"], r.records[0].streamed);
    assert!(v["started_unix_s"].as_f64().unwrap() > 1.7e9);

    // The same seed makes the same choice again; the ends of the range are all or none.
    let again = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    let choice = |r: &wick_bench::Report| r.records.iter().map(|x| x.streamed).collect::<Vec<_>>();
    assert_eq!(choice(&again), choice(&r));
    for (fraction, expected) in [(0.0, 0), (1.0, 40)] {
        let c = BenchConfig {
            stream_fraction: fraction,
            ..config.clone()
        };
        let r = run_benchmark(&c, &CancelToken::new()).await.unwrap();
        assert_eq!((r.ok, r.streamed), (40, expected));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_responses_fail_by_kind_and_none_crashes_the_tool() {
    use Behavior::*;
    // Chat: the whole response's text is in `message`, not `delta`.
    let fake = start(
        vec![Ok, Http429, Cut, Abort, Malformed, StreamError, Stall],
        true,
        Duration::ZERO,
    )
    .await;
    let config = BenchConfig {
        workload: synthetic(8, 5),
        endpoint: wick_bench::EndpointKind::Chat,
        load: LoadSpec::Closed { concurrency: 7 },
        num_requests: Some(14),
        stream_fraction: 0.0,
        request_timeout: Duration::from_secs(2),
        ..BenchConfig::new(fake.url.clone())
    };
    let r = run_benchmark(&config, &CancelToken::new()).await.unwrap();
    assert_eq!((r.requests, r.ok, r.failed, r.streamed), (14, 2, 12, 0));
    let count = |k: &str| r.errors.get(k).copied().unwrap_or(0);
    assert_eq!(count("http_429"), 2, "{:?}", r.errors);
    assert_eq!(count("malformed_chunk"), 4, "{:?}", r.errors);
    assert_eq!(count("dropped_stream"), 2, "{:?}", r.errors);
    assert_eq!(count("stream_error"), 2, "{:?}", r.errors);
    assert_eq!(count("timeout"), 2, "{:?}", r.errors);
    assert_eq!(r.error_examples["stream_error"], "engine overloaded");
    assert_eq!(r.total_output_tokens, 2 * 5);
    assert!(fake
        .state
        .bodies
        .lock()
        .unwrap()
        .iter()
        .all(|(p, b)| p == "/v1/chat/completions" && b["stream"] == false));
}

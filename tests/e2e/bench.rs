//! `wick bench` against a real `wick serve`: every request succeeds with exact prompt
//! and output lengths, and its token counts and throughput agree with the server's own
//! /metrics for the same run within 5%; each record names the replica that answered.

use crate::support::*;
use wick_bench::{
    run_benchmark, BenchConfig, CancelToken, LoadSpec, TokenizerSource, WorkloadSpec,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_wick_serve_agrees_with_its_metrics() {
    let server = Server::start(&["--replica-id", "replica-a"]).await;
    let cfg = BenchConfig {
        load: LoadSpec::Closed { concurrency: 4 },
        num_requests: Some(16),
        warmup: 2,
        workload: WorkloadSpec::Synthetic {
            input_len: 48,
            output_len: 12,
            spread: 0.0,
        },
        tokenizer: TokenizerSource::Server,
        progress: false,
        ..BenchConfig::new(server.base.clone())
    };
    let gen_before = server.metric("wick:generation_tokens_total").await;
    let report = run_benchmark(&cfg, &CancelToken::new())
        .await
        .expect("bench runs");
    assert_eq!(report.ok, 16, "{:?}", report.errors);
    assert_eq!(report.failed, 0);
    assert_eq!(report.total_output_tokens, 16 * 12);
    assert_eq!(report.total_prompt_tokens, 16 * 48);
    assert_eq!(report.short_outputs, 0);
    assert!(
        (report.records.iter()).all(|r| r.replica.as_deref() == Some("replica-a")),
        "records without the replica"
    );
    assert_eq!(report.replicas.get("replica-a"), Some(&[16, 0]));
    assert!(report.render().contains("replica-a 16 ok / 0 failed"));
    assert!(report.output_throughput > 0.0 && report.ttft_ms.p50 > 0.0);

    let check = report.server_metrics.expect("wick serves /metrics");
    let server_gen = check.server.generation_tokens;
    let client_gen = report.total_output_tokens as f64;
    assert!(
        (server_gen - client_gen).abs() <= 0.05 * client_gen,
        "server counted {server_gen} output tokens, bench {client_gen}"
    );
    let server_prompt = check.server.prompt_tokens;
    let client_prompt = report.total_prompt_tokens as f64;
    assert!(
        (server_prompt - client_prompt).abs() <= 0.05 * client_prompt,
        "server counted {server_prompt} prompt tokens, bench {client_prompt}"
    );
    // Throughput: the server's token count over the bench's own wall time.
    let server_tput = server_gen / report.duration_s;
    assert!(
        (server_tput - report.output_throughput).abs() <= 0.05 * report.output_throughput,
        "{server_tput} vs {}",
        report.output_throughput
    );
    // Warm-up included, the whole run is in the server's total.
    let gen_after = server.metric("wick:generation_tokens_total").await;
    assert_eq!(gen_after - gen_before, (18 * 12) as f64);
    server.wait_idle().await;
}

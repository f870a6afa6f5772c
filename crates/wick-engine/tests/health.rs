//! Health, faults and the waiting queue, driving the REAL engine loop over SmolLM2
//! (../shared/fixtures) with the test-only fault injection of `EngineConfig::fault`: a
//! panicking engine fails its in-flight requests (no hang), reports Dead and refuses
//! new work; a stalled one reports Stalled while work waits; a working or idle one is
//! Healthy; a full queue refuses with Overloaded and places come back when requests
//! start, finish or are dropped. Every wait is bounded, so a broken engine fails a test
//! instead of hanging it.
//!
//! Needs the model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use candle_core::DType;
use std::time::{Duration, Instant};
use wick_core::{ErrorKind, SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineHealth, EngineRequest, Fault, RequestStream};
use wick_test_support::{golden_cases, load_smollm2};

/// Longest any single wait may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(60);

fn start(config: EngineConfig) -> EngineHandle {
    let loaded = load_smollm2(DType::F32);
    EngineHandle::start(
        loaded.model,
        loaded.special.eos_token_ids,
        EngineConfig {
            kv_cache_memory: Some(64 << 20),
            ..config
        },
    )
    .expect("engine starts")
}

fn request(max_tokens: usize) -> EngineRequest {
    EngineRequest::new(
        golden_cases()[0].prompt_token_ids.clone(),
        SamplingParams {
            max_tokens,
            ignore_eos: true,
            ..SamplingParams::greedy(max_tokens)
        },
    )
}

/// The next event of `stream`, failing the test after [`PATIENCE`].
fn next_event(rt: &tokio::runtime::Runtime, stream: &mut RequestStream) -> Option<TokenEvent> {
    rt.block_on(async { tokio::time::timeout(PATIENCE, stream.next()).await })
        .expect("no event in time: the engine hangs")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Polls `cond` until it holds, failing the test after [`PATIENCE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_panic_fails_in_flight_requests_marks_the_engine_dead_and_refuses_work() {
    let engine = start(EngineConfig {
        fault: Some(Fault::PanicAtStep(3)),
        ..EngineConfig::default()
    });
    assert!(engine.health().is_healthy());
    let rt = runtime();
    let mut streams: Vec<RequestStream> = (0..3)
        .map(|_| engine.submit(request(100)).unwrap())
        .collect();
    for stream in &mut streams {
        let mut tokens = 0;
        let error = loop {
            match next_event(&rt, stream) {
                Some(TokenEvent::Token { .. }) => tokens += 1,
                Some(TokenEvent::Error(e)) => break e,
                other => panic!("expected tokens then an error, got {other:?}"),
            }
        };
        assert!(tokens < 100);
        assert_eq!(error.kind, ErrorKind::Internal);
        assert_eq!(
            error.message,
            "the engine stopped: injected fault: panic at step 3"
        );
        assert_eq!(next_event(&rt, stream), None, "nothing after the error");
    }
    match engine.health() {
        EngineHealth::Dead { reason } => {
            assert!(
                reason.contains("injected fault: panic at step 3"),
                "{reason}"
            )
        }
        other => panic!("expected Dead, got {other:?}"),
    }
    let e = engine.submit(request(4)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert_eq!(engine.num_queued(), 0);
}

#[test]
fn a_stall_is_reported_while_work_waits() {
    let engine = start(EngineConfig {
        fault: Some(Fault::StallAtStep(2)),
        stall_timeout: Duration::from_secs(1),
        ..EngineConfig::default()
    });
    let rt = runtime();
    let mut stream = engine.submit(request(20)).unwrap();
    // Step 1 (the prefill) samples a token; step 2 never ends.
    assert!(matches!(
        next_event(&rt, &mut stream),
        Some(TokenEvent::Token { .. })
    ));
    wait_until(
        "Stalled",
        || matches!(engine.health(), EngineHealth::Stalled { secs } if secs >= 1.0),
    );
    assert!(engine.health().to_string().contains("no progress"));
    // A request submitted meanwhile is accepted and waits, and the engine stays stalled.
    let _waiting = engine.submit(request(4)).unwrap();
    assert!(matches!(engine.health(), EngineHealth::Stalled { .. }));
    // The engine thread stays blocked in its step; the test process ends around it.
}

#[test]
fn a_working_engine_and_an_idle_one_are_healthy() {
    let engine = start(EngineConfig {
        stall_timeout: Duration::from_secs(1),
        ..EngineConfig::default()
    });
    let rt = runtime();
    assert_eq!(engine.health(), EngineHealth::Healthy);
    // Idle for longer than the stall timeout: still healthy (no work, no stall).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(engine.health(), EngineHealth::Healthy);
    let mut stream = engine.submit(request(16)).unwrap();
    let mut tokens = 0;
    loop {
        let health = engine.health();
        assert!(health.is_healthy(), "{health}");
        match next_event(&rt, &mut stream) {
            Some(TokenEvent::Token { .. }) => tokens += 1,
            Some(TokenEvent::Finished(_)) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(tokens, 16);
    let stats = engine.stats();
    assert!(stats.steps > 0);
    assert_eq!(stats.step_duration.count, stats.steps);
    assert_eq!(
        stats.step_duration.counts.len(),
        stats.step_duration.bounds.len()
    );
    assert!(stats.step_duration.sum > 0.0);
    assert!(stats.last_step_unix_s.is_some_and(|t| t > 1.6e9));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(engine.health(), EngineHealth::Healthy, "idle again");
    engine.shutdown();
    wait_until("Dead after shutdown", || {
        matches!(engine.health(), EngineHealth::Dead { .. })
    });
    assert_eq!(
        engine.submit(request(4)).unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[test]
fn a_full_queue_refuses_and_places_come_back() {
    let engine = start(EngineConfig {
        max_num_seqs: 1,
        max_waiting: 1,
        ..EngineConfig::default()
    });
    let rt = runtime();
    // A starts (its place comes back at its first step) and runs for a while.
    let mut a = engine.submit(request(400)).unwrap();
    assert!(matches!(
        next_event(&rt, &mut a),
        Some(TokenEvent::Token { .. })
    ));
    assert_eq!(engine.num_queued(), 0);
    // B waits behind A (one running sequence at most) and fills the queue.
    let b = engine.submit(request(4)).unwrap();
    assert_eq!(engine.num_queued(), 1);
    let e = engine.submit(request(4)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Overloaded);
    // Dropping the waiting B gives its place back.
    drop(b);
    wait_until("B's place back", || engine.num_queued() == 0);
    let mut c = engine.submit(request(4)).unwrap();
    assert_eq!(engine.num_queued(), 1);
    // Dropping A lets C start and finish; every place and block comes back.
    drop(a);
    let mut tokens = 0;
    loop {
        match next_event(&rt, &mut c) {
            Some(TokenEvent::Token { .. }) => tokens += 1,
            Some(TokenEvent::Finished(m)) => {
                assert!(m.queue_time_s > 0.0);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(tokens, 4);
    assert_eq!(engine.num_queued(), 0);
    wait_until("every block back", || {
        let s = engine.stats();
        s.num_running == 0 && s.num_waiting == 0 && s.num_used_blocks == 0
    });
    engine.shutdown();
}

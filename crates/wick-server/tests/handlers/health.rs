//! `/health` (liveness) and `/ready` (readiness) through a server's life: loading,
//! serving, draining, and a backend that stalls or dies.

use crate::{Harness, Options};
use wick_engine::EngineHealth;

#[tokio::test]
async fn health_and_ready_follow_the_lifecycle_and_the_backend() {
    let h = Harness::with(Options {
        loading: true,
        ..Options::default()
    })
    .await;
    let probe = |path: &'static str| {
        let h = &h;
        async move { h.get(path).await }
    };
    // Loading: alive (a liveness probe must not kill a process mid-load), not ready.
    let (s, v) = probe("/health").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("loading")));
    let (s, v) = probe("/ready").await;
    assert_eq!((s, v["status"].as_str()), (503, Some("loading")));

    h.finish_loading();
    let (s, v) = probe("/health").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(probe("/ready").await.0, 200);

    // Stalled: both 503, saying so.
    h.backend.set_health(EngineHealth::Stalled { secs: 61.0 });
    for path in ["/health", "/ready"] {
        let (s, v) = probe(path).await;
        assert_eq!(s, 503, "{path}");
        assert_eq!(v["status"], "stalled");
        assert!(v["reason"].as_str().unwrap().contains("no progress"), "{v}");
    }
    h.backend.set_health(EngineHealth::Healthy);

    // Draining: alive (200), not ready (503).
    h.state.start_draining();
    let (s, v) = probe("/health").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("draining")));
    let (s, v) = probe("/ready").await;
    assert_eq!((s, v["status"].as_str()), (503, Some("draining")));

    // Dead: both 503 with the panic message.
    h.backend.set_health(EngineHealth::Dead {
        reason: "panicked at step 3".into(),
    });
    for path in ["/health", "/ready"] {
        let (s, v) = probe(path).await;
        assert_eq!((s, v["status"].as_str()), (503, Some("dead")), "{path}");
        assert!(
            v["reason"].as_str().unwrap().contains("panicked at step 3"),
            "{v}"
        );
    }
    // /metrics still answers, with the engine reported down.
    let r = h.client.get(h.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("wick:engine_alive"), "{text}");
}

#[tokio::test]
async fn a_dead_backend_refuses_new_requests_with_503() {
    let h = Harness::start().await;
    h.backend.set_health(EngineHealth::Dead {
        reason: "panicked".into(),
    });
    let (s, v) = h
        .post(
            "/v1/completions",
            &serde_json::json!({"prompt": "Hello", "max_tokens": 2}),
        )
        .await;
    crate::assert_error(s, &v, 503);
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let h = Harness::start().await;
    let r = h
        .client
        .get(h.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let r = h.client.get(h.url("/health")).send().await.unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 36, "{made}");
}

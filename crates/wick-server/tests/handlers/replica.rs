//! Every response names the replica that answered it (`x-wick-replica`, from
//! `--replica-id`): successes, streams, errors, unknown routes, probes and a server still
//! loading alike, so a client behind a load balancer always knows where it landed.

use crate::{Harness, Options};
use serde_json::json;

async fn replica_of(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, String) {
    let mut req = h.client.request(method, h.url(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let name = resp.headers()["x-wick-replica"]
        .to_str()
        .unwrap()
        .to_string();
    (status, name)
}

#[tokio::test]
async fn every_response_names_the_replica() {
    let h = Harness::with(Options {
        replica_id: Some("replica-7".into()),
        ..Default::default()
    })
    .await;
    let chat = json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2});
    let stream = json!({"model": "fake", "prompt": "hi", "max_tokens": 2, "stream": true});
    let bad = json!({"model": "fake", "prompt": "hi", "temperature": 9});
    use reqwest::Method;
    let cases = [
        (Method::POST, "/v1/chat/completions", Some(chat), 200),
        (Method::POST, "/v1/completions", Some(stream), 200),
        (Method::POST, "/v1/completions", Some(bad), 400),
        (Method::GET, "/v1/models", None, 200),
        (Method::GET, "/health", None, 200),
        (Method::GET, "/metrics", None, 200),
        (Method::GET, "/nowhere", None, 404),
        (Method::DELETE, "/v1/models", None, 405),
    ];
    for (method, path, body, want) in cases {
        let (status, name) = replica_of(&h, method.clone(), path, body).await;
        assert_eq!(
            (status, name.as_str()),
            (want, "replica-7"),
            "{method} {path}"
        );
    }
    // A server still loading names itself too (its 503).
    let loading = Harness::with(Options {
        replica_id: Some("replica-8".into()),
        loading: true,
        ..Default::default()
    })
    .await;
    let (status, name) = replica_of(&loading, Method::GET, "/ready", None).await;
    assert_eq!((status, name.as_str()), (503, "replica-8"));
    // The default is the host name: some non-empty name.
    let default = Harness::start().await;
    let (_, name) = replica_of(&default, Method::GET, "/health", None).await;
    assert!(!name.is_empty());
}

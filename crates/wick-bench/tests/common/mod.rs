//! A small fake OpenAI-compatible server for the integration tests: axum on
//! 127.0.0.1:0, a word-level `/tokenize`/`/detokenize`, Prometheus `/metrics`, and
//! completions, streamed or whole (`stream: false`), whose behaviour follows a schedule
//! by arrival order (success, 429, a stream cut mid-way, an aborted connection, a
//! malformed chunk, a slow first token, an in-band error, a stall after the first token;
//! a whole response does the same to its one body).

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// What the fake does with one streamed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Streams `max_tokens` tokens, a usage chunk and `[DONE]`.
    Ok,
    /// Streams half of `max_tokens`, then finishes normally ("stop", usage, `[DONE]`).
    Short,
    /// Answers 429.
    Http429,
    /// Streams half the tokens, then ends the body cleanly without `[DONE]`.
    Cut,
    /// Streams half the tokens, then breaks the connection.
    Abort,
    /// Streams one token, then a chunk that is not JSON.
    Malformed,
    /// Waits a minute before the first token.
    SlowFirst,
    /// Streams one token, then `{"error": ...}`.
    StreamError,
    /// Streams one token, then nothing for a minute.
    Stall,
}

/// Shared state and what the fake observed.
#[derive(Default)]
pub struct FakeState {
    pub schedule: Vec<Behavior>,
    pub tokenize: bool,
    /// Speak llama-cpp-python's `/extras/tokenize` dialect instead of vLLM's.
    pub extras_only: AtomicBool,
    pub token_delay: Duration,
    pub arrivals: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub generation_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub successes: AtomicU64,
    /// (path, body) of every completion request.
    pub bodies: Mutex<Vec<(String, Value)>>,
    vocab: Mutex<(HashMap<String, u32>, Vec<String>)>,
}

/// A running fake.
pub struct Fake {
    pub url: String,
    pub state: Arc<FakeState>,
}

/// Starts a fake on loopback.
pub async fn start(schedule: Vec<Behavior>, tokenize: bool, token_delay: Duration) -> Fake {
    let state = Arc::new(FakeState {
        schedule,
        tokenize,
        token_delay,
        ..FakeState::default()
    });
    let app = Router::new()
        .route(
            "/v1/models",
            get(|| async { Json(json!({"data": [{"id": "fake-model"}]})) }),
        )
        .route("/tokenize", post(tokenize_handler))
        .route("/detokenize", post(detokenize_handler))
        .route("/extras/tokenize", post(extras_tokenize))
        .route("/extras/detokenize", post(extras_detokenize))
        .route("/metrics", get(metrics_handler))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Without TCP_NODELAY, Nagle + delayed ACK hold each first body chunk ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Fake {
        url: format!("http://{addr}"),
        state,
    }
}

fn words(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

async fn tokenize_handler(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if !s.tokenize || s.extras_only.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let text = body["prompt"].as_str().unwrap_or_default();
    Json(tokenize(&s, text)).into_response()
}

async fn extras_tokenize(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if !s.extras_only.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut v = tokenize(&s, body["input"].as_str().unwrap_or_default());
    v.as_object_mut().unwrap().retain(|k, _| k == "tokens");
    Json(v).into_response()
}

async fn extras_detokenize(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if !s.extras_only.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({"text": detokenize(&s, &body)})).into_response()
}

fn tokenize(s: &FakeState, text: &str) -> Value {
    let mut vocab = s.vocab.lock().unwrap();
    let ids: Vec<u32> = words(text)
        .into_iter()
        .map(|w| {
            if let Some(id) = vocab.0.get(w) {
                return *id;
            }
            let id = vocab.1.len() as u32;
            vocab.1.push(w.to_string());
            vocab.0.insert(w.to_string(), id);
            id
        })
        .collect();
    json!({"tokens": ids, "count": ids.len(), "max_model_len": 8192})
}

async fn detokenize_handler(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    if !s.tokenize || s.extras_only.load(Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({"prompt": detokenize(&s, &body)})).into_response()
}

fn detokenize(s: &FakeState, body: &Value) -> String {
    let vocab = s.vocab.lock().unwrap();
    let text: Vec<String> = body["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| vocab.1[t.as_u64().unwrap() as usize].clone())
        .collect();
    text.join(" ")
}

async fn metrics_handler(State(s): State<Arc<FakeState>>) -> String {
    format!(
        "# TYPE fake:generation_tokens_total counter\nfake:generation_tokens_total {}\n\
         fake:prompt_tokens_total {}\nfake:request_success_total{{finished_reason=\"length\"}} {}\n",
        s.generation_tokens.load(Ordering::SeqCst),
        s.prompt_tokens.load(Ordering::SeqCst),
        s.successes.load(Ordering::SeqCst)
    )
}

async fn completions(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    let prompt = body["prompt"].as_str().unwrap_or_default().to_string();
    respond(
        s,
        "/v1/completions",
        body,
        words(&prompt).len() as u64,
        false,
    )
}

async fn chat(State(s): State<Arc<FakeState>>, Json(body): Json<Value>) -> Response {
    let n: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| words(m["content"].as_str().unwrap_or("")).len())
                .sum()
        })
        .unwrap_or(0);
    respond(s, "/v1/chat/completions", body, n as u64, true)
}

fn chunk(text: &str, chat: bool) -> Bytes {
    let v = if chat {
        json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
    } else {
        json!({"choices": [{"index": 0, "text": text, "finish_reason": null}]})
    };
    Bytes::from(format!("data: {v}\n\n"))
}

fn respond(s: Arc<FakeState>, path: &str, body: Value, prompt_tokens: u64, chat: bool) -> Response {
    let n = s.arrivals.fetch_add(1, Ordering::SeqCst);
    let behavior = s.schedule[n % s.schedule.len()];
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16);
    let stream = body["stream"] == true;
    s.bodies.lock().unwrap().push((path.to_string(), body));
    if behavior == Behavior::Http429 {
        let err = json!({"error": {"message": "rate limited", "type": "rate_limit"}});
        return (StatusCode::TOO_MANY_REQUESTS, Json(err)).into_response();
    }
    let in_flight = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
    if !stream {
        return whole(s, behavior, max_tokens, prompt_tokens, chat);
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if !produce(&s, behavior, max_tokens, prompt_tokens, chat, &tx).await {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn produce(
    s: &FakeState,
    behavior: Behavior,
    max_tokens: u64,
    prompt_tokens: u64,
    chat: bool,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> bool {
    let long = Duration::from_secs(60);
    let tokens = match behavior {
        Behavior::Cut | Behavior::Abort | Behavior::Short => max_tokens / 2,
        Behavior::Ok => max_tokens,
        _ => 1,
    };
    if behavior == Behavior::SlowFirst {
        tokio::time::sleep(long).await;
    }
    for _ in 0..tokens {
        if !s.token_delay.is_zero() {
            tokio::time::sleep(s.token_delay).await;
        }
        if tx.send(Ok(chunk(" tok", chat))).await.is_err() {
            return false;
        }
    }
    let tail: Result<Bytes, std::io::Error> = match behavior {
        Behavior::Ok | Behavior::Short => {
            let max_tokens = tokens;
            // Leaves the in-flight count before the client can see [DONE], so the count
            // never exceeds the client's concurrency.
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            s.generation_tokens.fetch_add(max_tokens, Ordering::SeqCst);
            s.prompt_tokens.fetch_add(prompt_tokens, Ordering::SeqCst);
            s.successes.fetch_add(1, Ordering::SeqCst);
            let usage = json!({"choices": [], "usage": {"prompt_tokens": prompt_tokens,
                "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}});
            Ok(Bytes::from(format!("data: {usage}\n\ndata: [DONE]\n\n")))
        }
        Behavior::Cut => return false,
        Behavior::Abort => Err(std::io::Error::other("connection reset")),
        Behavior::Malformed => Ok(Bytes::from_static(b"data: {\"choices\": [{\"text\": \n\n")),
        Behavior::StreamError => Ok(Bytes::from_static(
            b"data: {\"error\": {\"message\": \"engine overloaded\"}}\n\n",
        )),
        Behavior::Stall | Behavior::SlowFirst => {
            tokio::time::sleep(long).await;
            return false;
        }
        Behavior::Http429 => return false,
    };
    let _ = tx.send(tail).await;
    matches!(behavior, Behavior::Ok | Behavior::Short)
}

/// A whole (non-streamed) response under `behavior`: the JSON completion with usage, or
/// a body cut short, broken, not JSON, an error object, or one sent after a minute.
fn whole(
    s: Arc<FakeState>,
    behavior: Behavior,
    max_tokens: u64,
    prompt_tokens: u64,
    chat: bool,
) -> Response {
    let tokens = match behavior {
        Behavior::Short => max_tokens / 2,
        _ => max_tokens,
    };
    let text = " tok".repeat(tokens as usize);
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
    } else {
        json!({"index": 0, "text": text, "finish_reason": "length"})
    };
    let full = json!({"choices": [choice], "usage": {"prompt_tokens": prompt_tokens,
        "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}})
    .to_string();
    let half = full[..full.len() / 2].to_string();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let delay = s.token_delay * tokens as u32;
        tokio::time::sleep(delay).await;
        let parts: Vec<Result<Bytes, std::io::Error>> = match behavior {
            Behavior::Ok | Behavior::Short => {
                s.generation_tokens.fetch_add(tokens, Ordering::SeqCst);
                s.prompt_tokens.fetch_add(prompt_tokens, Ordering::SeqCst);
                s.successes.fetch_add(1, Ordering::SeqCst);
                vec![Ok(Bytes::from(full))]
            }
            Behavior::Cut => vec![Ok(Bytes::from(half))],
            Behavior::Abort => vec![
                Ok(Bytes::from(half)),
                Err(std::io::Error::other("connection reset")),
            ],
            Behavior::Malformed => vec![Ok(Bytes::from_static(b"{\"choices\": [{\"text\": "))],
            Behavior::StreamError => vec![Ok(Bytes::from_static(
                b"{\"error\": {\"message\": \"engine overloaded\"}}",
            ))],
            Behavior::SlowFirst | Behavior::Stall => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                vec![Ok(Bytes::from(full))]
            }
            Behavior::Http429 => Vec::new(),
        };
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        for p in parts {
            if tx.send(p).await.is_err() {
                break;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap()
}

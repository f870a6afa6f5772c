//! Handler tests: the real router and handlers on a loopback port, over a fake backend
//! (no model, no engine thread) and a tiny word-level tokenizer built here. They cover
//! every error status, health and readiness, SSE framing, usage, cancellation on
//! disconnect, and pin each response shape with insta snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod defaults;
mod errors;
mod fake_backend;
mod health;
mod replica;
mod snapshots;
mod streaming;
mod tools;
mod unsupported;

use fake_backend::FakeBackend;
use serde_json::Value;
use std::sync::Arc;
use wick_server::prompt::PromptBuilder;
use wick_server::protocol::ModelDefaults;
use wick_server::state::{AppState, Serving};
use wick_server::tool_parser::{ToolCallParserArg, ToolParserKind};
pub use wick_test_support::assert_error;
use wick_test_support::sse_payloads;

/// The fake model's words, by id. Whitespace separates tokens; decoding joins them with
/// spaces.
pub const VOCAB: [&str; 23] = [
    "<unk>",
    "<s>",
    "</s>",
    "Hello",
    "world",
    "the",
    "end",
    "user:",
    "assistant:",
    "hi",
    "a",
    "story",
    "STOP",
    "system:",
    // Tool calls (tools.rs): `<tool_call> {"name": "get_weather", "arguments": {"city":
    // "Paris"}} </tool_call>`, word by word.
    "<tool_call>",
    "</tool_call>",
    "{\"name\":",
    "\"get_weather\",",
    "\"arguments\":",
    "{\"city\":",
    "\"Paris\"}}",
    "Paris",
    "tool:",
];
/// End of sequence.
pub const EOS: u32 = 2;
/// Context length of the fake model.
pub const MAX_MODEL_LEN: usize = 64;
/// The fake model's chat template.
pub const TEMPLATE: &str =
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:";

/// A word-level tokenizer over [`VOCAB`].
fn tokenizer() -> tokenizers::Tokenizer {
    let vocab: serde_json::Map<String, Value> = VOCAB
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), Value::from(i)))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    json.to_string().parse().unwrap()
}

/// How to start a test server.
#[derive(Default)]
pub struct Options {
    /// Accepted API keys.
    pub api_keys: Vec<String>,
    /// Body limit (default 64 KiB).
    pub max_body_bytes: Option<usize>,
    /// Leave the server loading (no model yet).
    pub loading: bool,
    /// The model's sampling defaults (its generation_config.json).
    pub defaults: ModelDefaults,
    /// A chat template instead of [`TEMPLATE`].
    pub template: Option<&'static str>,
    /// The tool-call parser (default: hermes).
    pub tool_parser: Option<ToolCallParserArg>,
    /// `--replica-id` (default: the host name).
    pub replica_id: Option<String>,
}

/// The server under test: its address, state and fake backend.
pub struct Harness {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's state (to drain it, or read in-flight counts).
    pub state: Arc<AppState>,
    /// The fake backend behind it.
    pub backend: Arc<FakeBackend>,
    /// A client that opens a connection per request.
    pub client: reqwest::Client,
    defaults: ModelDefaults,
    template: &'static str,
    tool_parser: Option<ToolParserKind>,
}

impl Harness {
    /// A serving server with default options.
    pub async fn start() -> Harness {
        Harness::with(Options::default()).await
    }

    /// A server with `options`.
    pub async fn with(options: Options) -> Harness {
        let mut state = AppState::new(
            vec!["fake".into(), "fake-alias".into()],
            options.api_keys,
            options.max_body_bytes.unwrap_or(64 * 1024),
        );
        if let Some(id) = options.replica_id {
            state.replica_id = id;
        }
        let state = Arc::new(state);
        let backend = Arc::new(FakeBackend::new(VOCAB.len(), MAX_MODEL_LEN, EOS));
        let harness = Harness {
            base: String::new(),
            state: state.clone(),
            backend,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            defaults: options.defaults,
            template: options.template.unwrap_or(TEMPLATE),
            tool_parser: options
                .tool_parser
                .unwrap_or(ToolCallParserArg::Hermes)
                .resolve(options.template),
        };
        if !options.loading {
            harness.finish_loading();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = wick_server::routes::router(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Harness {
            base: format!("http://{addr}"),
            ..harness
        }
    }

    /// The model "has loaded": the fake backend starts serving.
    pub fn finish_loading(&self) {
        let special = wick_models::SpecialTokens {
            bos: Some((1, "<s>".into())),
            eos: Some((EOS, "</s>".into())),
            eos_token_ids: vec![EOS],
            add_bos: false,
        };
        let prompt = PromptBuilder::new(tokenizer(), Some(self.template), special).unwrap();
        let info = wick_server::backend::Backend::info(&*self.backend);
        let grammars = wick_server::structured::Grammars::new(
            prompt.tokenizer().clone(),
            info.vocab_size,
            info.eos_token_ids.clone(),
        );
        self.state.set_serving(Arc::new(Serving {
            backend: self.backend.clone(),
            prompt,
            defaults: self.defaults,
            metrics: self.state.metrics.clone(),
            created: 1_700_000_000,
            fingerprint: "fp_test".into(),
            tool_parser: self.tool_parser.clone(),
            grammars,
        }));
    }

    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GETs `path`: status and JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// POSTs `body`: status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
        (status, v)
    }

    /// POSTs a streaming request: every `data:` payload, in order.
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        sse_payloads(&r.text().await.unwrap())
    }
}

/// Ids of `words` in [`VOCAB`].
pub fn ids(words: &str) -> Vec<u32> {
    words
        .split_whitespace()
        .map(|w| VOCAB.iter().position(|v| *v == w).unwrap() as u32)
        .collect()
}

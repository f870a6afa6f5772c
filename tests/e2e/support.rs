//! A real `wick serve` process on loopback with SmolLM2, and small HTTP helpers.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use wick_test_support::{assert_error, sse_chunks, sse_payloads};

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub client: reqwest::Client,
}

impl Server {
    /// Starts `wick serve` on SmolLM2 (served as `smollm2`, dequantized: the golden
    /// references are of the dequantized weights) with `extra` flags and waits until
    /// /ready is 200 (503 while loading, while /health is already 200).
    pub async fn start(extra: &[&str]) -> Server {
        let mut flags = vec!["--quantization", "none"];
        flags.extend_from_slice(extra);
        Self::start_model(&wick_test_support::smollm2_gguf(), "smollm2", &flags).await
    }

    /// Starts `wick serve` on `model` served as `name`, as [`Server::start`].
    pub async fn start_model(model: &Path, name: &str, extra: &[&str]) -> Server {
        Self::launch(
            Path::new(env!("CARGO_BIN_EXE_wick")),
            model,
            name,
            extra,
            None,
        )
        .await
    }

    /// Starts the wick executable `exe` serving `model` as `name`, as [`Server::start`];
    /// over HTTPS when `tls_ca` is given (the PEM of the CA the client trusts; `extra`
    /// holds the server's `--ssl-certfile`/`--ssl-keyfile`).
    pub async fn launch(
        exe: &Path,
        model: &Path,
        name: &str,
        extra: &[&str],
        tls_ca: Option<&Path>,
    ) -> Server {
        Self::launch_env(exe, model, name, extra, tls_ca, &[]).await
    }

    /// As [`Server::launch`], with `env` set in the server's environment. It listens on
    /// any free port unless `extra` gives `--port` (a restart on the same port).
    pub async fn launch_env(
        exe: &Path,
        model: &Path,
        name: &str,
        extra: &[&str],
        tls_ca: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Server {
        let any_port: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = Command::new(exe)
            .args(["serve", "--model"])
            .arg(model)
            .args(["--served-model-name", name])
            .args(any_port)
            .args(["--kv-cache-memory", "256MiB"])
            // A fixed budget: choosing one from the measured step cost takes seconds in
            // this debug build at every start (the engine's tests cover that choice).
            .args(["--max-num-batched-tokens", "2048"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("WICK_API_KEY")
            .env_remove("WICK_RELEASE_NAME")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wick serve");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("address=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                {
                    let _ = tx.send(addr.trim_matches('"').to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server never listened: {:?}", logs.lock().unwrap()));
        let mut client = reqwest::Client::builder().timeout(Duration::from_secs(300));
        if let Some(ca) = tls_ca {
            let pem = std::fs::read(ca).unwrap();
            client = client
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
                .tls_built_in_root_certs(false);
        }
        let scheme = if tls_ca.is_some() { "https" } else { "http" };
        let server = Server {
            child,
            base: format!("{scheme}://{addr}"),
            logs,
            client: client.build().unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(r) = server.client.get(server.url("/ready")).send().await {
                if r.status() == 200 {
                    break;
                }
                assert_eq!(r.status(), 503, "ready while loading");
                // Alive while loading: liveness is 200, saying so.
                let health = server.get("/health").await;
                assert_eq!(health.status(), 200, "health while loading");
            }
            assert!(
                Instant::now() < deadline,
                "server never became healthy: {:?}",
                server.logs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Alive and not draining: ready too.
        assert_eq!(server.get("/ready").await.status(), 200);
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit code once the process has ended.
    pub fn try_wait(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// GETs `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    /// POSTs `body` as JSON; the raw response.
    pub async fn send_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POSTs `body`; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self.send_json(path, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}"));
        (status, v)
    }

    /// POSTs a streaming request; returns every `data:` payload (the last is `[DONE]`).
    pub async fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = self.send_json(path, body).await;
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/event-stream"), "{ct}");
        let text = r.text().await.unwrap();
        sse_payloads(&text)
    }

    /// GET /metrics as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric's value (first sample of that name).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.metrics().await, name)
    }

    /// Waits (bounded) until the engine has no request and no block in use.
    pub async fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self.metrics().await;
            if metric_value(&m, "wick:kv_cache_used_blocks") == 0.0
                && metric_value(&m, "wick:num_requests_running") == 0.0
                && metric_value(&m, "wick:num_requests_waiting") == 0.0
            {
                return;
            }
            assert!(Instant::now() < deadline, "never idle:\n{m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Text of token ids, through /detokenize.
    pub async fn detokenize(&self, ids: &[u32]) -> String {
        let (s, v) = self.post("/detokenize", &json!({ "tokens": ids })).await;
        assert_eq!(s, 200, "{v}");
        v["prompt"].as_str().unwrap().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Concatenated text of choice `index` over chunks (chat `delta.content` or `text`).
pub fn streamed_text(chunks: &[Value], index: u64) -> String {
    let mut out = String::new();
    for c in chunks {
        for ch in c["choices"].as_array().unwrap() {
            if ch["index"] == index {
                if let Some(t) = ch["delta"]["content"].as_str().or(ch["text"].as_str()) {
                    out.push_str(t);
                }
            }
        }
    }
    out
}

pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

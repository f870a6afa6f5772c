//! `wick serve`: its settings ([`ServeArgs`]) and its life: bind, answer `/health` with
//! 503 while the model loads, serve, and on SIGTERM/SIGINT drain (stop taking requests,
//! let in-flight ones finish up to `--drain-timeout`) before exiting cleanly.

use crate::metrics::Metrics;
use crate::prompt::PromptBuilder;
use crate::protocol::ModelDefaults;
use crate::state::{AppState, Serving};
use axum::serve::ListenerExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wick_engine::{EngineConfig, EngineHandle};
use wick_models::device::{device_name, parse_dtype, select_device};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of `wick serve` (each may also come from `--config FILE`).
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model: a Hugging Face directory, a .gguf file, or a hub id org/name[@revision].
    #[arg(long)]
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Name(s) clients use in `model` (default: the --model value).
    #[arg(long)]
    pub served_model_name: Vec<String>,
    /// Accepted API key(s); repeat the flag or separate with commas. Env: WICK_API_KEY.
    #[arg(
        long,
        env = "WICK_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one engine step.
    #[arg(long, default_value_t = 2048)]
    pub max_num_batched_tokens: usize,
    /// KV cache size, in bytes or with a unit (512MiB, 4GiB); default 1GiB.
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// Longest prompt + completion (default: the model's context length).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Most requests waiting to start; more get 429.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// auto (f32 on CPU, bf16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// cpu, cuda or cuda:N (default: first GPU if built with CUDA and present, else CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Largest request body, in bytes or with a unit.
    #[arg(long, default_value = "16MiB")]
    pub max_body_size: String,
    /// Turn off automatic prefix caching.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
    /// The address cannot be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    /// The model could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(String),
}

/// Runs the server until SIGTERM/SIGINT and a clean drain.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let bytes = |name: &str, v: &str| {
        wick_core::parse_bytes(v).map_err(|e| ServeError::Config(format!("--{name}: {e}")))
    };
    let max_body = bytes("max-body-size", &args.max_body_size)? as usize;
    let kv_cache_memory = args
        .kv_cache_memory
        .as_deref()
        .map(|v| bytes("kv-cache-memory", v))
        .transpose()?;
    let names = if args.served_model_name.is_empty() {
        vec![args.model.clone()]
    } else {
        args.served_model_name.clone()
    };
    let keys: Vec<String> = args
        .api_key
        .iter()
        .filter(|k| !k.is_empty())
        .cloned()
        .collect();
    let state = Arc::new(AppState::new(names, keys, max_body));

    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| ServeError::Bind(addr.clone(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(addr, e))?;
    tracing::info!(address = %local, "listening (health is 503 until the model has loaded)");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = crate::routes::router(state.clone());
    // Tokens go out as small writes: without TCP_NODELAY, Nagle's algorithm meets the
    // client's delayed ACKs and adds ~40 ms to TTFT and every inter-token time.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    let engine_config = EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_waiting: args.max_waiting,
        kv_cache_memory,
        max_model_len: args.max_model_len,
        enable_prefix_caching: !args.no_prefix_caching,
        ..EngineConfig::default()
    };
    let load_args = args.clone();
    let metrics = state.metrics.clone();
    let loading = tokio::task::spawn_blocking(move || load(&load_args, engine_config, metrics));
    let serving = tokio::select! {
        loaded = loading => loaded
            .map_err(|e| ServeError::Load(e.to_string()))??,
        _ = shutdown_signal() => {
            tracing::info!("signal received while loading; exiting");
            return Ok(());
        }
    };
    state.set_serving(serving.clone());
    tracing::info!(address = %local, model = %state.model_name(), "serving");

    shutdown_signal().await;
    state.start_draining();
    let deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    tracing::info!(
        in_flight = state.in_flight(),
        drain_timeout_s = args.drain_timeout,
        "draining"
    );
    while state.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if state.in_flight() > 0 {
        tracing::warn!(
            in_flight = state.in_flight(),
            "drain timeout: aborting the rest"
        );
    }
    let _ = stop_tx.send(());
    serving.engine.shutdown();
    // Connections still streaming after the deadline are cut.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// Loads the model and starts its engine (blocking).
fn load(
    args: &ServeArgs,
    engine_config: EngineConfig,
    metrics: Arc<Metrics>,
) -> Result<Arc<Serving>, ServeError> {
    let err = |e: &dyn std::fmt::Display| ServeError::Load(e.to_string());
    let device = select_device(args.device.as_deref()).map_err(|e| err(&e))?;
    let dtype =
        parse_dtype(&args.dtype).map_err(|e| ServeError::Config(format!("--dtype: {e}")))?;
    let loaded = wick_models::load(
        &args.model,
        &wick_models::LoadOptions {
            dtype,
            device: device.clone(),
        },
    )
    .map_err(|e| err(&e))?;
    let template =
        match &args.chat_template {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ServeError::Config(format!("--chat-template {}: {e}", path.display()))
            })?),
            None => loaded.chat_template.clone(),
        };
    let model_dtype = loaded.model.dtype();
    tracing::info!(
        source = %loaded.source,
        dtype = ?model_dtype,
        device = %device_name(&device),
        load_time_s = loaded.load_time.as_secs_f64(),
        "model loaded"
    );
    let g = &loaded.generation_defaults;
    let defaults = ModelDefaults {
        temperature: g.temperature.map(|v| v as f32),
        top_p: g.top_p.map(|v| v as f32),
        top_k: g.top_k.and_then(|v| usize::try_from(v).ok()),
    };
    let prompt = PromptBuilder::new(
        loaded.tokenizer,
        template.as_deref(),
        loaded.special.clone(),
    )
    .map_err(|e| ServeError::Config(e.to_string()))?;
    let engine = EngineHandle::start(loaded.model, loaded.special.eos_token_ids, engine_config)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    Ok(Arc::new(Serving {
        engine,
        prompt,
        defaults,
        metrics,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        fingerprint: format!(
            "fp_wick-{}-{:?}-{}",
            env!("CARGO_PKG_VERSION"),
            model_dtype,
            device_name(&device)
        )
        .to_lowercase(),
    }))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

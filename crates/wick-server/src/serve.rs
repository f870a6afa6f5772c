//! `wick serve`: its settings ([`ServeArgs`]) and its life: bind (HTTP, or HTTPS with
//! `--ssl-certfile`/`--ssl-keyfile` through [`crate::tls`]; one code path after that),
//! answer `/ready` with 503 (and `/health` with 200: alive) while the model loads, serve,
//! watch the engine, and on SIGTERM/SIGINT drain (stop taking requests, `/ready` 503,
//! let in-flight ones finish up to `--drain-timeout`) before exiting cleanly.
//!
//! An engine that dies (its thread panicked) makes `/health` and `/ready` answer 503 at
//! once (they ask the backend); in-flight requests end with a 500. A few seconds later
//! (so those 500s get written) [`run`] returns [`ServeError::EngineDied`] and the process
//! exits non-zero, for its supervisor (systemd, Kubernetes) to restart it. A stalled
//! engine (work but no step for `--engine-stall-timeout`) only turns the probes 503: it
//! may recover, and liveness probes decide.

use crate::backend::Backend;
use crate::build_info::{BuildInfo, VersionInfo};
use crate::stack::{GenerationConfigMode, ServingStack, StackArgs};
use crate::state::{AppState, Serving};
use axum::serve::ListenerExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wick_engine::{EngineConfig, EngineHealth};

/// How often the engine's health is looked at.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// How long a dead engine's server keeps answering (in-flight 500s, probes 503) before
/// the process exits.
const EXIT_GRACE: Duration = Duration::from_secs(3);

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
    /// Model: a Hugging Face directory, a .gguf file, or a hub id org/name (optionally @revision).
    #[arg(long)]
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the log says which).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --ssl-keyfile.
    #[arg(long, requires = "ssl_keyfile")]
    pub ssl_certfile: Option<PathBuf>,
    /// The PEM private key of --ssl-certfile.
    #[arg(long, requires = "ssl_certfile")]
    pub ssl_keyfile: Option<PathBuf>,
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
    /// Token budget of one engine step (prompt chunks and decode tokens together).
    /// Default: on CUDA 2048; on the CPU chosen at start from the measured step cost, so
    /// that a step holding a prompt chunk stalls running streams for at most a few
    /// decode steps (the log says what was chosen).
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// KV cache size, in bytes or with a unit (512MiB, 4GiB). Default: on CUDA what
    /// --gpu-memory-utilization leaves after the weights and a profiled step's activations;
    /// on the CPU 1GiB.
    #[arg(long)]
    pub kv_cache_memory: Option<String>,
    /// Fraction of the GPU's memory wick may use (weights, activations, KV cache), in (0, 1];
    /// sizes the KV cache unless --kv-cache-memory is given. Unused on the CPU.
    #[arg(long, default_value_t = wick_engine::engine::DEFAULT_GPU_MEMORY_UTILIZATION)]
    pub gpu_memory_utilization: f64,
    /// Longest prompt + completion (default: the model's context length).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Most requests waiting to start; more get 429.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// auto (f32 on CPU, bf16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// auto: GGUF weights stay in their GGUF types and multiply with quantized kernels
    /// (other checkpoints load as with none); none: dequantize every weight to --dtype;
    /// gguf: as auto, and an error for a checkpoint that is not GGUF.
    #[arg(long, default_value = "auto", value_parser = crate::stack::parse_quantization)]
    pub quantization: wick_models::Quantization,
    /// cpu, cuda or cuda:N (default: first GPU if built with CUDA and present, else CPU).
    #[arg(long)]
    pub device: Option<String>,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// auto: the model's generation_config.json sets the temperature, top_p, top_k and
    /// repetition_penalty of requests that leave them unset; vllm: it does not (its eos
    /// ids still end generation).
    #[arg(long, value_enum, default_value = "auto")]
    pub generation_config: GenerationConfigMode,
    /// Seconds in-flight requests may take to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Largest request body, in bytes or with a unit.
    #[arg(long, default_value = "16MiB")]
    pub max_body_size: String,
    /// Turn off automatic prefix caching.
    #[arg(long)]
    pub no_prefix_caching: bool,
    /// Capture decode steps as CUDA graphs (per batch size bucket 1..256 and context
    /// length bucket, on first use) and replay them. Off by default until a GPU run proves
    /// it. On the CPU the steps are padded and rerun as the graphs would replay them (for
    /// tests; no speedup).
    #[arg(long)]
    pub cuda_graphs: bool,
    /// LoRA adapters served beside the base model, as `name=path` (a local PEFT
    /// directory or a hub id); requests pick one by `model`. Several may follow the flag.
    #[arg(long, num_args = 1.., value_parser = parse_lora_module)]
    pub lora_modules: Vec<(String, String)>,
    /// LoRA adapters resident in the model at once (more are swapped in on demand).
    #[arg(long, default_value_t = 8)]
    pub max_loras: usize,
    /// Highest LoRA rank accepted.
    #[arg(long, default_value_t = 64)]
    pub max_lora_rank: usize,
    /// Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (behind the API key).
    #[arg(long)]
    pub enable_lora_runtime_updates: bool,
    /// Adapters loaded at run time must be directories inside this one.
    #[arg(long)]
    pub lora_root: Option<PathBuf>,
    /// How tool calls are read from chat output (tool_choice auto): hermes
    /// (`<tool_call>{...}</tool_call>`), llama3_json, none; auto: hermes when the chat
    /// template mentions `<tool_call>`, else none.
    #[arg(long, value_enum, default_value = "auto")]
    pub tool_call_parser: crate::tool_parser::ToolCallParserArg,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The release this install is, reported by GET /version (default: the "release" of
    /// manifest.json in the parent of the executable's directory, if there is one).
    #[arg(long, env = "WICK_RELEASE_NAME")]
    pub release_name: Option<String>,
    /// This replica's name, sent back in every response's `x-wick-replica` header (so a
    /// client behind a load balancer sees which replica served it); default: the host
    /// name.
    #[arg(long, env = "WICK_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Seconds the engine may hold work without finishing a step before `/health` and
    /// `/ready` answer 503 (a hung kernel or device).
    #[arg(long, default_value_t = 60.0)]
    pub engine_stall_timeout: f64,
    /// Dollars per hour of the GPU this replica runs on (e.g. 2.10 for an H100), exposed
    /// as `wick:gpu_hour_price_dollars` for the cost per million tokens rules of
    /// deploy/prometheus; 0 (the default) leaves it unset.
    #[arg(long, default_value_t = 0.0)]
    pub gpu_hour_price: f64,
    /// Test-only fault injection: `panic-at-step:N` or `stall-at-step:N` (builds with
    /// the `fault-injection` feature only; release builds never have it).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub fault_inject: Option<String>,
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
    /// The engine died while serving; the process should exit non-zero.
    #[error("the engine died: {0}")]
    EngineDied(String),
}

impl From<crate::stack::StackError> for ServeError {
    fn from(e: crate::stack::StackError) -> Self {
        match e {
            crate::stack::StackError::Config(m) => Self::Config(m),
            crate::stack::StackError::Load(m) => Self::Load(m),
        }
    }
}

/// Runs the server until SIGTERM/SIGINT and a clean drain (`Ok`), or until the engine
/// dies ([`ServeError::EngineDied`], a few seconds after, so in-flight requests get
/// their errors written). `build` is what the binary was built as (`GET /version`).
pub async fn run(args: ServeArgs, build: BuildInfo) -> Result<(), ServeError> {
    let exe = std::env::current_exe().ok();
    let release = crate::build_info::release_name(args.release_name.as_deref(), exe.as_deref())
        .map_err(|e| ServeError::Config(e.to_string()))?;
    tracing::info!(
        version = %build.version,
        git_sha = %build.git_sha,
        features = ?build.features,
        release = %release.as_deref().unwrap_or("none"),
        "wick"
    );
    let bytes = |name: &str, v: &str| {
        wick_core::parse_bytes(v).map_err(|e| ServeError::Config(format!("--{name}: {e}")))
    };
    let max_body = bytes("max-body-size", &args.max_body_size)? as usize;
    let kv_cache_memory = args
        .kv_cache_memory
        .as_deref()
        .map(|v| bytes("kv-cache-memory", v))
        .transpose()?;
    let engine_config = engine_config(&args, kv_cache_memory)?;
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
    if !(args.gpu_hour_price.is_finite() && args.gpu_hour_price >= 0.0) {
        return Err(ServeError::Config(format!(
            "--gpu-hour-price must be 0 or more dollars, not {}",
            args.gpu_hour_price
        )));
    }
    let mut state = AppState::new(names, keys, max_body);
    state.metrics.set_gpu_hour_price(args.gpu_hour_price);
    state.version = VersionInfo::new(&build, release);
    if let Some(id) = &args.replica_id {
        if id.is_empty() || axum::http::HeaderValue::from_str(id).is_err() {
            return Err(ServeError::Config(format!(
                "--replica-id: {id:?} is not a header value (visible ASCII)"
            )));
        }
        state.replica_id = id.clone();
    }
    state.lora_runtime_updates = args.enable_lora_runtime_updates;
    state.lora_root = args.lora_root.clone();
    let state = Arc::new(state);

    let tls = match (&args.ssl_certfile, &args.ssl_keyfile) {
        (Some(cert), Some(key)) => Some(
            crate::tls::server_config(cert, key).map_err(|e| ServeError::Config(e.to_string()))?,
        ),
        (None, None) => None,
        _ => {
            return Err(ServeError::Config(
                "--ssl-certfile and --ssl-keyfile go together".into(),
            ))
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };

    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| ServeError::Bind(addr.clone(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(addr.clone(), e))?;
    tracing::info!(
        address = %local,
        scheme = %scheme,
        "listening (/ready is 503 until the model has loaded)"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = crate::routes::router(state.clone());
    let server = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)
                .map_err(|e| ServeError::Bind(addr, e))?;
            spawn_server(listener, app, stop_rx)
        }
        // Tokens go out as small writes: without TCP_NODELAY, Nagle's algorithm meets the
        // client's delayed ACKs and adds ~40 ms to TTFT and every inter-token time (the
        // TLS listener sets it too).
        None => spawn_server(
            listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            }),
            app,
            stop_rx,
        ),
    };

    let stack_args = StackArgs {
        model: args.model.clone(),
        dtype: args.dtype.clone(),
        quantization: args.quantization,
        device: args.device.clone(),
        chat_template: args.chat_template.clone(),
        generation_config: args.generation_config,
    };
    let lora_modules = args.lora_modules.clone();
    let loading = tokio::task::spawn_blocking(move || {
        let stack = ServingStack::build(&stack_args, engine_config)?;
        for (name, path) in &lora_modules {
            (stack.engine.load_lora(name, path)).map_err(|e| {
                crate::stack::StackError::Load(format!("--lora-modules {name}={path}: {e}"))
            })?;
        }
        Ok::<_, crate::stack::StackError>(stack)
    });
    let stack = tokio::select! {
        loaded = loading => loaded
            .map_err(|e| ServeError::Load(e.to_string()))??,
        _ = shutdown_signal() => {
            tracing::info!("signal received while loading; exiting");
            return Ok(());
        }
    };
    state.metrics.set_model_weight_bytes(stack.weight_bytes);
    let backend: Arc<dyn Backend> = Arc::new(stack.engine);
    let tool_parser = (args.tool_call_parser).resolve(stack.prompt.chat_template_source());
    let info = backend.info();
    let grammars = crate::structured::Grammars::new(
        stack.prompt.tokenizer().clone(),
        info.vocab_size,
        info.eos_token_ids.clone(),
    );
    state.set_serving(Arc::new(Serving {
        backend: backend.clone(),
        prompt: stack.prompt,
        defaults: stack.defaults,
        metrics: state.metrics.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        fingerprint: stack.fingerprint,
        tool_parser,
        grammars,
    }));
    tracing::info!(address = %local, scheme = %scheme, model = %state.model_name(), "serving");

    let died = tokio::select! {
        _ = shutdown_signal() => None,
        reason = engine_death(backend.as_ref()) => Some(reason),
    };
    if let Some(reason) = died {
        tracing::error!(
            reason = %reason,
            exit_in_s = EXIT_GRACE.as_secs_f64(),
            "the engine has died: /health and /ready answer 503; exiting for the supervisor to restart wick"
        );
        tokio::time::sleep(EXIT_GRACE).await;
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        return Err(ServeError::EngineDied(reason));
    }
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
    let health = backend.health();
    backend.shutdown();
    // Connections still streaming after the deadline are cut.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if let EngineHealth::Dead { reason } = health {
        return Err(ServeError::EngineDied(reason));
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves `app` on `listener` (plain TCP or TLS: one code path) until `stop` fires, then
/// lets open connections finish.
fn spawn_server<L>(
    listener: L,
    app: axum::Router,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<std::io::Result<()>>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
    })
}

/// `name=path` of `--lora-modules`.
pub fn parse_lora_module(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.trim().is_empty() && !path.trim().is_empty() => {
            Ok((name.trim().to_string(), path.trim().to_string()))
        }
        _ => Err(format!("{s:?}: expected name=path")),
    }
}

/// The engine's settings from the flags.
fn engine_config(
    args: &ServeArgs,
    kv_cache_memory: Option<u64>,
) -> Result<EngineConfig, ServeError> {
    let stall_timeout = Duration::try_from_secs_f64(args.engine_stall_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ServeError::Config(format!(
                "--engine-stall-timeout: {} is not a positive number of seconds",
                args.engine_stall_timeout
            ))
        })?;
    Ok(EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_waiting: args.max_waiting,
        kv_cache_memory,
        gpu_memory_utilization: args.gpu_memory_utilization,
        max_model_len: args.max_model_len,
        enable_prefix_caching: !args.no_prefix_caching,
        cuda_graphs: args.cuda_graphs,
        // Slots only when adapters can be served: an unused LoRA costs nothing.
        max_loras: if args.lora_modules.is_empty() && !args.enable_lora_runtime_updates {
            0
        } else {
            args.max_loras.max(1)
        },
        max_lora_rank: args.max_lora_rank,
        stall_timeout,
        #[cfg(feature = "fault-injection")]
        fault: args
            .fault_inject
            .as_deref()
            .map(parse_fault)
            .transpose()
            .map_err(|e| ServeError::Config(format!("--fault-inject: {e}")))?,
        ..EngineConfig::default()
    })
}

/// `panic-at-step:N` or `stall-at-step:N`.
#[cfg(feature = "fault-injection")]
fn parse_fault(spec: &str) -> Result<wick_engine::Fault, String> {
    let (kind, step) = spec
        .split_once(':')
        .ok_or_else(|| format!("{spec:?}: expected panic-at-step:N or stall-at-step:N"))?;
    let step: u64 = step
        .parse()
        .map_err(|_| format!("{spec:?}: {step:?} is not a step number"))?;
    match kind {
        "panic-at-step" => Ok(wick_engine::Fault::PanicAtStep(step)),
        "stall-at-step" => Ok(wick_engine::Fault::StallAtStep(step)),
        _ => Err(format!("{spec:?}: unknown fault {kind:?}")),
    }
}

/// Resolves with the reason once the backend has died; logs stalls as they come and go.
async fn engine_death(backend: &dyn Backend) -> String {
    let mut stalled = false;
    loop {
        tokio::time::sleep(HEALTH_POLL).await;
        match backend.health() {
            EngineHealth::Dead { reason } => return reason,
            h @ EngineHealth::Stalled { .. } => {
                if !stalled {
                    tracing::error!(reason = %h, "engine stalled: /health and /ready answer 503");
                }
                stalled = true;
            }
            EngineHealth::Healthy => {
                if stalled {
                    tracing::info!("engine stepping again");
                }
                stalled = false;
            }
        }
    }
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

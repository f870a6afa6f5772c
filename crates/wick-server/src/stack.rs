//! The serving stack, built in one place for `wick serve` and `wick generate`: device ->
//! dtype -> load -> chat template / [`PromptBuilder`] -> engine start.
//!
//! Two steps, so a caller may size the engine from the model and its tokenized prompt
//! (`wick generate` sizes its KV cache for one request): [`LoadedStack::load`] (everything
//! but the engine) then [`LoadedStack::start`]; [`ServingStack::build`] does both.
//! Blocking (loading reads and dequantizes weights): call it off the async runtime.

use crate::prompt::PromptBuilder;
use crate::protocol::ModelDefaults;
use std::path::PathBuf;
use wick_engine::{EngineConfig, EngineHandle};
use wick_models::device::{device_name, parse_dtype, select_device};
use wick_models::generation_config::GenerationConfig;
pub use wick_models::Quantization;
use wick_models::{Model, SpecialTokens};

/// What the stack is built from (the model-related flags of `serve` and `generate`).
#[derive(Debug, Clone, Default)]
pub struct StackArgs {
    /// A Hugging Face directory, a .gguf file, or a hub id org/name (optionally @revision).
    pub model: String,
    /// auto, f32, f16 or bf16.
    pub dtype: String,
    /// Whether GGUF weights stay quantized (`--quantization auto|none|gguf`).
    pub quantization: wick_models::Quantization,
    /// cpu, cuda or cuda:N; `None`: the first GPU if any, else the CPU.
    pub device: Option<String>,
    /// A Jinja chat template file to use instead of the model's.
    pub chat_template: Option<PathBuf>,
    /// Whether generation_config.json's sampling defaults apply.
    pub generation_config: GenerationConfigMode,
}

/// Where requests' sampling defaults come from (vLLM's `--generation-config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum GenerationConfigMode {
    /// The model's generation_config.json (temperature, top_p, top_k,
    /// repetition_penalty) fills what a request leaves unset.
    #[default]
    Auto,
    /// The file's sampling defaults are ignored: OpenAI's apply. Its eos ids still end
    /// generation, as in vLLM.
    Vllm,
}

/// Why the stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A setting is invalid (named in the message).
    #[error("{0}")]
    Config(String),
    /// The model could not be loaded.
    #[error("cannot load the model: {0}")]
    Load(String),
}

/// A loaded model with its prompt side, before its engine starts.
pub struct LoadedStack {
    /// Tokenizer, chat template, special tokens.
    pub prompt: PromptBuilder,
    /// Sampling defaults from the model's generation_config.json.
    pub defaults: ModelDefaults,
    /// `system_fingerprint` of responses: wick's version and the model's dtype/device.
    pub fingerprint: String,
    /// Bytes of the model's weights as loaded (the `wick:model_weight_bytes` gauge).
    pub weight_bytes: u64,
    model: Model,
    special: SpecialTokens,
}

impl LoadedStack {
    /// Selects the device, loads the model and compiles its chat template.
    pub fn load(args: &StackArgs) -> Result<Self, StackError> {
        let device = select_device(args.device.as_deref())
            .map_err(|e| StackError::Config(format!("--device: {e}")))?;
        let dtype =
            parse_dtype(&args.dtype).map_err(|e| StackError::Config(format!("--dtype: {e}")))?;
        let loaded = wick_models::load(
            &args.model,
            &wick_models::LoadOptions {
                dtype,
                device: device.clone(),
                quantization: args.quantization,
            },
        )
        .map_err(|e| StackError::Load(e.to_string()))?;
        let template = match &args.chat_template {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                StackError::Config(format!("--chat-template {}: {e}", path.display()))
            })?),
            None => loaded.chat_template.clone(),
        };
        let model_dtype = loaded.model.dtype();
        tracing::info!(
            source = %loaded.source,
            dtype = ?model_dtype,
            quantization = %args.quantization,
            weight_bytes = %loaded.model.weight_bytes(),
            device = %device_name(&device),
            load_time_s = loaded.load_time.as_secs_f64(),
            "model loaded"
        );
        let defaults = sampling_defaults(
            args.generation_config,
            &loaded.generation_config,
            &loaded.special.eos_token_ids,
        );
        let prompt = PromptBuilder::new(
            loaded.tokenizer,
            template.as_deref(),
            loaded.special.clone(),
        )
        .map_err(|e| StackError::Config(e.to_string()))?;
        Ok(Self {
            prompt,
            defaults,
            fingerprint: fingerprint(&format!("{model_dtype:?}"), &device_name(&device)),
            weight_bytes: loaded.model.weight_bytes().total() as u64,
            model: loaded.model,
            special: loaded.special,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &wick_models::ModelConfig {
        self.model.config()
    }

    /// KV cache bytes that hold `tokens` tokens (rounded up to whole blocks, plus one).
    pub fn kv_cache_bytes_for(&self, tokens: usize, block_size: usize) -> u64 {
        let block_bytes = wick_models::KvCache::bytes_per_block(
            self.model.config(),
            block_size,
            self.model.dtype(),
        );
        ((tokens.div_ceil(block_size.max(1)) + 1) * block_bytes) as u64
    }

    /// Starts the engine over the model.
    pub fn start(self, config: EngineConfig) -> Result<ServingStack, StackError> {
        let engine = EngineHandle::start(self.model, self.special.eos_token_ids, config)
            .map_err(|e| StackError::Config(e.to_string()))?;
        Ok(ServingStack {
            engine,
            prompt: self.prompt,
            defaults: self.defaults,
            fingerprint: self.fingerprint,
            weight_bytes: self.weight_bytes,
        })
    }
}

/// A model being served: its engine and its prompt side.
pub struct ServingStack {
    /// The running engine.
    pub engine: EngineHandle,
    /// Tokenizer, chat template, special tokens.
    pub prompt: PromptBuilder,
    /// Sampling defaults from the model's generation_config.json.
    pub defaults: ModelDefaults,
    /// `system_fingerprint` of responses.
    pub fingerprint: String,
    /// Bytes of the model's weights as loaded.
    pub weight_bytes: u64,
}

impl ServingStack {
    /// Loads the model and starts its engine with `config`.
    pub fn build(args: &StackArgs, config: EngineConfig) -> Result<Self, StackError> {
        LoadedStack::load(args)?.start(config)
    }
}

/// The sampling defaults `mode` takes from `g`, logged once.
fn sampling_defaults(
    mode: GenerationConfigMode,
    g: &GenerationConfig,
    eos: &[u32],
) -> ModelDefaults {
    let defaults = match mode {
        GenerationConfigMode::Auto => ModelDefaults::from_generation_config(g),
        GenerationConfigMode::Vllm => ModelDefaults::default(),
    };
    let ModelDefaults {
        temperature,
        top_p,
        top_k,
        repetition_penalty,
    } = defaults;
    if mode == GenerationConfigMode::Vllm {
        tracing::info!(
            eos_token_ids = ?eos,
            "--generation-config vllm: generation_config.json's sampling defaults are ignored"
        );
    } else if defaults.is_empty() {
        tracing::info!(eos_token_ids = ?eos, "no sampling defaults in generation_config.json");
    } else {
        tracing::info!(
            ?temperature,
            ?top_p,
            ?top_k,
            ?repetition_penalty,
            eos_token_ids = ?eos,
            "sampling defaults from generation_config.json apply to what requests leave unset"
        );
    }
    defaults
}

/// Parses `--quantization` (auto, none or gguf) for clap.
pub fn parse_quantization(s: &str) -> Result<wick_models::Quantization, String> {
    s.parse()
        .map_err(|e: wick_models::ModelError| e.to_string())
}

/// `fp_wick-<version>-<dtype>-<device>`, lower case.
fn fingerprint(dtype: &str, device: &str) -> String {
    format!("fp_wick-{}-{dtype}-{device}", env!("CARGO_PKG_VERSION")).to_lowercase()
}

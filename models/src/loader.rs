//! Loading a model from any source into a [`LoadedModel`]: weights on the device in the
//! serving dtype, the tokenizer, the chat template, special tokens and generation
//! defaults. One entry point, [`load`], whatever `--model` names.

use crate::config::{Architecture, ModelConfig};
use crate::generation_config::GenerationConfig;
use crate::gguf_metadata as meta;
use crate::model::Model;
use crate::quantization::Quantization;
use crate::source::{resolve_hf_files, HfFiles, ModelSource};
use crate::tokenizer::gguf as gguf_tok;
use crate::weights::Weights;
use crate::{ModelError, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Serving dtype; `None` picks f32 on CPU and bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Where the weights go.
    pub device: Device,
    /// Whether GGUF weights stay quantized (`--quantization`).
    pub quantization: Quantization,
}

/// Ids and strings of the special tokens the server needs.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    /// Beginning-of-sequence token, if the model has one.
    pub bos: Option<(u32, String)>,
    /// The primary end-of-sequence token (its string is passed to chat templates).
    pub eos: Option<(u32, String)>,
    /// Every token id that ends generation (generation_config may list several).
    pub eos_token_ids: Vec<u32>,
    /// Whether prompts get a BOS prepended.
    pub add_bos: bool,
}

/// A model ready to run, with everything needed to talk to it.
pub struct LoadedModel {
    /// The network.
    pub model: Model,
    /// The tokenizer (never adds special tokens by itself; see `special.add_bos`).
    pub tokenizer: Tokenizer,
    /// Jinja chat template, if the checkpoint has one: `chat_template.jinja` beside the
    /// model (where transformers v5 saves it), else tokenizer_config.json's.
    pub chat_template: Option<String>,
    /// Special tokens.
    pub special: SpecialTokens,
    /// generation_config.json (sampling defaults, eos ids); empty when there is none.
    pub generation_config: GenerationConfig,
    /// Human-readable source ("GGUF file ...", "directory ...", "hub org/name@rev").
    pub source: String,
    /// Wall time of the load.
    pub load_time: Duration,
}

/// The serving dtype for `device` when none is asked for.
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Loads the model `spec` names (directory, .gguf file or hub id).
pub fn load(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let start = Instant::now();
    let dtype = opts.dtype.unwrap_or_else(|| default_dtype(&opts.device));
    let source = ModelSource::parse(spec)?;
    let mut loaded = match &source {
        ModelSource::Gguf(path) => load_gguf(path, dtype, &opts.device, opts.quantization)?,
        _ if opts.quantization == Quantization::Gguf => {
            return Err(ModelError::invalid(
                "quantization",
                format!("gguf needs a GGUF checkpoint; {spec} is not a .gguf file"),
            ))
        }
        other => {
            let files = resolve_hf_files(other)?;
            let desc = match other {
                ModelSource::Hub { repo, revision } => format!("hub {repo}@{revision}"),
                _ => format!("directory {spec}"),
            };
            load_hf(&files, desc, dtype, &opts.device)?
        }
    };
    loaded.load_time = start.elapsed();
    tracing::info!(
        source = %loaded.source,
        architecture = ?loaded.model.config().architecture,
        dtype = ?dtype,
        quantization = %opts.quantization,
        device = ?opts.device,
        weight_bytes = loaded.model.weight_bytes().total(),
        weight_bytes_by_type = %loaded.model.weight_bytes(),
        secs = loaded.load_time.as_secs_f64(),
        "model loaded"
    );
    Ok(loaded)
}

fn read_text(what: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        what: what.to_string(),
        path: path.to_path_buf(),
        source,
    })
}

fn read_json(what: &str, path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read_text(what, path)?)
        .map_err(|e| ModelError::invalid(what, e.to_string()))
}

/// A special token in tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => vec![],
    }
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named templates of
/// which "default" is taken.
fn tokenizer_config_template(tok_cfg: &serde_json::Value) -> Option<String> {
    match tok_cfg.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(String::from),
        _ => None,
    }
}

fn load_hf(files: &HfFiles, source: String, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let cfg = ModelConfig::from_hf_json(&read_text("config.json", &files.config)?)?;
    let config_json = read_json("config.json", &files.config)?;
    let weights = Weights::from_safetensors(&files.weights)?;
    let model = Model::load(&cfg, &weights, dtype, device)?;
    let tokenizer = Tokenizer::from_file(&files.tokenizer)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", files.tokenizer.display())))?;
    let tok_cfg = match &files.tokenizer_config {
        Some(p) => read_json("tokenizer_config.json", p)?,
        None => serde_json::Value::Null,
    };
    let generation_config = match &files.generation_config {
        Some(p) => GenerationConfig::from_json(&read_text("generation_config.json", p)?)?,
        None => GenerationConfig::default(),
    };
    let with_id = |s: Option<String>| s.and_then(|s| tokenizer.token_to_id(&s).map(|id| (id, s)));
    let bos = with_id(token_string(tok_cfg.get("bos_token")));
    let eos = with_id(token_string(tok_cfg.get("eos_token")));
    let mut eos_token_ids = generation_config.eos_token_ids.clone();
    if eos_token_ids.is_empty() {
        eos_token_ids = ids_of(config_json.get("eos_token_id"));
    }
    if let Some((id, _)) = &eos {
        if !eos_token_ids.contains(id) {
            eos_token_ids.push(*id);
        }
    }
    let add_bos = tok_cfg
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let chat_template = match &files.chat_template {
        Some(p) => Some(read_text("chat_template.jinja", p)?),
        None => tokenizer_config_template(&tok_cfg),
    };
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        special: SpecialTokens {
            bos,
            eos,
            eos_token_ids,
            add_bos,
        },
        generation_config,
        source,
        load_time: Duration::ZERO,
    })
}

fn load_gguf(
    path: &Path,
    dtype: DType,
    device: &Device,
    quantization: Quantization,
) -> Result<LoadedModel> {
    let (content, file) = Weights::open_gguf(path)?;
    let tokenizer = gguf_tok::tokenizer_from_gguf(&content.metadata)?;
    let special = gguf_special_tokens(&content.metadata)?;
    let chat_template = gguf_tok::chat_template_from_gguf(&content.metadata);
    let embd = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| {
            ModelError::Missing(format!("tensor token_embd.weight in {}", path.display()))
        })?;
    let vocab_size = *embd.shape.dims().first().unwrap_or(&0);
    let has_output = content.tensor_infos.contains_key("output.weight");
    let cfg = ModelConfig::from_gguf(&content.metadata, vocab_size, has_output)?;
    let weights = Weights::Gguf {
        // llama.cpp permutes q/k rows only when converting llama-arch checkpoints.
        unpermute_qk: matches!(
            cfg.architecture,
            Architecture::Llama | Architecture::Mistral
        ),
        num_heads: cfg.num_heads,
        num_kv_heads: cfg.num_kv_heads,
        keep_quantized: quantization.keeps_gguf_quantized(),
        content,
        file: Mutex::new(file),
        path: path.to_path_buf(),
    };
    let model = Model::load(&cfg, &weights, dtype, device)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        chat_template,
        special,
        generation_config: GenerationConfig::default(),
        source: format!("GGUF file {}", path.display()),
        load_time: Duration::ZERO,
    })
}

fn gguf_special_tokens(md: &HashMap<String, gguf_file::Value>) -> Result<SpecialTokens> {
    let g = gguf_tok::GgufSpecialTokens::from_gguf(md)?;
    let mut eos_token_ids: Vec<u32> = g.eos.iter().map(|(id, _)| *id).collect();
    if let Some(eot) = meta::opt_int::<u32>(md, "tokenizer.ggml.eot_token_id")? {
        if !eos_token_ids.contains(&eot) {
            eos_token_ids.push(eot);
        }
    }
    Ok(SpecialTokens {
        bos: g.bos,
        eos: g.eos,
        eos_token_ids,
        add_bos: g.add_bos,
    })
}

//! The tiny fine-tuned-weights fixtures (../shared/fixtures/tiny, see its README): four
//! small random checkpoints saved the way transformers v5 saves them, each with two PEFT
//! LoRA adapters, and greedy references in `golden.json`. Here: where they are, the typed
//! `golden.json`, loading a model, and each case as a [`Case`] for
//! [`crate::assert_matches_golden`].

use crate::{fixtures_dir, Case, Step};
use serde::Deserialize;
use std::path::PathBuf;

/// Most tokens a reference generates (it also stops at [`EOS`]).
pub const MAX_TOKENS: usize = 16;
/// The end-of-sequence id every tiny model uses.
pub const EOS: u32 = 2;

/// ../shared/fixtures/tiny (or `$WICK_FIXTURES/tiny`).
pub fn tiny_dir() -> PathBuf {
    fixtures_dir().join("tiny")
}

/// golden.json.
#[derive(Deserialize, Debug, Clone)]
pub struct TinyGolden {
    /// What computed the references.
    pub reference: String,
    /// One entry per model.
    pub models: Vec<TinyModel>,
}

/// One model of golden.json.
#[derive(Deserialize, Debug, Clone)]
pub struct TinyModel {
    /// Its name (also its directory).
    pub name: String,
    /// Its directory, relative to [`tiny_dir`].
    pub path: String,
    /// `architectures[0]` of its config.json.
    pub architecture: String,
    /// Tokens the tokenizer has (added tokens included).
    pub tokenizer_len: usize,
    /// Rows of the embedding (may be more than the tokenizer has).
    pub weights_vocab: usize,
    /// config.json's `rope_parameters`, as written.
    pub rope_parameters: serde_json::Value,
    /// Its LoRA adapters.
    pub adapters: Vec<TinyAdapter>,
    /// Base and adapter cases.
    pub cases: Vec<TinyCase>,
}

/// One PEFT LoRA adapter of a model.
#[derive(Deserialize, Debug, Clone)]
pub struct TinyAdapter {
    /// Its name (what cases' `adapter` says).
    pub name: String,
    /// Its directory, relative to [`tiny_dir`].
    pub path: String,
    /// Rank.
    pub r: usize,
    /// lora_alpha.
    pub lora_alpha: f64,
    /// Scaling alpha / sqrt(r) instead of alpha / r.
    #[serde(default)]
    pub use_rslora: bool,
    /// The modules it adapts (q_proj, ...).
    pub target_modules: Vec<String>,
}

/// One reference generation.
#[derive(Deserialize, Debug, Clone)]
pub struct TinyCase {
    /// Name (unique per model and adapter).
    pub id: String,
    /// Raw prompt (no special tokens added; those written in it are matched).
    pub prompt: Option<String>,
    /// Or chat messages, rendered with the chat template (`add_generation_prompt`).
    pub messages: Option<serde_json::Value>,
    /// `None` for the base model, else the adapter's name.
    pub adapter: Option<String>,
    /// The prompt's ids.
    pub prompt_token_ids: Vec<u32>,
    /// The greedy continuation (at most [`MAX_TOKENS`], stops at [`EOS`]).
    pub output_token_ids: Vec<u32>,
    /// Its text.
    pub output_text: String,
    /// Per generated token: id, logprob, margin.
    pub steps: Vec<Step>,
}

impl TinyGolden {
    /// Reads golden.json.
    pub fn load() -> Self {
        let path = tiny_dir().join("golden.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> &TinyModel {
        self.models
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no tiny model {name:?}"))
    }
}

impl TinyModel {
    /// Its checkpoint directory.
    pub fn dir(&self) -> PathBuf {
        tiny_dir().join(&self.path)
    }

    /// The directory of adapter `name`.
    pub fn adapter_dir(&self, name: &str) -> PathBuf {
        let a = self
            .adapters
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("{}: no adapter {name:?}", self.name));
        tiny_dir().join(&a.path)
    }

    /// The base-model cases (no adapter).
    pub fn base_cases(&self) -> impl Iterator<Item = &TinyCase> {
        self.cases.iter().filter(|c| c.adapter.is_none())
    }

    /// Loads the model with wick in `dtype` on the CPU.
    pub fn load(&self, dtype: candle_core::DType) -> wick_models::LoadedModel {
        let dir = self.dir();
        wick_models::load(
            dir.to_str().expect("utf-8 path"),
            &wick_models::LoadOptions {
                dtype: Some(dtype),
                device: candle_core::Device::Cpu,
                quantization: wick_models::Quantization::None,
            },
        )
        .unwrap_or_else(|e| panic!("load {}: {e}", self.name))
    }
}

impl TinyCase {
    /// The case as a [`Case`] (`max_tokens` [`MAX_TOKENS`]), for
    /// [`crate::assert_matches_golden`] and [`crate::comparable_len`]; its id names the
    /// model and the adapter too.
    pub fn as_case(&self, model: &TinyModel) -> Case {
        Case {
            id: format!(
                "{}/{}/{}",
                model.name,
                self.adapter.as_deref().unwrap_or("base"),
                self.id
            ),
            prompt: self.prompt.clone(),
            messages: self.messages.clone(),
            max_tokens: MAX_TOKENS,
            prompt_token_ids: self.prompt_token_ids.clone(),
            output_token_ids: self.output_token_ids.clone(),
            output_text: self.output_text.clone(),
            steps: self.steps.clone(),
        }
    }
}

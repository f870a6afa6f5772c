//! LoRA adapters as PEFT saves them (`adapter_config.json` + `adapter_model.safetensors`),
//! read and checked against the base model's config, into host tensors ready to be copied
//! into an adapter slot of the model (see [`crate::layers::lora`]).
//!
//! What is served: LoRA (`peft_type` "LORA") on any of q/k/v/o/gate/up/down_proj, any rank
//! up to the server's limit, `lora_alpha` with plain (`alpha / r`) or rank-stabilised
//! (`use_rslora`: `alpha / sqrt(r)`) scaling. The scaling is folded into B at load, so a
//! slot holds `A` (`[r, in]`) and `scaling * B` (`[out, r]`).
//!
//! What is refused, with an error naming the field: `modules_to_save`, DoRA (`use_dora`),
//! embedding or lm_head adapters (`target_modules` naming them, `trainable_token_indices`),
//! per-module ranks or alphas (`rank_pattern`, `alpha_pattern`), trained biases (`bias`,
//! `lora_bias`), `fan_in_fan_out`, and `target_modules` given as a regular expression. A
//! tensor whose name is not a LoRA A/B of a target module, or whose shape does not fit the
//! base model, is an error naming the tensor and both shapes.

use crate::config::ModelConfig;
use crate::source::{resolve_files, ModelSource};
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

/// The projections an adapter may target, in a fixed order (the index of a module's
/// slot stacks in every layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraModule {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl LoraModule {
    /// Every module, in slot order.
    pub const ALL: [Self; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// PEFT's name (`target_modules` entries).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The block holding it (`self_attn` or `mlp`).
    fn block(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            Self::Gate | Self::Up | Self::Down => "mlp",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// `(in, out)` features of the projection in a model of `cfg`.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        match self {
            Self::Q => (h, q),
            Self::K | Self::V => (h, kv),
            Self::O => (q, h),
            Self::Gate | Self::Up => (h, i),
            Self::Down => (i, h),
        }
    }
}

/// One adapted projection: `A` `[rank, in]` and the scaled `B` `[out, rank]`, f32 on the
/// host.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down-projection, `[rank, in]`.
    pub a: Tensor,
    /// Up-projection times the adapter's scaling, `[out, rank]`.
    pub b: Tensor,
}

/// A loaded adapter: per layer, per [`LoraModule`], the pair if the adapter targets it.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Rank `r`.
    pub rank: usize,
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA (already folded into B).
    pub scaling: f64,
    /// The modules it targets.
    pub target_modules: Vec<LoraModule>,
    /// `base_model_name_or_path` from its config (informational).
    pub base_model: Option<String>,
    /// `layers[layer][module as usize]`.
    pub layers: Vec<[Option<LoraPair>; 7]>,
    /// Where it was read from.
    pub path: PathBuf,
}

/// The parts of adapter_config.json that decide how the weights are applied.
#[derive(Debug, Clone, PartialEq)]
struct AdapterConfig {
    rank: usize,
    scaling: f64,
    targets: Vec<LoraModule>,
    base_model: Option<String>,
}

impl LoraAdapter {
    /// Reads the adapter at `spec` (a local PEFT directory or a hub id) for a base model
    /// of `cfg`, refusing a rank above `max_rank`.
    pub fn load(spec: &str, cfg: &ModelConfig, max_rank: usize) -> Result<Self> {
        let source = ModelSource::parse(spec)?;
        let files = resolve_files(
            &source,
            &["adapter_config.json", "adapter_model.safetensors"],
        )?;
        let text = std::fs::read_to_string(&files[0]).map_err(|e| ModelError::Io {
            what: "adapter_config.json".into(),
            path: files[0].clone(),
            source: e,
        })?;
        let config = parse_config(&text, max_rank)?;
        let tensors = candle_core::safetensors::load(&files[1], &Device::Cpu)
            .map_err(|e| ModelError::invalid("adapter_model.safetensors", e.to_string()))?;
        let mut adapter = Self::from_tensors(&config, tensors, cfg)?;
        adapter.path = files[1].parent().map(PathBuf::from).unwrap_or_default();
        Ok(adapter)
    }

    fn from_tensors(
        config: &AdapterConfig,
        tensors: HashMap<String, Tensor>,
        cfg: &ModelConfig,
    ) -> Result<Self> {
        let mut a_of: HashMap<(usize, LoraModule), Tensor> = HashMap::new();
        let mut b_of: HashMap<(usize, LoraModule), Tensor> = HashMap::new();
        for (name, t) in tensors {
            let (layer, module, is_a) = parse_tensor_name(&name, cfg.num_layers)?;
            if !config.targets.contains(&module) {
                return Err(ModelError::invalid(
                    "adapter_model.safetensors",
                    format!(
                        "tensor {name} adapts {}, which target_modules does not list",
                        module.name()
                    ),
                ));
            }
            let (inp, out) = module.dims(cfg);
            let expected = if is_a {
                vec![config.rank, inp]
            } else {
                vec![out, config.rank]
            };
            if t.dims() != expected.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name,
                    expected,
                    actual: t.dims().to_vec(),
                });
            }
            let t = t.to_dtype(DType::F32)?;
            if is_a {
                a_of.insert((layer, module), t);
            } else {
                b_of.insert((layer, module), t);
            }
        }
        if a_of.is_empty() {
            return Err(ModelError::invalid(
                "adapter_model.safetensors",
                "no LoRA tensors (lora_A / lora_B) found",
            ));
        }
        let mut layers: Vec<[Option<LoraPair>; 7]> = (0..cfg.num_layers)
            .map(|_| std::array::from_fn(|_| None))
            .collect();
        for (key, a) in a_of {
            let Some(b) = b_of.remove(&key) else {
                return Err(ModelError::Missing(format!(
                    "tensor {} (its lora_A is there)",
                    peft_name(key.0, key.1, "lora_B")
                )));
            };
            let b = (b * config.scaling)?;
            layers[key.0][key.1 as usize] = Some(LoraPair { a, b });
        }
        if let Some((layer, module)) = b_of.into_keys().next() {
            return Err(ModelError::Missing(format!(
                "tensor {} (its lora_B is there)",
                peft_name(layer, module, "lora_A")
            )));
        }
        Ok(Self {
            rank: config.rank,
            scaling: config.scaling,
            target_modules: config.targets.clone(),
            base_model: config.base_model.clone(),
            layers,
            path: PathBuf::new(),
        })
    }

    /// Bytes of its weights in f32.
    pub fn num_bytes(&self) -> usize {
        (self.layers.iter().flatten().flatten())
            .map(|p| (p.a.elem_count() + p.b.elem_count()) * 4)
            .sum()
    }
}

/// PEFT's tensor name for `kind` ("lora_A"/"lora_B") of `module` in `layer`.
fn peft_name(layer: usize, module: LoraModule, kind: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.{kind}.weight",
        module.block(),
        module.name()
    )
}

/// `base_model.model.model.layers.{i}.{block}.{module}.lora_{A|B}.weight` ->
/// `(i, module, is_a)`.
fn parse_tensor_name(name: &str, num_layers: usize) -> Result<(usize, LoraModule, bool)> {
    let bad = |why: &str| {
        Err(ModelError::invalid(
            "adapter_model.safetensors",
            format!("tensor {name}: {why}"),
        ))
    };
    let Some(rest) = name.strip_prefix("base_model.model.model.layers.") else {
        return bad("not a LoRA weight of a decoder layer (embedding and lm_head adapters are not supported)");
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let [layer, block, module, kind, "weight"] = parts.as_slice() else {
        return bad("expected layers.N.<block>.<module>.lora_A|lora_B.weight");
    };
    let Ok(layer) = layer.parse::<usize>() else {
        return bad("the layer index is not a number");
    };
    if layer >= num_layers {
        return bad(&format!("layer {layer}, the model has {num_layers}"));
    }
    let Some(module) = LoraModule::from_name(module) else {
        return bad(&format!(
            "module {module:?} cannot be adapted (q/k/v/o/gate/up/down_proj can)"
        ));
    };
    if *block != module.block() {
        return bad(&format!("{} belongs to {}", module.name(), module.block()));
    }
    match *kind {
        "lora_A" => Ok((layer, module, true)),
        "lora_B" => Ok((layer, module, false)),
        other => bad(&format!(
            "{other} is not a LoRA A/B weight (DoRA magnitudes and embedding adapters are not supported)"
        )),
    }
}

/// Reads and checks adapter_config.json.
fn parse_config(text: &str, max_rank: usize) -> Result<AdapterConfig> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ModelError::invalid("adapter_config.json", e.to_string()))?;
    let bad = |field: &str, why: String| {
        Err(ModelError::invalid(
            "adapter_config.json",
            format!("`{field}`: {why}"),
        ))
    };
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = field("peft_type") {
        if t.as_str() != Some("LORA") {
            return bad("peft_type", format!("{t} is not supported (LORA is)"));
        }
    }
    let rank = match field("r").and_then(Value::as_u64) {
        Some(r) if r >= 1 => r as usize,
        _ => return bad("r", "missing or not a positive integer".into()),
    };
    if rank > max_rank {
        return bad(
            "r",
            format!("rank {rank} exceeds the server's --max-lora-rank {max_rank}"),
        );
    }
    let alpha = match field("lora_alpha") {
        None => 8.0, // PEFT's default
        Some(a) => match a.as_f64() {
            Some(a) => a,
            None => return bad("lora_alpha", format!("{a} is not a number")),
        },
    };
    let rslora = field("use_rslora")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let truthy = |k: &str| match field(k) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty() && s != "none",
        Some(_) => true,
    };
    for (k, why) in [
        ("use_dora", "DoRA adapters are not supported"),
        (
            "modules_to_save",
            "adapters that replace whole modules are not supported",
        ),
        (
            "trainable_token_indices",
            "embedding adapters are not supported",
        ),
        ("rank_pattern", "per-module ranks are not supported"),
        ("alpha_pattern", "per-module alphas are not supported"),
        ("bias", "trained biases are not supported"),
        ("lora_bias", "trained biases are not supported"),
        (
            "fan_in_fan_out",
            "fan_in_fan_out (Conv1D) weights are not supported",
        ),
        ("layer_replication", "layer replication is not supported"),
    ] {
        if truthy(k) {
            return bad(
                k,
                format!("{why} (found {})", field(k).unwrap_or(&Value::Null)),
            );
        }
    }
    let targets = match field("target_modules") {
        Some(Value::Array(names)) => {
            let mut targets = Vec::new();
            for n in names {
                let Some(m) = n.as_str().and_then(LoraModule::from_name) else {
                    return bad(
                        "target_modules",
                        format!("{n} cannot be adapted (q/k/v/o/gate/up/down_proj can)"),
                    );
                };
                targets.push(m);
            }
            targets
        }
        Some(Value::String(s)) => match LoraModule::from_name(s) {
            Some(m) => vec![m],
            None => {
                return bad(
                    "target_modules",
                    format!("{s:?}: a regular expression is not supported; list module names"),
                )
            }
        },
        _ => return bad("target_modules", "missing".into()),
    };
    let scaling = if rslora {
        alpha / (rank as f64).sqrt()
    } else {
        alpha / rank as f64
    };
    Ok(AdapterConfig {
        rank,
        scaling,
        targets,
        base_model: field("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true,
        "target_modules": ["q_proj", "v_proj"], "modules_to_save": null, "use_dora": false,
        "rank_pattern": {}, "alpha_pattern": {}, "bias": "none", "lora_bias": false,
        "fan_in_fan_out": false, "base_model_name_or_path": "tiny"}"#;

    #[test]
    fn reads_scaling_and_targets() {
        let c = parse_config(OK, 64).unwrap();
        assert_eq!(c.rank, 4);
        assert_eq!(c.scaling, 4.0); // 8 / sqrt(4)
        assert_eq!(c.targets, vec![LoraModule::Q, LoraModule::V]);
        let plain = OK.replace("\"use_rslora\": true", "\"use_rslora\": false");
        assert_eq!(parse_config(&plain, 64).unwrap().scaling, 2.0);
    }

    #[test]
    fn refuses_what_it_cannot_serve_naming_the_field() {
        let cases = [
            ("\"use_dora\": false", "\"use_dora\": true", "use_dora"),
            (
                "\"modules_to_save\": null",
                "\"modules_to_save\": [\"lm_head\"]",
                "modules_to_save",
            ),
            (
                "\"rank_pattern\": {}",
                "\"rank_pattern\": {\"q_proj\": 8}",
                "rank_pattern",
            ),
            ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias"),
            ("\"r\": 4", "\"r\": 128", "--max-lora-rank"),
            ("\"r\": 4", "\"rank\": 4", "`r`"),
            (
                "\"q_proj\", \"v_proj\"",
                "\"q_proj\", \"embed_tokens\"",
                "embed_tokens",
            ),
            (
                "[\"q_proj\", \"v_proj\"]",
                "\".*proj\"",
                "regular expression",
            ),
            ("\"LORA\"", "\"IA3\"", "peft_type"),
        ];
        for (from, to, needle) in cases {
            let text = OK.replace(from, to);
            assert_ne!(text, OK, "{from}");
            let e = parse_config(&text, 64).unwrap_err().to_string();
            assert!(e.contains(needle), "{to}: {e}");
        }
    }

    #[test]
    fn tensor_names_are_checked() {
        let n = |s: &str| parse_tensor_name(s, 2);
        let (l, m, a) = n("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
        assert_eq!((l, m, a), (1, LoraModule::Down, true));
        for bad in [
            "base_model.model.model.layers.2.mlp.down_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.down_proj.lora_A.weight",
            "base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector.weight",
            "base_model.model.lm_head.lora_A.weight",
            "base_model.model.model.layers.0.mlp.foo_proj.lora_A.weight",
        ] {
            assert!(n(bad).is_err(), "{bad}");
        }
    }
}

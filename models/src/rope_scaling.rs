//! Rope scaling as checkpoints declare it, read into one [`RopeScaling`]: from
//! `config.json` in either layout (transformers v5's `rope_parameters`, which carries
//! `rope_theta` inside it, or v4's top-level `rope_theta` beside `rope_scaling`) and from
//! GGUF metadata (`{arch}.rope.scaling.*`).
//!
//! Invariants: a rope type wick does not implement is an error naming it, never a silent
//! default (a wrong rope changes every token); values are resolved here the way
//! transformers v5 resolves them (`original_max_position_embeddings` defaults to
//! `max_position_embeddings`, yarn's attention factor from `factor` and `mscale`), so the
//! rotary tables ([`crate::layers::rotary`]) only compute.

use crate::gguf_metadata::{self as meta, Metadata};
use crate::{ModelError, Result};
use serde::Deserialize;

/// The rope types wick implements, as `rope_type` names them.
pub const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "yarn", "llama3"];

/// How the rotary frequencies are scaled beyond plain rope.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (every inverse frequency divided by it).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// YaRN: interpolation blended with extrapolation per frequency, and cos/sin scaled
    /// by an attention factor.
    Yarn(YarnRopeScaling),
    /// Llama 3.1-style frequency-dependent scaling.
    Llama3(Llama3RopeScaling),
}

impl RopeScaling {
    /// The rope type's name, as `rope_type` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Linear { .. } => "linear",
            Self::Yarn(_) => "yarn",
            Self::Llama3(_) => "llama3",
        }
    }

    /// What cos and sin are multiplied by (1 except for yarn).
    pub fn attention_factor(&self) -> f64 {
        match self {
            Self::Yarn(y) => y.attention_factor,
            _ => 1.0,
        }
    }
}

/// YaRN parameters, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct YarnRopeScaling {
    /// Context extension factor.
    pub factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
    /// Rotations above which a frequency is extrapolated (kept as is); 32 by default.
    pub beta_fast: f64,
    /// Rotations below which a frequency is interpolated (divided by `factor`); 1 by default.
    pub beta_slow: f64,
    /// Multiplies cos and sin.
    pub attention_factor: f64,
    /// Whether the correction range is rounded outwards to whole dimensions.
    pub truncate: bool,
}

/// Llama 3.1-style frequency-dependent rope scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    /// Overall scale factor for low frequencies.
    pub factor: f64,
    /// Wavelength threshold (as a fraction of the original context) for low frequencies.
    pub low_freq_factor: f64,
    /// Wavelength threshold for high frequencies, which stay unscaled.
    pub high_freq_factor: f64,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// YaRN's magnitude correction for a context extended `scale` times.
fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

/// One rope dict of config.json (`rope_parameters` or `rope_scaling`).
#[derive(Deserialize, Default)]
struct HfRopeDict {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    attention_factor: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    truncate: Option<bool>,
    partial_rotary_factor: Option<f64>,
}

/// The rope fields of config.json, as they appear at its top level.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfRopeFields {
    /// v5: `{rope_type, rope_theta, factor, ...}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// v4: `{rope_type | type, factor, ...}` or null.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// v4: the rotary base.
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// The rotary base and scaling that config.json declares.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Rotary base.
    pub theta: f64,
    /// Scaling, if any.
    pub scaling: Option<RopeScaling>,
}

const DEFAULT_THETA: f64 = 10_000.0;

fn bad(message: String) -> ModelError {
    ModelError::invalid("config.json", message)
}

/// A positive whole number of positions.
fn positions(key: &str, v: f64) -> Result<usize> {
    if v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        Ok(v as usize)
    } else {
        Err(bad(format!("rope {key} {v} is not a positive integer")))
    }
}

fn positive(what: &str, key: &str, v: Option<f64>) -> Result<f64> {
    match v {
        None => Err(bad(format!("rope type {what} needs `{key}`"))),
        Some(v) if v > 0.0 && v.is_finite() => Ok(v),
        Some(v) => Err(bad(format!("rope {key} {v} must be positive"))),
    }
}

impl HfRopeFields {
    /// Resolves theta and scaling as transformers v5 does: a non-null `rope_scaling`
    /// (v4) wins over `rope_parameters` (v5); `rope_theta` inside the dict wins over the
    /// top-level one; `max_position_embeddings` is the default original context.
    pub fn resolve(&self, max_position_embeddings: usize) -> Result<RopeConfig> {
        let dict = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(v), _) if !v.is_null() => v,
            (_, Some(v)) if !v.is_null() => v,
            _ => &serde_json::Value::Null,
        };
        let d: HfRopeDict = match dict {
            serde_json::Value::Null => HfRopeDict::default(),
            serde_json::Value::Object(o) if o.values().any(|v| v.is_object()) => {
                return Err(bad(
                    "per-layer-type rope_parameters are not supported".into()
                ))
            }
            v => HfRopeDict::deserialize(v)
                .map_err(|e| bad(format!("rope_parameters/rope_scaling: {e}")))?,
        };
        let theta = d.rope_theta.or(self.rope_theta).unwrap_or(DEFAULT_THETA);
        if !(theta > 0.0 && theta.is_finite()) {
            return Err(bad(format!("rope_theta {theta} must be positive")));
        }
        if let Some(p) = d.partial_rotary_factor.filter(|&p| p != 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor {p} is not supported (rope over the whole head only)"
            )));
        }
        let rope_type = d
            .rope_type
            .as_deref()
            .or(d.legacy_type.as_deref())
            .unwrap_or("default");
        let original = d
            .original_max_position_embeddings
            .map(|v| positions("original_max_position_embeddings", v))
            .transpose()?
            .unwrap_or(max_position_embeddings);
        let scaling = match rope_type {
            "default" => None,
            "linear" => Some(RopeScaling::Linear {
                factor: positive("linear", "factor", d.factor)?,
            }),
            "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
                factor: positive("llama3", "factor", d.factor)?,
                low_freq_factor: positive("llama3", "low_freq_factor", d.low_freq_factor)?,
                high_freq_factor: positive("llama3", "high_freq_factor", d.high_freq_factor)?,
                original_max_position_embeddings: original,
            })),
            "yarn" => {
                // An explicit null factor: the extension the two context lengths imply.
                let factor = match d.factor {
                    None => max_position_embeddings as f64 / original as f64,
                    f => positive("yarn", "factor", f)?,
                };
                let attention_factor = match (d.attention_factor, d.mscale, d.mscale_all_dim) {
                    (Some(a), _, _) => a,
                    // Python truthiness: both given and non-zero.
                    (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                        yarn_mscale(factor, m) / yarn_mscale(factor, all)
                    }
                    _ => yarn_mscale(factor, 1.0),
                };
                Some(RopeScaling::Yarn(YarnRopeScaling {
                    factor,
                    original_max_position_embeddings: original,
                    // `or` in transformers: 0 and null both mean the default.
                    beta_fast: d.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: d.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0),
                    attention_factor,
                    truncate: d.truncate.unwrap_or(true),
                }))
            }
            other => {
                return Err(bad(format!(
                    "rope type {other:?} is not supported (supported: {})",
                    SUPPORTED_ROPE_TYPES.join(", ")
                )))
            }
        };
        Ok(RopeConfig { theta, scaling })
    }
}

/// The rope scaling GGUF metadata declares under `{arch}.rope.scaling.*` (llama.cpp's
/// keys); `rope.scale_linear` of older files is linear scaling too.
pub(crate) fn from_gguf(
    md: &Metadata,
    arch: &str,
    max_position_embeddings: usize,
) -> Result<Option<RopeScaling>> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let f64_or = |k: &str, default: f64| -> Result<f64> {
        Ok(meta::opt_f64(md, &key(k))?.unwrap_or(default))
    };
    let original = || -> Result<usize> {
        Ok(meta::opt_int(md, &key("scaling.original_context_length"))?
            .unwrap_or(max_position_embeddings))
    };
    let gguf_bad = |m: String| ModelError::invalid("GGUF metadata", m);
    let factor = |default: Option<f64>| -> Result<f64> {
        match (meta::opt_f64(md, &key("scaling.factor"))?, default) {
            (Some(f), _) | (None, Some(f)) if f > 0.0 && f.is_finite() => Ok(f),
            (None, None) => Err(ModelError::Missing(format!(
                "GGUF metadata {}",
                key("scaling.factor")
            ))),
            (Some(f), _) | (None, Some(f)) => Err(gguf_bad(format!(
                "{} {f} must be positive",
                key("scaling.factor")
            ))),
        }
    };
    Ok(match meta::opt_str(md, &key("scaling.type"))? {
        None => match meta::opt_f64(md, &key("scale_linear"))? {
            Some(f) if f > 0.0 && f != 1.0 => Some(RopeScaling::Linear { factor: f }),
            _ => None,
        },
        Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: factor(None)?,
        }),
        Some("yarn") => {
            let factor = factor(None)?;
            Some(RopeScaling::Yarn(YarnRopeScaling {
                factor,
                original_max_position_embeddings: original()?,
                beta_fast: f64_or("scaling.yarn_beta_fast", 32.0)?,
                beta_slow: f64_or("scaling.yarn_beta_slow", 1.0)?,
                // llama.cpp multiplies its attn_factor (1 by default) into YaRN's own
                // magnitude correction.
                attention_factor: f64_or("scaling.attn_factor", 1.0)? * yarn_mscale(factor, 1.0),
                truncate: true,
            }))
        }
        Some("llama3") => Some(RopeScaling::Llama3(Llama3RopeScaling {
            factor: factor(Some(8.0))?,
            low_freq_factor: f64_or("scaling.low_freq_factor", 1.0)?,
            high_freq_factor: f64_or("scaling.high_freq_factor", 4.0)?,
            original_max_position_embeddings: original()?,
        })),
        Some(other) => {
            return Err(gguf_bad(format!(
                "{} {other:?} is not supported (supported: none, linear, yarn, llama3)",
                key("scaling.type")
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Value;
    use serde_json::json;

    fn resolve(v: serde_json::Value) -> Result<RopeConfig> {
        serde_json::from_value::<HfRopeFields>(v)
            .unwrap()
            .resolve(512)
    }

    #[test]
    fn v5_rope_parameters_carry_theta_and_type() {
        let r = resolve(
            json!({"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2}}),
        )
        .unwrap();
        assert_eq!(r.theta, 5e5);
        assert_eq!(r.scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        let r = resolve(json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}))
            .unwrap();
        assert_eq!((r.theta, r.scaling), (1e6, None));
    }

    #[test]
    fn v4_rope_theta_and_rope_scaling_still_read() {
        let r = resolve(json!({"rope_theta": 5e5, "rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
        .unwrap();
        assert_eq!(r.theta, 5e5);
        assert_eq!(
            r.scaling,
            Some(RopeScaling::Llama3(Llama3RopeScaling {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }))
        );
        let r = resolve(json!({"rope_theta": 1e4, "rope_scaling": null})).unwrap();
        assert_eq!((r.theta, r.scaling), (1e4, None));
        assert_eq!(resolve(json!({})).unwrap().theta, DEFAULT_THETA);
    }

    #[test]
    fn yarn_defaults_follow_transformers() {
        let r = resolve(
            json!({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6,
            "factor": 4.0, "original_max_position_embeddings": 128}}),
        )
        .unwrap();
        let Some(RopeScaling::Yarn(y)) = r.scaling else {
            panic!("{r:?}")
        };
        assert_eq!((y.factor, y.original_max_position_embeddings), (4.0, 128));
        assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));
        assert!((y.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);

        // mscale / mscale_all_dim (DeepSeek style), and an explicit attention factor.
        let r = resolve(
            json!({"rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0,
            "mscale_all_dim": 0.707, "beta_fast": 16, "truncate": false}}),
        )
        .unwrap();
        let Some(RopeScaling::Yarn(y)) = r.scaling else {
            panic!("{r:?}")
        };
        let want = (0.1 * 40f64.ln() + 1.0) / (0.1 * 0.707 * 40f64.ln() + 1.0);
        assert!((y.attention_factor - want).abs() < 1e-12);
        assert_eq!((y.beta_fast, y.truncate), (16.0, false));
        assert_eq!(y.original_max_position_embeddings, 512);
        let r = resolve(json!({"rope_parameters": {"rope_type": "yarn", "factor": 2,
            "attention_factor": 1.25}}))
        .unwrap();
        assert_eq!(r.scaling.unwrap().attention_factor(), 1.25);
        // A null factor: the ratio of the context lengths.
        let r = resolve(
            json!({"rope_parameters": {"rope_type": "yarn", "factor": null,
            "original_max_position_embeddings": 128}}),
        )
        .unwrap();
        assert!(matches!(r.scaling, Some(RopeScaling::Yarn(y)) if y.factor == 4.0));
    }

    #[test]
    fn unknown_or_incomplete_rope_is_an_error_naming_it() {
        for (v, needle) in [
            (
                json!({"rope_parameters": {"rope_type": "dynamic", "factor": 2}}),
                "\"dynamic\"",
            ),
            (
                json!({"rope_scaling": {"type": "longrope", "factor": 2}}),
                "\"longrope\"",
            ),
            (
                json!({"rope_parameters": {"rope_type": "linear"}}),
                "factor",
            ),
            (
                json!({"rope_parameters": {"rope_type": "llama3", "factor": 8}}),
                "low_freq_factor",
            ),
            (
                json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
                "partial_rotary_factor",
            ),
            (
                json!({"rope_parameters": {"full_attention": {"rope_type": "default"}}}),
                "per-layer",
            ),
        ] {
            let err = resolve(v.clone()).unwrap_err().to_string();
            assert!(err.contains(needle), "{v}: {err}");
        }
    }

    #[test]
    fn gguf_scaling_types() {
        let md = |pairs: Vec<(&str, Value)>| -> Metadata {
            pairs
                .into_iter()
                .map(|(k, v)| (format!("qwen2.rope.{k}"), v))
                .collect()
        };
        let linear = md(vec![
            ("scaling.type", Value::String("linear".into())),
            ("scaling.factor", Value::F32(2.0)),
        ]);
        assert_eq!(
            from_gguf(&linear, "qwen2", 4096).unwrap(),
            Some(RopeScaling::Linear { factor: 2.0 })
        );
        let yarn = md(vec![
            ("scaling.type", Value::String("yarn".into())),
            ("scaling.factor", Value::F32(4.0)),
            ("scaling.original_context_length", Value::U32(32768)),
        ]);
        let Some(RopeScaling::Yarn(y)) = from_gguf(&yarn, "qwen2", 131072).unwrap() else {
            panic!("yarn")
        };
        assert_eq!(y.original_max_position_embeddings, 32768);
        assert!((y.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(from_gguf(&md(vec![]), "qwen2", 4096).unwrap(), None);
        let none = md(vec![("scaling.type", Value::String("none".into()))]);
        assert_eq!(from_gguf(&none, "qwen2", 4096).unwrap(), None);
        let odd = md(vec![("scaling.type", Value::String("longrope".into()))]);
        let err = from_gguf(&odd, "qwen2", 4096).unwrap_err().to_string();
        assert!(err.contains("\"longrope\""), "{err}");
    }
}

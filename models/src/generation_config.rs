//! A checkpoint's `generation_config.json`: the sampling defaults its authors recommend
//! and the ids that end generation. Only the fields a server uses are read; every one is
//! optional, and a field of the wrong type is an error naming the file.
//!
//! Applying the defaults (to what a request leaves unset) is the server's business; this
//! module only reads them.

use crate::{ModelError, Result};
use serde::Deserialize;

/// `eos_token_id`: one id or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct Raw {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    repetition_penalty: Option<f64>,
    eos_token_id: Option<OneOrMany>,
}

/// What `generation_config.json` says (every field optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationConfig {
    /// Recommended temperature.
    pub temperature: Option<f64>,
    /// Recommended top_p.
    pub top_p: Option<f64>,
    /// Recommended top_k.
    pub top_k: Option<i64>,
    /// Recommended repetition penalty.
    pub repetition_penalty: Option<f64>,
    /// Ids that end generation (`eos_token_id`, one or a list); empty when not given.
    pub eos_token_ids: Vec<u32>,
}

impl GenerationConfig {
    /// Parses the text of a `generation_config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| ModelError::invalid("generation_config.json", e.to_string()))?;
        Ok(Self {
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            repetition_penalty: raw.repetition_penalty,
            eos_token_ids: match raw.eos_token_id {
                None => vec![],
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sampling_fields_and_eos_as_int_or_list() {
        let g = GenerationConfig::from_json(
            r#"{"do_sample": true, "eos_token_id": [2, 7], "temperature": 0.7,
                "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1,
                "transformers_version": "5.24.0"}"#,
        )
        .unwrap();
        assert_eq!(
            g,
            GenerationConfig {
                temperature: Some(0.7),
                top_p: Some(0.9),
                top_k: Some(40),
                repetition_penalty: Some(1.1),
                eos_token_ids: vec![2, 7],
            }
        );
        let g = GenerationConfig::from_json(r#"{"eos_token_id": 5, "temperature": null}"#).unwrap();
        assert_eq!(g.eos_token_ids, vec![5]);
        assert_eq!(g.temperature, None);
        assert_eq!(
            GenerationConfig::from_json("{}").unwrap(),
            GenerationConfig::default()
        );
    }

    #[test]
    fn a_malformed_file_names_itself() {
        for bad in [
            r#"{"temperature": "hot"}"#,
            "not json",
            r#"{"eos_token_id": -1}"#,
        ] {
            let err = GenerationConfig::from_json(bad).unwrap_err().to_string();
            assert!(err.contains("generation_config.json"), "{bad}: {err}");
        }
    }
}

//! Rebuilds a Hugging Face [`Tokenizer`] from the tokenizer that llama.cpp stores in a GGUF
//! file's metadata (`tokenizer.ggml.*`), plus the chat template and special tokens.
//!
//! Two tokenizer models are supported:
//! - `gpt2`: byte-level BPE. Tokens are already in GPT-2's byte-to-unicode form and the
//!   merges are stored as `"left right"`. The pre-tokenizer is chosen from
//!   `tokenizer.ggml.pre` (see [`PreTokenizerKind`]).
//! - `llama`: SentencePiece-style BPE with `▁` for spaces, per-token scores and
//!   `<0xNN>` byte-fallback tokens. Merges are derived from the vocabulary and scores the
//!   way Hugging Face's SentencePiece converter does.
//!
//! Invariants: token ids are the GGUF indices; control (type 3) and unknown (type 2)
//! tokens become special added tokens and user-defined (type 4) tokens plain added
//! tokens, so none of them is ever split. No post-processor inserts BOS/EOS: whether a
//! BOS is prepended is the caller's decision (see [`GgufSpecialTokens::add_bos`]).
//!
//! The tokenizer is assembled as a `tokenizer.json` document and deserialized, so it is
//! exactly what `Tokenizer::from_file` would build from the equivalent file.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map, Value as Json};
use tokenizers::Tokenizer;

use crate::gguf_metadata::{
    opt_bool, opt_float_array, opt_int, opt_int_array, opt_str, string_array,
};
use crate::{ModelError, Result};

/// llama.cpp's `llama_token_type` values (`tokenizer.ggml.token_type`).
mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Llama 3's pre-tokenization regex (`llama-bpe` in llama.cpp).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pre-tokenization regex: Llama 3's, with every digit its own piece.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The SentencePiece word-boundary marker.
const SPIECE_UNDERLINE: &str = "▁";

/// How a byte-level (`gpt2`) tokenizer splits text before BPE, from `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// GPT-2's byte-level regex (`gpt2`, `gpt-2`, `default`, and unknown values).
    Gpt2,
    /// Every digit its own piece, then GPT-2's regex (`smollm`, `starcoder`, `refact`).
    DigitsThenGpt2,
    /// Llama 3's regex (`llama-bpe`, `llama3`, `llama-v3`, `dbrx`, `smaug-bpe`).
    Llama3,
    /// Qwen2's regex with NFC normalization (`qwen2`, `deepseek-r1-qwen`).
    Qwen2,
}

impl PreTokenizerKind {
    /// Maps llama.cpp's `tokenizer.ggml.pre` value; unknown values fall back to GPT-2 with
    /// a warning.
    pub fn from_gguf_pre(pre: Option<&str>) -> Self {
        match pre {
            None | Some("default" | "gpt2" | "gpt-2") => Self::Gpt2,
            Some("smollm" | "starcoder" | "refact") => Self::DigitsThenGpt2,
            Some("llama-bpe" | "llama3" | "llama-v3" | "dbrx" | "smaug-bpe") => Self::Llama3,
            Some("qwen2" | "deepseek-r1-qwen") => Self::Qwen2,
            Some(other) => {
                tracing::warn!(
                    pre = other,
                    "unknown GGUF tokenizer.ggml.pre {other:?}; using GPT-2 byte-level pre-tokenization"
                );
                Self::Gpt2
            }
        }
    }
}

/// The special tokens a GGUF file declares, and whether a BOS should be prepended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufSpecialTokens {
    /// Beginning-of-sequence token id and text (`tokenizer.ggml.bos_token_id`).
    pub bos: Option<(u32, String)>,
    /// End-of-sequence token id and text (`tokenizer.ggml.eos_token_id`).
    pub eos: Option<(u32, String)>,
    /// Whether prompts get a BOS prepended (`tokenizer.ggml.add_bos_token`, else
    /// llama.cpp's default for the tokenizer model).
    pub add_bos: bool,
}

impl GgufSpecialTokens {
    /// Reads the special tokens from GGUF metadata. Ids outside the vocabulary are errors.
    pub fn from_gguf(metadata: &HashMap<String, Value>) -> Result<Self> {
        let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
        let lookup = |key: &str| -> Result<Option<(u32, String)>> {
            let Some(id) = opt_int::<u32>(metadata, key)? else {
                return Ok(None);
            };
            let text = tokens.get(id as usize).ok_or_else(|| {
                ModelError::invalid(
                    format!("GGUF metadata {key}"),
                    format!(
                        "token id {id} is outside the vocabulary of {}",
                        tokens.len()
                    ),
                )
            })?;
            Ok(Some((id, (*text).to_string())))
        };
        let bos = lookup("tokenizer.ggml.bos_token_id")?;
        let eos = lookup("tokenizer.ggml.eos_token_id")?;
        let add_bos = match opt_bool(metadata, "tokenizer.ggml.add_bos_token")? {
            Some(add) => add,
            None => {
                let model = opt_str(metadata, "tokenizer.ggml.model")?;
                let pre = opt_str(metadata, "tokenizer.ggml.pre")?;
                model == Some("llama")
                    || (model == Some("gpt2")
                        && PreTokenizerKind::from_gguf_pre(pre) == PreTokenizerKind::Llama3)
            }
        };
        Ok(Self { bos, eos, add_bos })
    }
}

/// The chat template stored under `tokenizer.chat_template`, if any.
pub fn chat_template_from_gguf(metadata: &HashMap<String, Value>) -> Option<String> {
    match metadata.get("tokenizer.chat_template") {
        Some(Value::String(template)) => Some(template.clone()),
        _ => None,
    }
}

/// Rebuilds the tokenizer stored in GGUF metadata. See the module docs for what is
/// supported; anything else is a [`ModelError`] naming the offending key.
pub fn tokenizer_from_gguf(metadata: &HashMap<String, Value>) -> Result<Tokenizer> {
    let model = opt_str(metadata, "tokenizer.ggml.model")?
        .ok_or_else(|| ModelError::Missing("GGUF metadata tokenizer.ggml.model".into()))?;
    let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
    let types = match opt_int_array(metadata, "tokenizer.ggml.token_type")? {
        Some(types) => {
            if types.len() != tokens.len() {
                return Err(ModelError::invalid(
                    "GGUF metadata tokenizer.ggml.token_type",
                    format!("{} entries for {} tokens", types.len(), tokens.len()),
                ));
            }
            types
        }
        None => vec![token_type::NORMAL; tokens.len()],
    };
    let vocab = vocab_map(&tokens);
    let added_tokens = added_tokens(&tokens, &types);

    let document = match model {
        "gpt2" => {
            let merges = string_array(metadata, "tokenizer.ggml.merges")?;
            let merges = parse_merges(&merges, &vocab);
            let pre = PreTokenizerKind::from_gguf_pre(opt_str(metadata, "tokenizer.ggml.pre")?);
            byte_level_document(vocab, merges, added_tokens, pre)
        }
        "llama" => {
            let scores = match opt_float_array(metadata, "tokenizer.ggml.scores")? {
                Some(scores) => scores,
                None => (0..tokens.len()).map(|id| -(id as f32)).collect(),
            };
            if scores.len() != tokens.len() {
                return Err(ModelError::invalid(
                    "GGUF metadata tokenizer.ggml.scores",
                    format!("{} entries for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let merges = sentencepiece_merges(&tokens, &scores, &vocab);
            let unk = match opt_int::<u32>(metadata, "tokenizer.ggml.unknown_token_id")? {
                Some(id) => tokens.get(id as usize).map(|t| (*t).to_string()),
                None => None,
            };
            let add_space_prefix =
                opt_bool(metadata, "tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            sentencepiece_document(vocab, merges, added_tokens, unk, add_space_prefix)
        }
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model {other:?} is not supported (supported: gpt2, llama)"
            )))
        }
    };
    serde_json::from_value(document).map_err(|e| {
        ModelError::Tokenizer(format!(
            "building the {model} tokenizer from GGUF metadata: {e}"
        ))
    })
}

/// `token -> id`, keeping the first id of a duplicated token (llama.cpp does the same).
fn vocab_map(tokens: &[&str]) -> Map<String, Json> {
    let mut vocab = Map::with_capacity(tokens.len());
    let mut duplicates = 0usize;
    for (id, token) in tokens.iter().enumerate() {
        if vocab.contains_key(*token) {
            duplicates += 1;
        } else {
            vocab.insert((*token).to_string(), json!(id));
        }
    }
    if duplicates > 0 {
        tracing::warn!("GGUF vocabulary has {duplicates} duplicated tokens; keeping first ids");
    }
    vocab
}

/// Control, unknown and user-defined tokens, as `tokenizer.json` added tokens.
fn added_tokens(tokens: &[&str], types: &[i64]) -> Vec<Json> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (token, &kind))| {
            !token.is_empty()
                && matches!(
                    kind,
                    token_type::UNKNOWN | token_type::CONTROL | token_type::USER_DEFINED
                )
        })
        .map(|(id, (token, &kind))| {
            json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": kind != token_type::USER_DEFINED,
            })
        })
        .collect()
}

/// Splits llama.cpp's `"left right"` merges at the first space after the first byte (as
/// llama.cpp does) and drops, with a warning, merges whose parts or result are not tokens.
fn parse_merges(merges: &[&str], vocab: &Map<String, Json>) -> Vec<(String, String)> {
    let mut parsed = Vec::with_capacity(merges.len());
    let mut skipped = 0usize;
    for merge in merges {
        let split = merge
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| (&merge[..at], &merge[at + 1..]));
        match split {
            Some((left, right))
                if vocab.contains_key(left)
                    && vocab.contains_key(right)
                    && vocab.contains_key(&format!("{left}{right}")) =>
            {
                parsed.push((left.to_string(), right.to_string()));
            }
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        tracing::warn!("skipped {skipped} GGUF merges that do not combine vocabulary tokens");
    }
    parsed
}

/// Merges of a SentencePiece vocabulary, as Hugging Face's `SentencePieceExtractor`
/// derives them: every split of a piece into two pieces of the vocabulary is a merge
/// (ordered by the ids of its parts), and merges are ordered by the merged piece's
/// score, highest first (stable, so ties keep vocabulary order).
fn sentencepiece_merges(
    tokens: &[&str],
    scores: &[f32],
    vocab: &Map<String, Json>,
) -> Vec<(String, String)> {
    let id_of = |piece: &str| vocab.get(piece).and_then(Json::as_u64);
    let mut seen = HashSet::new();
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for (token, &score) in tokens.iter().zip(scores) {
        if !seen.insert(*token) {
            continue;
        }
        let mut local: Vec<(u64, u64, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                Some((id_of(left)?, id_of(right)?, left, right))
            })
            .collect();
        local.sort_by_key(|&(left, right, _, _)| (left, right));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, left, right)| (left.to_string(), right.to_string(), score)),
        );
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(left, right, _)| (left, right))
        .collect()
}

fn merges_json(merges: Vec<(String, String)>) -> Json {
    Json::Array(
        merges
            .into_iter()
            .map(|(left, right)| json!([left, right]))
            .collect(),
    )
}

fn byte_level_document(
    vocab: Map<String, Json>,
    merges: Vec<(String, String)>,
    added_tokens: Vec<Json>,
    pre: PreTokenizerKind,
) -> Json {
    let byte_level = |use_regex: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": use_regex,
        })
    };
    let split = |regex: &str| {
        json!({
            "type": "Split",
            "pattern": { "Regex": regex },
            "behavior": "Isolated",
            "invert": false,
        })
    };
    let (normalizer, pre_tokenizer) = match pre {
        PreTokenizerKind::Gpt2 => (Json::Null, byte_level(true)),
        PreTokenizerKind::DigitsThenGpt2 => (
            Json::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    byte_level(true),
                ],
            }),
        ),
        PreTokenizerKind::Llama3 => (
            Json::Null,
            json!({ "type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)] }),
        ),
        PreTokenizerKind::Qwen2 => (
            json!({ "type": "NFC" }),
            json!({ "type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)] }),
        ),
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre == PreTokenizerKind::Llama3,
            "vocab": vocab,
            "merges": merges_json(merges),
        },
    })
}

fn sentencepiece_document(
    vocab: Map<String, Json>,
    merges: Vec<(String, String)>,
    added_tokens: Vec<Json>,
    unk: Option<String>,
    add_space_prefix: bool,
) -> Json {
    let replace = |from: &str, to: &str| json!({ "type": "Replace", "pattern": { "String": from }, "content": to });
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({ "type": "Prepend", "prepend": SPIECE_UNDERLINE }));
    }
    normalizers.push(replace(" ", SPIECE_UNDERLINE));
    let mut decoders = vec![
        replace(SPIECE_UNDERLINE, " "),
        json!({ "type": "ByteFallback" }),
        json!({ "type": "Fuse" }),
    ];
    if add_space_prefix {
        decoders.push(json!({ "type": "Strip", "content": " ", "start": 1, "stop": 0 }));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": { "type": "Sequence", "normalizers": normalizers },
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Sequence", "decoders": decoders },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges_json(merges),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_merges_follow_scores_then_ids() {
        let pieces = [
            "▁", "h", "e", "l", "o", "w", "▁h", "▁he", "▁hel", "▁hell", "▁hello", "▁w", "ll",
        ];
        let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
        let merges = sentencepiece_merges(&pieces, &scores, &vocab_map(&pieces));
        let merges: Vec<String> = merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
        // By merged piece's score; the two splits of "▁hell" ordered by their parts' ids.
        let expected = [
            "▁ h",
            "▁h e",
            "▁he l",
            "▁he ll",
            "▁hel l",
            "▁hell o",
            "▁ w",
            "l l",
        ];
        assert_eq!(merges, expected);
    }

    #[test]
    fn merges_split_at_the_first_space_after_the_first_byte() {
        let vocab = vocab_map(&[" ", "a", " a", "b", "ab"]);
        let merges = parse_merges(&["  a", "a b", "a c", "ab"], &vocab);
        let expected = [(" ", "a"), ("a", "b")].map(|(l, r)| (l.to_string(), r.to_string()));
        assert_eq!(merges, expected);
    }
}

//! Token counting for prompt construction: the server's `/tokenize` + `/detokenize`, a
//! local `tokenizer.json`, or an approximation (one common English word ~ one token).
//!
//! Invariant: `count(text)` uses the same rules as `encode(text).len()`, including any
//! special tokens the server adds, so "a prompt of N tokens" means what the server will
//! count for a completions request.

use std::path::Path;

use crate::error::{BenchError, Context, Result};

use crate::client::{Client, TokenizeApi};
use crate::config::TokenizerSource;

/// A way to count tokens.
pub enum Tokenizer {
    /// A local `tokenizer.json`.
    Local(Box<tokenizers::Tokenizer>),
    /// The server's `/tokenize` and `/detokenize`.
    Server {
        /// The endpoint.
        client: Client,
        /// Its tokenize dialect.
        api: TokenizeApi,
        /// The model name sent with each call.
        model: String,
    },
    /// No tokenizer: words stand in for tokens.
    Approximate,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Tokenizer {
    /// Resolves `source`; `Auto` probes the server's `/tokenize` once.
    pub async fn resolve(source: &TokenizerSource, client: &Client, model: &str) -> Result<Self> {
        let server = |api| Tokenizer::Server {
            client: client.clone(),
            api,
            model: model.to_string(),
        };
        match source {
            TokenizerSource::Local(path) => Self::local(path),
            TokenizerSource::Approximate => Ok(Tokenizer::Approximate),
            TokenizerSource::Server => {
                let api = client
                    .probe_tokenize(model)
                    .await
                    .context("the server's tokenizer (needed by --tokenizer server)")?;
                Ok(server(api))
            }
            TokenizerSource::Auto => match client.probe_tokenize(model).await {
                Ok(api) => Ok(server(api)),
                Err(e) => {
                    tracing::warn!(
                        "{}; prompt lengths are approximate \
                         (pass --tokenizer tokenizer.json for exact counts)",
                        e.chain()
                    );
                    Ok(Tokenizer::Approximate)
                }
            },
        }
    }

    /// Loads a local `tokenizer.json`.
    pub fn local(path: &Path) -> Result<Self> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
            .with_context(|| format!("loading tokenizer {}", path.display()))?;
        Ok(Tokenizer::Local(Box::new(tok)))
    }

    /// "server", "local" or "approximate".
    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Local(_) => "local",
            Tokenizer::Server { .. } => "server",
            Tokenizer::Approximate => "approximate",
        }
    }

    /// True when counts are exact.
    pub fn is_exact(&self) -> bool {
        !matches!(self, Tokenizer::Approximate)
    }

    /// Token ids of `text` (approximate: one id per word).
    pub async fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Local(tok) => Ok(tok
                .encode(text, true)
                .map_err(|e| BenchError::Tokenizer(format!("tokenizing: {e}")))?
                .get_ids()
                .to_vec()),
            Tokenizer::Server { client, api, model } => client.tokenize(*api, model, text).await,
            Tokenizer::Approximate => Ok((0..text.split_whitespace().count() as u32).collect()),
        }
    }

    /// Text of `ids` (not available for the approximation).
    pub async fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Local(tok) => tok
                .decode(ids, true)
                .map_err(|e| BenchError::Tokenizer(format!("detokenizing: {e}"))),
            Tokenizer::Server { client, api, model } => client.detokenize(*api, model, ids).await,
            Tokenizer::Approximate => Err(BenchError::Tokenizer(
                "the approximate tokenizer cannot decode".into(),
            )),
        }
    }

    /// Number of tokens of `text`.
    pub async fn count(&self, text: &str) -> Result<usize> {
        Ok(self.encode(text).await?.len())
    }
}

/// Text of (as near as possible) exactly `target` tokens, cut from `corpus_ids` at
/// `offset`: decode a window, re-count, widen or narrow the window by the difference,
/// at most a few rounds. Returns the text and its counted length.
pub async fn exact_prompt(
    tok: &Tokenizer,
    corpus_ids: &[u32],
    offset: usize,
    target: usize,
) -> Result<(String, usize)> {
    let target = target.max(1);
    let mut len = target;
    let mut best: Option<(String, usize)> = None;
    for _ in 0..6 {
        let end = (offset + len).min(corpus_ids.len());
        let text = tok.decode(&corpus_ids[offset..end]).await?;
        let got = tok.count(&text).await?;
        let closer = best
            .as_ref()
            .is_none_or(|(_, b)| got.abs_diff(target) < b.abs_diff(target));
        if closer {
            best = Some((text, got));
        }
        if got == target || end == corpus_ids.len() && got < target {
            break;
        }
        let next = (len as i64 + target as i64 - got as i64).max(1) as usize;
        if next == len {
            break;
        }
        len = next;
    }
    best.context("no prompt built")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn approximate_counts_words() {
        let t = Tokenizer::Approximate;
        assert_eq!(t.count("the quick  brown fox").await.unwrap(), 4);
        assert!(!t.is_exact());
        assert!(t.decode(&[1]).await.is_err());
    }

    /// A word-level tokenizer.json over `words`, as a file.
    fn word_level(words: &[&str]) -> tempfile::NamedTempFile {
        let vocab: serde_json::Map<String, serde_json::Value> = std::iter::once("[UNK]")
            .chain(words.iter().copied())
            .enumerate()
            .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
        });
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json.to_string()).unwrap();
        file
    }

    #[tokio::test]
    async fn local_tokenizer_json_builds_exact_prompts() {
        let file = word_level(&["red", "green", "blue", "sky"]);
        let tok = Tokenizer::local(file.path()).unwrap();
        assert!(tok.is_exact() && tok.name() == "local");
        let corpus = "red green blue sky ".repeat(30);
        let ids = tok.encode(&corpus).await.unwrap();
        assert_eq!(ids.len(), 120);
        for target in [1, 7, 50, 100] {
            let (text, n) = exact_prompt(&tok, &ids, 3, target).await.unwrap();
            assert_eq!(n, target);
            assert_eq!(tok.count(&text).await.unwrap(), target);
        }
        // Asking past the corpus end gives the longest prompt there is.
        let (_, n) = exact_prompt(&tok, &ids, 100, 50).await.unwrap();
        assert_eq!(n, 20);
        assert!(Tokenizer::local(Path::new("/nonexistent/tokenizer.json")).is_err());
    }
}

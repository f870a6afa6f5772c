//! What a run sends: synthetic prompts of exact token lengths, the built-in mix, or the
//! records of a JSONL/JSON file (plain prompts, chat `messages`, or ShareGPT
//! `conversations`), all chosen and ordered by the seed.
//!
//! Invariants: the same seed, spec and tokenizer give the same items; every item asks
//! for at least one output token; synthetic prompts start at distinct random offsets of
//! a random-word corpus, so they do not share prefixes (no unearned prefix-cache hits).

use std::path::Path;

use crate::error::{BenchError, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::config::WorkloadSpec;
use crate::tokenize::{exact_prompt, Tokenizer};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    /// Text.
    pub content: String,
}

/// A prompt: plain text, or a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Completions prompt.
    Text(String),
    /// Chat conversation.
    Chat(Vec<Message>),
}

/// One request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkItem {
    /// The prompt.
    pub prompt: Prompt,
    /// Its length in tokens as counted by the tokenizer, when known.
    pub prompt_tokens: Option<usize>,
    /// Output tokens to ask for.
    pub output_len: usize,
}

/// The built-in mix: (weight, prompt tokens, output tokens) of chat turns,
/// summarisation, long generation and retrieval-augmented answers; each length is
/// spread by 25%.
pub const MIX: [(f64, usize, usize); 4] = [
    (0.40, 256, 192),
    (0.20, 1536, 160),
    (0.25, 96, 384),
    (0.15, 3072, 96),
];

/// A length drawn uniformly from `len * (1 - spread) ..= len * (1 + spread)`, at least 1.
pub fn spread_len(rng: &mut StdRng, len: usize, spread: f64) -> usize {
    let spread = spread.clamp(0.0, 1.0);
    if spread == 0.0 || len == 0 {
        return len.max(1);
    }
    let lo = (len as f64 * (1.0 - spread)).round().max(1.0) as usize;
    let hi = (len as f64 * (1.0 + spread)).round().max(lo as f64) as usize;
    rng.random_range(lo..=hi)
}

/// `n` (prompt, output) lengths for a synthetic or mix spec.
pub fn sample_lengths(spec: &WorkloadSpec, n: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    (0..n)
        .map(|_| match spec {
            WorkloadSpec::Synthetic {
                input_len,
                output_len,
                spread,
            } => (
                spread_len(rng, *input_len, *spread),
                spread_len(rng, *output_len, *spread),
            ),
            _ => {
                let mut u: f64 = rng.random();
                let mut pick = MIX[MIX.len() - 1];
                for class in MIX {
                    if u < class.0 {
                        pick = class;
                        break;
                    }
                    u -= class.0;
                }
                (spread_len(rng, pick.1, 0.25), spread_len(rng, pick.2, 0.25))
            }
        })
        .collect()
}

const WORDS: &[&str] = &[
    "the", "time", "people", "way", "water", "world", "house", "story", "light", "river", "city",
    "small", "large", "quick", "bright", "quiet", "green", "north", "market", "garden", "paper",
    "table", "window", "engine", "signal", "number", "morning", "evening", "letter", "friend",
    "mountain", "valley", "forest", "island", "winter", "summer", "machine", "music", "answer",
    "question", "system", "report", "school", "family", "country", "road", "train", "station",
    "bridge", "harbor", "planet", "stone", "glass", "metal", "cloud", "storm", "field", "farm",
    "village", "doctor", "teacher", "student", "worker", "artist", "writer", "reads", "writes",
    "builds", "finds", "keeps", "opens", "walks", "carries", "watches", "and", "but", "with",
    "from", "under", "over", "after", "before", "near", "into", "old", "new", "long", "short",
    "early", "late", "warm", "cold", "open", "simple", "careful",
];

/// `n` seeded random words with occasional sentence breaks.
pub fn corpus_text(n: usize, rng: &mut StdRng) -> String {
    let mut out = String::with_capacity(n * 7);
    let mut sentence = 0;
    for i in 0..n {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        if i > 0 {
            out.push(' ');
        }
        out.push_str(w);
        sentence += 1;
        if sentence > 6 && rng.random_bool(0.15) {
            out.push('.');
            sentence = 0;
        }
    }
    out
}

/// Builds `n` items for `spec`. `default_output_len` applies to file records that give
/// no length of their own.
pub async fn build(
    spec: &WorkloadSpec,
    n: usize,
    seed: u64,
    tok: &Tokenizer,
) -> Result<Vec<WorkItem>> {
    let mut rng = StdRng::seed_from_u64(seed);
    if let WorkloadSpec::File { path, output_len } = spec {
        return from_file(path, *output_len, n, &mut rng, tok).await;
    }
    let lengths = sample_lengths(spec, n, &mut rng);
    let longest = lengths.iter().map(|l| l.0).max().unwrap_or(1);
    let corpus_words = (longest * 4).max(8192);
    let text = corpus_text(corpus_words, &mut rng);
    if !tok.is_exact() {
        let words: Vec<&str> = text.split(' ').collect();
        return Ok(lengths
            .into_iter()
            .map(|(input, output)| {
                let start = rng.random_range(0..=words.len().saturating_sub(input));
                let end = (start + input).min(words.len());
                WorkItem {
                    prompt: Prompt::Text(words[start..end].join(" ")),
                    prompt_tokens: Some(end - start),
                    output_len: output,
                }
            })
            .collect());
    }
    let ids = tok.encode(&text).await.context("tokenizing the corpus")?;
    // Skip a leading BOS and a trailing EOS a tokenizer may add.
    let usable = ids.len().saturating_sub(2);
    let jobs: Vec<(usize, usize, usize)> = lengths
        .iter()
        .map(|&(input, output)| {
            let start = 1 + rng.random_range(0..=usable.saturating_sub(input));
            (start, input, output)
        })
        .collect();
    let ids = &ids;
    stream::iter(jobs)
        .map(|(start, input, output)| async move {
            let (text, count) = exact_prompt(tok, ids, start, input).await?;
            Ok::<_, BenchError>(WorkItem {
                prompt: Prompt::Text(text),
                prompt_tokens: Some(count),
                output_len: output,
            })
        })
        .buffered(16)
        .try_collect()
        .await
}

/// One record of a workload file, before tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    /// The prompt.
    pub prompt: Prompt,
    /// An explicit output length (`output_len` or `max_tokens`).
    pub output_len: Option<usize>,
    /// The reference answer (ShareGPT's reply), whose length is used otherwise.
    pub reference: Option<String>,
}

/// Parses a JSONL file, or a JSON array (ShareGPT dumps are arrays), of records with
/// `prompt`, `messages` or `conversations`.
pub fn parse_records(text: &str) -> Result<Vec<FileRecord>> {
    let values: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).context("parsing the JSON array")?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
            .collect::<Result<_>>()?
    };
    let records: Vec<FileRecord> = values.iter().filter_map(record).collect();
    if records.is_empty() {
        return Err(BenchError::invalid(
            "no usable record (each needs `prompt`, `messages` or `conversations`)",
        ));
    }
    Ok(records)
}

fn record(v: &Value) -> Option<FileRecord> {
    let output_len = ["output_len", "max_tokens"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_u64))
        .map(|n| n as usize);
    if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        let reference = v
            .get("completion")
            .and_then(Value::as_str)
            .map(String::from);
        return Some(FileRecord {
            prompt: Prompt::Text(p.to_string()),
            output_len,
            reference,
        });
    }
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        let messages: Vec<Message> = msgs
            .iter()
            .filter_map(|m| {
                Some(Message {
                    role: m.get("role")?.as_str()?.to_string(),
                    content: m.get("content")?.as_str()?.to_string(),
                })
            })
            .collect();
        return (!messages.is_empty()).then_some(FileRecord {
            prompt: Prompt::Chat(messages),
            output_len,
            reference: None,
        });
    }
    // ShareGPT: the conversation up to its last human turn that has a reply.
    let turns = v.get("conversations").and_then(Value::as_array)?;
    let turns: Vec<(String, String)> = turns
        .iter()
        .filter_map(|t| {
            let role = match t.get("from")?.as_str()? {
                "human" | "user" => "user",
                "gpt" | "assistant" | "chatgpt" | "bard" | "bing" => "assistant",
                "system" => "system",
                _ => return None,
            };
            Some((role.to_string(), t.get("value")?.as_str()?.to_string()))
        })
        .collect();
    let reply = (1..turns.len())
        .rev()
        .find(|&i| turns[i].0 == "assistant" && turns[i - 1].0 == "user")?;
    let messages = turns[..reply]
        .iter()
        .map(|(role, content)| Message {
            role: role.clone(),
            content: content.clone(),
        })
        .collect();
    Some(FileRecord {
        prompt: Prompt::Chat(messages),
        output_len,
        reference: Some(turns[reply].1.clone()),
    })
}

async fn from_file(
    path: &Path,
    output_len: Option<usize>,
    n: usize,
    rng: &mut StdRng,
    tok: &Tokenizer,
) -> Result<Vec<WorkItem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading workload file {}", path.display()))?;
    let records =
        parse_records(&text).with_context(|| format!("in workload file {}", path.display()))?;
    // A seeded shuffle, then as many as needed (cycling when the file is short).
    let mut order: Vec<usize> = (0..records.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut items = Vec::with_capacity(n);
    for k in 0..n {
        let r = &records[order[k % order.len()]];
        let prompt_text = match &r.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(m) => m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let out = match (r.output_len, output_len, &r.reference) {
            (Some(n), _, _) | (None, Some(n), _) => n,
            (None, None, Some(reference)) => tok.count(reference).await?,
            (None, None, None) => 128,
        };
        items.push(WorkItem {
            prompt: r.prompt.clone(),
            prompt_tokens: Some(tok.count(&prompt_text).await?),
            output_len: out.max(1),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_lengths_stay_in_range_and_fixed_lengths_are_fixed() {
        let mut rng = StdRng::seed_from_u64(1);
        let spec = WorkloadSpec::Synthetic {
            input_len: 100,
            output_len: 10,
            spread: 0.5,
        };
        let l = sample_lengths(&spec, 500, &mut rng);
        assert!(l
            .iter()
            .all(|&(i, o)| (50..=150).contains(&i) && (5..=15).contains(&o)));
        assert!(l.iter().any(|&(i, _)| i < 70) && l.iter().any(|&(i, _)| i > 130));
        let fixed = WorkloadSpec::Synthetic {
            input_len: 100,
            output_len: 10,
            spread: 0.0,
        };
        assert!(sample_lengths(&fixed, 50, &mut rng)
            .iter()
            .all(|&l| l == (100, 10)));
    }

    #[test]
    fn mix_draws_every_class() {
        let mut rng = StdRng::seed_from_u64(2);
        let l = sample_lengths(&WorkloadSpec::Mix, 400, &mut rng);
        for (_, input, _) in MIX {
            let (lo, hi) = (input * 3 / 4, input * 5 / 4 + 1);
            assert!(l.iter().any(|&(i, _)| (lo..=hi).contains(&i)), "{input}");
        }
    }

    #[test]
    fn records_of_every_shape_parse() {
        let jsonl = r#"{"prompt": "hello", "max_tokens": 5}
{"messages": [{"role": "user", "content": "hi"}]}

{"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}, {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a two"}]}
{"conversations": [{"from": "gpt", "value": "orphan"}]}
{"other": 1}"#;
        let r = parse_records(jsonl).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].prompt, Prompt::Text("hello".into()));
        assert_eq!(r[0].output_len, Some(5));
        assert!(matches!(&r[1].prompt, Prompt::Chat(m) if m.len() == 1 && m[0].content == "hi"));
        match &r[2].prompt {
            Prompt::Chat(m) => {
                let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
                assert_eq!(roles, ["user", "assistant", "user"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r[2].reference.as_deref(), Some("a two"));
        let array = r#"[{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}]"#;
        assert_eq!(parse_records(array).unwrap().len(), 1);
        assert!(parse_records("{\"nothing\": 1}").is_err());
        assert!(parse_records("not json").is_err());
    }

    #[tokio::test]
    async fn approximate_workload_is_seeded_and_exactly_sized_in_words() {
        let spec = WorkloadSpec::Synthetic {
            input_len: 40,
            output_len: 8,
            spread: 0.2,
        };
        let a = build(&spec, 20, 7, &Tokenizer::Approximate).await.unwrap();
        let b = build(&spec, 20, 7, &Tokenizer::Approximate).await.unwrap();
        let c = build(&spec, 20, 8, &Tokenizer::Approximate).await.unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        for item in &a {
            let Prompt::Text(t) = &item.prompt else {
                panic!()
            };
            assert_eq!(Some(t.split_whitespace().count()), item.prompt_tokens);
        }
    }
}

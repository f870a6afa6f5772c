//! Token ids -> text, a piece at a time, as tokens arrive.
//!
//! [`IncrementalDetokenizer`] emits text only when it is complete: a token that ends in
//! the middle of a UTF-8 character (byte-level BPE splits characters across tokens)
//! yields nothing until the character is whole. It decodes a short window of recent ids
//! (starting with the prompt's last tokens) so that tokenizers whose decoders treat the
//! first token specially (SentencePiece's leading space) produce the same text as
//! decoding everything at once.
//!
//! [`StopMatcher`] holds back any text that could be the start of a stop string, so no
//! part of a stop string is ever emitted, and cuts the text where one is found.

use crate::prompt::PromptBuilder;
use wick_core::WickError;

/// Prompt tokens kept as decoding context.
const CONTEXT_TOKENS: usize = 5;

/// Incremental detokenization of one completion.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// Starts after `prompt` (only its last few ids are kept).
    pub fn new(prompt: &[u32]) -> Self {
        let ctx = &prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..];
        Self {
            ids: ctx.to_vec(),
            prefix_offset: 0,
            read_offset: ctx.len(),
        }
    }

    /// Adds `id`; returns the text that became complete (often the token's text, empty
    /// while a character is split).
    pub fn push(&mut self, p: &PromptBuilder, id: u32) -> Result<String, WickError> {
        self.ids.push(id);
        self.take(p, false)
    }

    /// Whatever is left at the end (an incomplete character becomes U+FFFD).
    pub fn flush(&mut self, p: &PromptBuilder) -> Result<String, WickError> {
        self.take(p, true)
    }

    fn take(&mut self, p: &PromptBuilder, last: bool) -> Result<String, WickError> {
        if self.read_offset >= self.ids.len() {
            return Ok(String::new());
        }
        let before = p.decode(&self.ids[self.prefix_offset..self.read_offset], true)?;
        let after = p.decode(&self.ids[self.prefix_offset..], true)?;
        let complete = !after.ends_with('\u{FFFD}') || last;
        match after.get(before.len()..) {
            Some(new) if complete && after.len() > before.len() && after.starts_with(&before) => {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                // Keep the window short: ids before prefix_offset are never read again.
                if self.prefix_offset > 64 {
                    self.ids.drain(..self.prefix_offset);
                    self.read_offset -= self.prefix_offset;
                    self.prefix_offset = 0;
                }
                Ok(new)
            }
            _ if last => {
                self.read_offset = self.ids.len();
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
    }
}

/// Finds stop strings in streamed text; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopMatcher::push`] lets through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text that can be shown (never part of a stop string).
    pub text: String,
    /// A stop string was found; nothing after it is to be shown.
    pub stopped: bool,
}

impl StopMatcher {
    /// Watches for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `text`; returns what is safe to show.
    pub fn push(&mut self, text: &str) -> Released {
        if self.stops.is_empty() {
            return Released {
                text: text.to_string(),
                stopped: false,
            };
        }
        self.pending.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min()
        {
            let text = self.pending[..pos].to_string();
            self.pending.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        let hold = self.held_suffix_len();
        let cut = self.pending.len() - hold;
        let text = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        Released {
            text,
            stopped: false,
        }
    }

    /// At the end without a stop string: the held-back text.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(p.len());
            for k in (best + 1..=max).rev() {
                let start = p.len() - k;
                if p.is_char_boundary(start) && s.as_bytes().starts_with(&p.as_bytes()[start..]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = vec![];
        for p in pieces {
            let r = m.push(p);
            out.push(r.text);
            if r.stopped {
                return (out, true, String::new());
            }
        }
        let rest = m.flush();
        (out, false, rest)
    }

    #[test]
    fn stop_string_across_pieces_is_never_emitted() {
        let (out, stopped, _) = run(&["END"], &["hello E", "N", "D more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hello ");
        assert_eq!(out[0], "hello "); // "E" held back
        assert_eq!(out[1], "");
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let (out, stopped, rest) = run(&["END"], &["a E", "x", "EN"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a ", "Ex", ""]);
        assert_eq!(rest, "EN");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_respected() {
        let (out, stopped, _) = run(&["wörld", "lo w"], &["hel", "lo wö", "rld"]);
        assert!(stopped);
        assert_eq!(out.concat(), "hel");
        let (out, stopped, _) = run(&["é!"], &["café", "é", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "café");
    }

    #[test]
    fn no_stops_passes_everything() {
        let (out, stopped, rest) = run(&[], &["a", "b"]);
        assert_eq!(
            (out.concat(), stopped, rest),
            ("ab".to_string(), false, String::new())
        );
    }
}

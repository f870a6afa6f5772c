//! Server-sent events as OpenAI streams them: an incremental parser that turns arbitrary
//! byte chunks into `data:` payloads, and the reading of one payload (text delta, usage,
//! in-band error).
//!
//! Invariants: bytes may be split anywhere, even inside a UTF-8 character or a `\r\n`;
//! an event is emitted only once its terminating blank line has arrived, so a stream cut
//! mid-event never yields a half payload.

use serde_json::Value;

/// Incremental SSE decoder.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the data payloads of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(rest) = line.strip_prefix("data:") {
                self.data
                    .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
            }
            // Comments (":...") and other fields (event:, id:, retry:) are ignored.
        }
        events
    }

    /// True when a partial line or event is buffered (the stream ended mid-event).
    pub fn has_partial(&self) -> bool {
        !self.data.is_empty() || self.buf.iter().any(|b| !b.is_ascii_whitespace())
    }
}

/// What one `data:` payload says.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// `[DONE]`: the stream finished.
    Done,
    /// A JSON chunk.
    Data {
        /// Text generated in this chunk (completions `text` or chat `delta.content`).
        text: String,
        /// `usage.prompt_tokens`, when present.
        prompt_tokens: Option<u64>,
        /// `usage.completion_tokens`, when present.
        completion_tokens: Option<u64>,
        /// `finish_reason` of the first choice, when set.
        finish_reason: Option<String>,
    },
    /// The server reported an error inside the stream.
    Error(String),
}

/// Reads one payload (or a whole non-streamed response, whose chat choices carry
/// `message` where a stream's carry `delta`); `Err` when it is not `[DONE]` and not a
/// JSON object.
pub fn parse_chunk(payload: &str) -> Result<Chunk, String> {
    let payload = payload.trim();
    if payload == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let v: Value = serde_json::from_str(payload).map_err(|e| format!("{e}: {payload:.80}"))?;
    let Some(obj) = v.as_object() else {
        return Err(format!("not a JSON object: {payload:.80}"));
    };
    if let Some(err) = obj.get("error") {
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string());
        return Ok(Chunk::Error(msg));
    }
    let choice = obj
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let text = choice
        .map(|c| {
            let direct = c.get("text").and_then(Value::as_str);
            // A stream's chat chunks carry `delta`, a whole chat response `message`.
            let delta = c.get("delta").or_else(|| c.get("message"));
            let content = delta.and_then(|d| d.get("content")).and_then(Value::as_str);
            let reasoning = delta
                .and_then(|d| d.get("reasoning_content"))
                .and_then(Value::as_str);
            [direct, reasoning, content].into_iter().flatten().collect()
        })
        .unwrap_or_default();
    let finish_reason = choice
        .and_then(|c| c.get("finish_reason"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let usage = obj.get("usage").filter(|u| !u.is_null());
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    Ok(Chunk::Data {
        text,
        prompt_tokens: field("prompt_tokens"),
        completion_tokens: field("completion_tokens"),
        finish_reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_at_every_byte_boundary_decode_the_same() {
        let stream =
            "data: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n";
        let whole = SseDecoder::default().push(stream.as_bytes());
        assert_eq!(whole, vec!["{\"a\":1}", "line1\nline2", "[DONE]"]);
        for split in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream.as_bytes()[..split]);
            got.extend(d.push(&stream.as_bytes()[split..]));
            assert_eq!(got, whole, "split at {split}");
            assert!(!d.has_partial());
        }
    }

    #[test]
    fn a_cut_event_is_partial_not_emitted() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"choices\":[{\"te").is_empty());
        assert!(d.has_partial());
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {}\n").is_empty());
        assert!(d.has_partial());
    }

    #[test]
    fn completion_chat_usage_error_and_done_chunks() {
        let c = parse_chunk(r#"{"choices":[{"text":"hi","finish_reason":null}]}"#);
        assert_eq!(
            c,
            Ok(Chunk::Data {
                text: "hi".into(),
                prompt_tokens: None,
                completion_tokens: None,
                finish_reason: None
            })
        );
        let c = parse_chunk(r#"{"choices":[{"delta":{"content":"yo"},"finish_reason":"length"}]}"#);
        assert!(
            matches!(c, Ok(Chunk::Data { ref text, ref finish_reason, .. })
            if text == "yo" && finish_reason.as_deref() == Some("length"))
        );
        // A whole (non-streamed) chat response: `message`, with usage.
        let c = parse_chunk(
            r#"{"choices":[{"message":{"role":"assistant","content":"a b"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#,
        );
        assert!(
            matches!(c, Ok(Chunk::Data { ref text, completion_tokens: Some(2), .. }) if text == "a b")
        );
        let c = parse_chunk(r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#);
        assert!(matches!(
            c,
            Ok(Chunk::Data {
                prompt_tokens: Some(7),
                completion_tokens: Some(3),
                ..
            })
        ));
        let c = parse_chunk(r#"{"error":{"message":"overloaded"}}"#);
        assert_eq!(c, Ok(Chunk::Error("overloaded".into())));
        assert_eq!(parse_chunk(" [DONE] "), Ok(Chunk::Done));
        assert!(parse_chunk("{\"choices\": [").is_err());
        assert!(parse_chunk("42").is_err());
    }
}

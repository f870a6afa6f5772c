//! The JSON bodies the server answers, as typed serde structs: OpenAI's chat and
//! completion responses and their streamed chunks, usage, logprobs, the model list,
//! tokenize/detokenize, health/readiness and the error body. Field order is the wire
//! order; snapshot tests (tests/snapshots) pin every shape.
//!
//! Invariants: a chunk carries `usage` only when it is the usage chunk (the field is
//! absent otherwise, never `null`); `logprobs` and `finish_reason` are always present
//! (`null` when not asked for / not finished), as OpenAI sends them.

use serde::Serialize;

/// Token counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt tokens (over every prompt of the request).
    pub prompt_tokens: usize,
    /// Generated tokens (over every choice).
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage of `prompt` prompt tokens and `completion` generated ones.
    pub fn new(prompt: usize, completion: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// A chat or completion response, whole or one streamed chunk: the envelope every
/// generation body shares.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationBody<'a> {
    /// Response id (`chatcmpl-…`, `cmpl-…`), the same on every chunk.
    pub id: &'a str,
    /// `chat.completion`, `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix time of the request.
    pub created: u64,
    /// Served model name.
    pub model: &'a str,
    /// wick's version and the model's dtype/device.
    pub system_fingerprint: &'a str,
    /// The choices (empty on the usage chunk).
    pub choices: Vec<Choice>,
    /// Token counts: on whole responses and the usage chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One choice of a generation body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Choice {
    /// A whole chat answer.
    Chat(ChatChoice),
    /// A streamed chat piece.
    ChatDelta(ChatDeltaChoice),
    /// A completion, whole or a streamed piece (the same shape).
    Text(TextChoice),
}

/// A choice of a whole chat response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    /// Choice index.
    pub index: usize,
    /// The assistant's message.
    pub message: AssistantMessage,
    /// Logprobs, when asked for.
    pub logprobs: Option<Logprobs>,
    /// Why generation ended.
    pub finish_reason: &'static str,
}

/// The message of a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text (`null` when the answer is only tool calls).
    pub content: Option<String>,
    /// Tool calls parsed from the output (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallBody>,
}

/// A whole tool call of a chat answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallBody {
    /// `call_<random>`.
    pub id: String,
    /// Always `function`.
    pub r#type: &'static str,
    /// The call.
    pub function: FunctionCallBody,
}

/// The function of a tool call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCallBody {
    /// Function name.
    pub name: String,
    /// Arguments, a JSON string.
    pub arguments: String,
}

/// A streamed piece of a tool call: `id`, `type` and `function.name` on its first chunk,
/// then `function.arguments` fragments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallChunk {
    /// The call's index in the choice.
    pub index: usize,
    /// `call_<random>`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<&'static str>,
    /// Name and/or argument fragment.
    pub function: FunctionCallChunk,
}

/// The function part of a [`ToolCallChunk`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCallChunk {
    /// Function name, on the first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A fragment of the arguments.
    pub arguments: String,
}

/// A choice of a streamed chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatDeltaChoice {
    /// Choice index.
    pub index: usize,
    /// What is new.
    pub delta: Delta,
    /// Logprobs of the new tokens, when asked for.
    pub logprobs: Option<Logprobs>,
    /// Set on the choice's finish chunk.
    pub finish_reason: Option<&'static str>,
}

/// What a chat chunk adds: the role (opening chunk), text, or nothing (finish chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Delta {
    /// `assistant`, on the opening chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New tool-call pieces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallChunk>,
}

/// A completion choice, whole or streamed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextChoice {
    /// Choice index.
    pub index: usize,
    /// The text (whole: with the echoed prompt first, when asked).
    pub text: String,
    /// Logprobs, when asked for.
    pub logprobs: Option<Logprobs>,
    /// Why generation ended (`null` on streamed pieces before the end).
    pub finish_reason: Option<&'static str>,
}

/// Logprobs in the endpoint's format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Logprobs {
    /// Chat's `{"content": [...]}`.
    Chat(ChatLogprobs),
    /// Completions' parallel lists.
    Completion(CompletionLogprobs),
}

/// Chat logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatLogprobs {
    /// One entry per token.
    pub content: Vec<ChatTokenLogprob>,
}

/// A chat token's logprob and its alternatives.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    /// Token text.
    pub token: String,
    /// Its logprob.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position.
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Its logprob.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// Completion logprobs: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their logprobs.
    pub token_logprobs: Vec<f32>,
    /// Per token: alternative text -> logprob, most likely first.
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Byte offset of each token in the choice's text.
    pub text_offset: Vec<usize>,
}

/// GET /v1/models.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// One card per served name.
    pub data: Vec<ModelCard>,
}

/// One served model name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCard {
    /// The name clients use.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix time the model was loaded.
    pub created: u64,
    /// Always `wick`.
    pub owned_by: &'static str,
    /// The name again, or a LoRA adapter's path (vLLM's field).
    pub root: String,
    /// For a LoRA adapter, the base model's name (vLLM's field); `null` for the base.
    pub parent: Option<String>,
    /// Longest prompt + completion.
    pub max_model_len: usize,
}

/// POST /tokenize.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenizeResponse {
    /// Number of tokens.
    pub count: usize,
    /// Longest prompt + completion.
    pub max_model_len: usize,
    /// The ids.
    pub tokens: Vec<u32>,
}

/// POST /detokenize.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// GET /health and GET /ready.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthResponse {
    /// `ok`, `loading`, `draining`, `stalled` or `dead`.
    pub status: &'static str,
    /// Why not `ok` (the engine's state), when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The error body: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorResponse<'a> {
    /// The error.
    pub error: ErrorDetail<'a>,
}

/// OpenAI's error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorDetail<'a> {
    /// Human-readable message.
    pub message: &'a str,
    /// OpenAI's error type for the status.
    pub r#type: &'static str,
    /// The parameter at fault, or `null`.
    pub param: Option<&'a str>,
    /// Machine-readable code, or `null`.
    pub code: Option<&'static str>,
}

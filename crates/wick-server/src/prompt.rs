//! Text <-> token ids for one model: the chat template, the tokenizer and its special
//! tokens. Chat messages become a rendered prompt and then ids; a raw prompt gets bos
//! when the model asks for it; ids become text again.

use crate::chat_template::{ChatTemplate, RenderOptions};
use serde::Serialize;
use tokenizers::Tokenizer;
use wick_core::{ErrorKind, WickError};
use wick_models::SpecialTokens;

/// The model's tokenizer, chat template and special tokens.
pub struct PromptBuilder {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    template_source: Option<String>,
    special: SpecialTokens,
}

impl PromptBuilder {
    /// From the model's parts; `chat_template` is compiled here (a syntax error is
    /// reported at startup, not per request).
    pub fn new(
        tokenizer: Tokenizer,
        chat_template: Option<&str>,
        special: SpecialTokens,
    ) -> Result<Self, crate::chat_template::ChatTemplateError> {
        let template = chat_template.map(ChatTemplate::new).transpose()?;
        Ok(Self {
            tokenizer,
            template,
            template_source: chat_template.map(str::to_string),
            special,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The special tokens.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// The chat template's source, when there is one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.template_source.as_deref()
    }

    /// Whether chat requests can be served.
    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders `messages` (any serializable `{role, content, ...}` objects) with the chat
    /// template; `extra` holds further template variables (`chat_template_kwargs`).
    pub fn render_chat<M: Serialize>(
        &self,
        messages: &[M],
        add_generation_prompt: bool,
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, WickError> {
        let template = self.template.as_ref().ok_or_else(|| {
            WickError::new(
                ErrorKind::InvalidRequest,
                "this model has no chat template; use /v1/completions or start the server with --chat-template",
            )
        })?;
        let options = RenderOptions {
            add_generation_prompt,
            bos_token: self.special.bos.as_ref().map(|b| b.1.clone()),
            eos_token: self.special.eos.as_ref().map(|e| e.1.clone()),
            extra,
        };
        template
            .render(messages, &options)
            .map_err(|e| WickError::invalid_param("messages", e))
    }

    /// Tokenizes `text`. `add_special`: prepend bos when the model wants one (raw
    /// prompts; a rendered chat prompt already carries its special tokens).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, WickError> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| WickError::internal(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.special.add_bos {
            if let Some((bos, _)) = &self.special.bos {
                ids.push(*bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Renders and tokenizes a chat.
    pub fn encode_chat<M: Serialize>(
        &self,
        messages: &[M],
        extra: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u32>, WickError> {
        let text = self.render_chat(messages, true, extra)?;
        self.encode(&text, false)
    }

    /// Text of `ids`; `skip_special` drops special tokens such as eos.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, WickError> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| WickError::internal(format!("tokenizer: {e}")))
    }

    /// The text of one token id, as OpenAI's logprobs show it.
    pub fn token_text(&self, id: u32) -> String {
        self.decode(&[id], false).unwrap_or_default()
    }
}

//! SmolLM2's chat template (read from its GGUF file) rendered with every `messages` case
//! of ../shared/fixtures/smollm2/golden.json and tokenized with the GGUF tokenizer gives
//! exactly the reference prompt ids.
//!
//! Needs the model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use wick_models::tokenizer::gguf::{
    chat_template_from_gguf, tokenizer_from_gguf, GgufSpecialTokens,
};
use wick_server::chat_template::{ChatMessage, ChatTemplate, ChatTemplateError, RenderOptions};

fn gguf_path() -> PathBuf {
    wick_test_support::smollm2_gguf()
}

fn golden() -> serde_json::Value {
    wick_test_support::golden_json()
}

#[test]
fn smollm2_chat_prompts_match_reference_ids() {
    let mut file = std::fs::File::open(gguf_path()).expect("open GGUF");
    let metadata = Content::read(&mut file).expect("read GGUF").metadata;
    let tokenizer = tokenizer_from_gguf(&metadata).expect("tokenizer builds");
    let special = GgufSpecialTokens::from_gguf(&metadata).expect("special tokens");
    let template =
        ChatTemplate::new(chat_template_from_gguf(&metadata).expect("GGUF has a chat template"))
            .expect("template compiles");
    let options = RenderOptions {
        add_generation_prompt: true,
        bos_token: special.bos.map(|(_, text)| text),
        eos_token: special.eos.map(|(_, text)| text),
        ..RenderOptions::default()
    };

    let mut checked = 0;
    for case in golden()["cases"].as_array().expect("cases") {
        let Some(messages) = case.get("messages") else {
            continue;
        };
        let expected: Vec<u32> = case["prompt_token_ids"]
            .as_array()
            .expect("prompt_token_ids")
            .iter()
            .map(|id| id.as_u64().expect("an id") as u32)
            .collect();

        // Typed messages and raw JSON messages render the same.
        let typed: Vec<ChatMessage> =
            serde_json::from_value(messages.clone()).expect("role/content messages");
        let prompt = template.render(&typed, &options).expect("renders");
        let raw = messages.as_array().expect("messages array");
        assert_eq!(template.render(raw, &options).expect("renders"), prompt);

        let encoding = tokenizer.encode(prompt.as_str(), false).expect("encodes");
        assert_eq!(
            encoding.get_ids(),
            expected.as_slice(),
            "case {}: rendered {prompt:?}",
            case["id"]
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} messages cases in golden.json");
}

#[test]
fn render_errors_name_their_cause() {
    let template = ChatTemplate::new("{{ messages[0].content + 1 }}").expect("compiles");
    let err = template
        .render(&[ChatMessage::new("user", "hi")], &RenderOptions::default())
        .unwrap_err();
    assert!(matches!(err, ChatTemplateError::Render(_)), "{err}");
    assert!(
        err.to_string().contains("chat template rendering failed"),
        "{err}"
    );

    let err = ChatTemplate::new("{% if %}").unwrap_err();
    assert!(
        err.to_string().starts_with("invalid chat template: "),
        "{err}"
    );
}

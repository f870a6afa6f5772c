//! The tiny transformers-v5 checkpoints of ../shared/fixtures/tiny through the serving
//! stack's prompt side: the chat template from `chat_template.jinja` renders every
//! `messages` case to exactly the reference ids (raw prompts too); generation_config.json
//! gives the sampling defaults (none with `--generation-config vllm`); and ids the
//! weights have but the tokenizer does not (resized embeddings) detokenize to nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wick_server::detokenizer::IncrementalDetokenizer;
use wick_server::protocol::ModelDefaults;
use wick_server::stack::{GenerationConfigMode, LoadedStack, StackArgs};
use wick_test_support::tiny::{TinyGolden, TinyModel};

fn load(m: &TinyModel, generation_config: GenerationConfigMode) -> LoadedStack {
    LoadedStack::load(&StackArgs {
        model: m.dir().to_str().unwrap().to_string(),
        dtype: "f32".into(),
        device: Some("cpu".into()),
        chat_template: None,
        generation_config,
        ..StackArgs::default()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", m.name))
}

#[test]
fn chat_and_raw_prompts_match_reference_ids() {
    let golden = TinyGolden::load();
    for m in &golden.models {
        let stack = load(m, GenerationConfigMode::Auto);
        let p = &stack.prompt;
        assert!(p.has_chat_template(), "{}", m.name);
        let mut chats = 0;
        for c in &m.cases {
            let ids = match (&c.prompt, &c.messages) {
                (Some(text), _) => p.encode(text, true).unwrap(),
                (None, Some(messages)) => {
                    chats += 1;
                    let messages = messages.as_array().unwrap();
                    p.encode_chat(messages, Default::default()).unwrap()
                }
                (None, None) => panic!("{}/{}: no prompt", m.name, c.id),
            };
            assert_eq!(ids, c.prompt_token_ids, "{}/{}", m.name, c.id);
        }
        assert!(chats >= 2, "{}: {chats} chat cases", m.name);
    }
}

#[test]
fn generation_config_defaults_apply_unless_vllm_mode() {
    let golden = TinyGolden::load();
    let m = golden.model("llama3-tied");
    let auto = load(m, GenerationConfigMode::Auto);
    assert_eq!(
        auto.defaults,
        ModelDefaults {
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            repetition_penalty: None,
        }
    );
    assert_eq!(auto.prompt.special().eos_token_ids, vec![2]);
    let vllm = load(m, GenerationConfigMode::Vllm);
    assert!(vllm.defaults.is_empty());
    assert_eq!(vllm.prompt.special().eos_token_ids, vec![2]);
}

#[test]
fn ids_past_the_tokenizer_detokenize_to_nothing() {
    let golden = TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    let stack = load(m, GenerationConfigMode::Auto);
    let p = &stack.prompt;
    // 483..512 are rows of the resized embedding that no token names.
    for id in [483, 500, 511] {
        assert_eq!(p.decode(&[id], false).unwrap(), "");
        assert_eq!(p.decode(&[id], true).unwrap(), "");
        assert_eq!(p.token_text(id), "");
    }
    let hello = p.encode("Paris is", false).unwrap();
    let mut d = IncrementalDetokenizer::new(&[]);
    let mut pieces = vec![];
    for &id in hello.iter().chain(&[500]).chain(&hello) {
        pieces.push(d.push(p, id).unwrap());
    }
    pieces.push(d.flush(p).unwrap());
    assert_eq!(pieces[hello.len()], "", "{pieces:?}");
    let without = p
        .decode(&[hello.clone(), hello.clone()].concat(), true)
        .unwrap();
    assert_eq!(pieces.concat(), without);
    assert_eq!(without, "Paris isParis is");
    // An added special token is whole, and skipped as special text.
    assert_eq!(p.token_text(482), "<think>");
    assert_eq!(p.decode(&[482], true).unwrap(), "");
}

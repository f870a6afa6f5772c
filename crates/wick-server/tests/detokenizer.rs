//! Incremental detokenization with SmolLM2's byte-level BPE tokenizer: feeding tokens
//! one at a time gives exactly the text of decoding them all at once, and no piece ever
//! holds a broken character, even where characters are split across tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use wick_server::detokenizer::IncrementalDetokenizer;
use wick_server::prompt::PromptBuilder;

fn builder() -> PromptBuilder {
    let loaded = wick_test_support::load_smollm2(candle_core::DType::F32);
    PromptBuilder::new(
        loaded.tokenizer,
        loaded.chat_template.as_deref(),
        loaded.special,
    )
    .expect("template")
}

#[test]
fn pieces_concatenate_to_the_whole_text_and_never_split_characters() {
    let p = builder();
    let prompt = p.encode("Some text:", false).unwrap();
    for text in [
        " 日本語のテキスト, café crème, emoji 🎉🦀 and ümlauts",
        " plain ascii with  double  spaces\nand lines",
        "🎉",
    ] {
        let ids = p.encode(text, false).unwrap();
        let mut d = IncrementalDetokenizer::new(&prompt);
        let mut pieces = vec![];
        for &id in &ids {
            pieces.push(d.push(&p, id).unwrap());
        }
        pieces.push(d.flush(&p).unwrap());
        assert_eq!(pieces.concat(), p.decode(&ids, true).unwrap(), "{text:?}");
        assert_eq!(pieces.concat(), text);
        for piece in &pieces {
            assert!(!piece.contains('\u{FFFD}'), "{piece:?} in {pieces:?}");
        }
        if text == "🎉" {
            // The emoji takes several byte tokens: nothing comes out until the last.
            assert!(ids.len() > 1, "{ids:?}");
            assert!(
                pieces[..ids.len() - 1].iter().all(|p| p.is_empty()),
                "{pieces:?}"
            );
        }
    }
}

#[test]
fn eos_and_special_tokens_add_no_text_and_a_cut_character_is_flushed() {
    let p = builder();
    let mut d = IncrementalDetokenizer::new(&[]);
    assert_eq!(d.push(&p, 2).unwrap(), ""); // <|im_end|>
    let ids = p.encode("🎉", false).unwrap();
    assert_eq!(d.push(&p, ids[0]).unwrap(), "");
    assert_eq!(d.flush(&p).unwrap(), "\u{FFFD}");
}

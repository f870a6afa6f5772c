//! Grammar masks on SmolLM2's real tokenizer against a brute-force oracle: for a
//! grammar whose language L is small enough to list, after output bytes `p` a token is
//! allowed exactly when `p` followed by its bytes is a prefix of a string of L, and eos
//! exactly when `p` is in L. Every token of the vocabulary is checked at every step of
//! walks that spell each string of L (forced tokens included). Token bytes come from
//! the tokenizer's vocabulary through the GPT-2 byte map written here, not from the
//! trie under test.
//!
//! Also: the request fields that ask for a constraint, and their errors.
//!
//! Needs the model file: run `scripts/fetch-test-model.sh` (or set WICK_SMOLLM2_GGUF).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Map, Value};
use std::collections::HashSet;
use tokenizers::Tokenizer;
use wick_server::structured::{
    requested_constraint, tool_call_constraint, Grammars, OutputConstraint, RequestedConstraint,
};

fn smollm2_tokenizer() -> Tokenizer {
    let path = wick_test_support::smollm2_gguf();
    let mut file = std::fs::File::open(&path).expect("SmolLM2 GGUF");
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).expect("gguf");
    wick_models::tokenizer::gguf::tokenizer_from_gguf(&content.metadata).expect("tokenizer")
}

/// GPT-2's byte-level alphabet, inverted: the byte each vocabulary character stands for.
fn byte_of(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let c = c as u32;
    if c < 256 && printable(c) {
        return Some(c as u8);
    }
    let others: Vec<u32> = (0..256).filter(|&b| !printable(b)).collect();
    others.get(c.checked_sub(256)? as usize).map(|&b| b as u8)
}

struct Vocab {
    /// Each token's bytes; `None` for special tokens (never allowed but eos).
    bytes: Vec<Option<Vec<u8>>>,
    eos: Vec<u32>,
}

impl Vocab {
    fn new(tokenizer: &Tokenizer, size: usize, eos: Vec<u32>) -> Self {
        let special: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let bytes = (0..size as u32)
            .map(|id| {
                if special.contains(&id) {
                    return None;
                }
                let text = tokenizer.id_to_token(id)?;
                text.chars().map(byte_of).collect()
            })
            .collect();
        Self { bytes, eos }
    }
}

/// The oracle's mask after output `p` for language `lang` (with its prefixes).
fn oracle(
    vocab: &Vocab,
    prefixes: &HashSet<Vec<u8>>,
    lang: &HashSet<Vec<u8>>,
    p: &[u8],
) -> Vec<u32> {
    let mut allowed = vec![];
    for (id, bytes) in vocab.bytes.iter().enumerate() {
        let Some(bytes) = bytes.as_ref().filter(|b| !b.is_empty()) else {
            continue;
        };
        let mut next = p.to_vec();
        next.extend(bytes);
        if prefixes.contains(&next) {
            allowed.push(id as u32);
        }
    }
    if lang.contains(p) {
        allowed.extend(&vocab.eos);
    }
    allowed.sort_unstable();
    allowed
}

/// How a mask must relate to the oracle's.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// The same set.
    Equal,
    /// A non-empty subset with the same eos decision: where the grammar forces bytes,
    /// llguidance keeps only tokens of their canonical tokenization (a `{`
    /// token is not allowed where `{"` is). The walks still reach every string of L.
    CanonicalSubset,
}

/// Walks the grammar of `constraint` along every string of `lang`, comparing the mask
/// with the oracle over the whole vocabulary at every step.
fn check_against_oracle(constraint: OutputConstraint, lang: &[&str], expect: Expect) {
    let tokenizer = smollm2_tokenizer();
    let vocab_size = 49152;
    let eos = vec![2u32];
    let vocab = Vocab::new(&tokenizer, vocab_size, eos.clone());
    let grammars = Grammars::new(tokenizer, vocab_size, eos.clone());
    let factory = grammars
        .compile(&RequestedConstraint {
            field: "test".into(),
            constraint,
        })
        .expect("compiles");
    let lang: HashSet<Vec<u8>> = lang.iter().map(|s| s.as_bytes().to_vec()).collect();
    let prefixes: HashSet<Vec<u8>> = lang
        .iter()
        .flat_map(|s| (1..=s.len()).map(|n| s[..n].to_vec()))
        .collect();
    let mut forced_seen = 0;
    for target in &lang {
        let mut processor = factory.create(0, &[]).expect("processor");
        let mut p: Vec<u8> = vec![];
        for step in 0.. {
            assert!(step < 200, "walk towards {target:?} does not end");
            let mask = processor.constraint(&[]).allowed.expect("a mask");
            let got: Vec<u32> = (0..vocab_size as u32)
                .filter(|&t| mask.contains(t))
                .collect();
            let want = oracle(&vocab, &prefixes, &lang, &p);
            let at = format!(
                "mask after {:?} (towards {:?})",
                String::from_utf8_lossy(&p),
                String::from_utf8_lossy(target)
            );
            match expect {
                Expect::Equal => assert_eq!(got, want, "{at}"),
                Expect::CanonicalSubset => {
                    let extra: Vec<&u32> = got.iter().filter(|t| !want.contains(t)).collect();
                    assert!(extra.is_empty(), "{at}: not in the language: {extra:?}");
                    assert!(!got.is_empty(), "{at}: empty");
                    assert_eq!(got.contains(&eos[0]), want.contains(&eos[0]), "{at}: eos");
                }
            }
            if &p == target {
                // eos is allowed (checked above); taking it ends the walk.
                assert!(mask.contains(eos[0]));
                break;
            }
            // The longest allowed token that stays on the way to `target`.
            let token = got
                .iter()
                .filter_map(|&t| Some((t, vocab.bytes[t as usize].as_ref()?)))
                .filter(|(_, b)| target[p.len()..].starts_with(b))
                .max_by_key(|(_, b)| b.len())
                .map(|(t, _)| t)
                .expect("some allowed token leads to the target");
            processor.accept(token);
            p.extend(vocab.bytes[token as usize].as_ref().unwrap());
            for t in processor.forced() {
                forced_seen += 1;
                p.extend(
                    vocab.bytes[t as usize]
                        .as_ref()
                        .expect("forced a text token"),
                );
                assert!(prefixes.contains(&p), "forced off the language: {p:?}");
            }
            if let Some(why) = processor.ended() {
                assert!(
                    lang.contains(&p),
                    "ended ({why}) outside the language: {p:?}"
                );
                assert_eq!(&p, target, "ended before the target");
                break;
            }
        }
    }
    eprintln!("{} strings walked, {forced_seen} forced tokens", lang.len());
}

#[test]
fn choice_masks_match_the_oracle() {
    let choices = ["red", "green", "blue", "grey", "greenish blue"];
    check_against_oracle(
        OutputConstraint::Choice(choices.iter().map(|s| s.to_string()).collect()),
        &choices,
        Expect::Equal,
    );
}

#[test]
fn regex_masks_match_the_oracle() {
    let lang: Vec<String> = (0..4)
        .chain(10..40)
        .flat_map(|n| ["0", "05"].map(move |d| format!("{n}.{d}")))
        .collect();
    let lang: Vec<&str> = lang.iter().map(String::as_str).collect();
    check_against_oracle(
        OutputConstraint::Regex(r"(0|[1-3][0-9]?)\.(0|05)".into()),
        &lang,
        Expect::Equal,
    );
}

#[test]
fn json_schema_masks_match_the_oracle() {
    let schema = json!({
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 12},
        },
        "required": ["color", "n"],
        "additionalProperties": false,
    });
    // The layout wick asks for: one space after `,` and `:`, properties in order.
    let lang: Vec<String> = ["red", "green"]
        .iter()
        .flat_map(|c| (0..=12).map(move |n| format!("{{\"color\": \"{c}\", \"n\": {n}}}")))
        .collect();
    let lang: Vec<&str> = lang.iter().map(String::as_str).collect();
    check_against_oracle(
        OutputConstraint::JsonSchema(schema),
        &lang,
        Expect::CanonicalSubset,
    );
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn request_fields_name_their_constraint() {
    let c = |v| requested_constraint(&fields(v)).unwrap();
    assert_eq!(c(json!({"response_format": {"type": "text"}})), None);
    assert_eq!(c(json!({"response_format": null, "user": "x"})), None);
    let json_object = c(json!({"response_format": {"type": "json_object"}})).unwrap();
    assert_eq!(
        json_object.constraint,
        OutputConstraint::JsonSchema(json!({"type": "object"}))
    );
    let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let r = c(json!({"response_format": {"type": "json_schema",
        "json_schema": {"name": "x", "schema": schema, "strict": true}}}))
    .unwrap();
    assert_eq!(r.constraint, OutputConstraint::JsonSchema(schema.clone()));
    assert_eq!(r.field, "response_format.json_schema.schema");
    let r = c(json!({"structured_outputs": {"regex": "a+"}})).unwrap();
    assert_eq!(r.constraint, OutputConstraint::Regex("a+".into()));
    assert_eq!(r.field, "structured_outputs.regex");
    let r = c(json!({"structured_outputs": {"choice": ["x", "y"]}})).unwrap();
    assert_eq!(
        r.constraint,
        OutputConstraint::Choice(vec!["x".into(), "y".into()])
    );
    let r = c(json!({"guided_json": schema.to_string()})).unwrap();
    assert_eq!(r.constraint, OutputConstraint::JsonSchema(schema));
    let r = c(json!({"guided_grammar": "start: \"a\""})).unwrap();
    assert_eq!(r.constraint, OutputConstraint::Lark("start: \"a\"".into()));
    let r = c(json!({"guided_choice": ["a"], "guided_decoding_backend": "xgrammar"})).unwrap();
    assert_eq!(r.field, "guided_choice");
}

#[test]
fn bad_constraint_fields_are_refused_by_name() {
    let err = |v| {
        let e = requested_constraint(&fields(v)).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        (e.param.unwrap_or_default(), e.message)
    };
    let (param, msg) = err(json!({"response_format": {"type": "xml"}}));
    assert_eq!(param, "response_format.type");
    assert!(msg.contains("xml"), "{msg}");
    let (param, msg) = err(json!({"response_format": {"type": "json_object"},
        "guided_regex": "a"}));
    assert_eq!(param, "guided_regex");
    assert!(msg.contains("only one"), "{msg}");
    let (param, _) = err(json!({"structured_outputs": {"structural_tag": "x"}}));
    assert_eq!(param, "structured_outputs.structural_tag");
    let (param, msg) = err(json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}));
    assert_eq!(param, "structured_outputs");
    assert!(msg.contains("only one"), "{msg}");
    let (param, _) = err(json!({"guided_choice": []}));
    assert_eq!(param, "guided_choice");
    let (param, _) = err(json!({"guided_json": "{not json"}));
    assert_eq!(param, "guided_json");
    let (param, _) = err(json!({"guided_whitespace_pattern": "\\s*"}));
    assert_eq!(param, "guided_whitespace_pattern");
}

#[test]
fn grammars_llguidance_refuses_are_a_400_naming_the_field() {
    let tokenizer = smollm2_tokenizer();
    let grammars = Grammars::new(tokenizer, 49152, vec![2]);
    let compile = |field: &str, constraint| {
        let r = RequestedConstraint {
            field: field.into(),
            constraint,
        };
        grammars
            .compile(&r)
            .err()
            .map(|e| (e.status.as_u16(), e.param.unwrap_or_default(), e.message))
    };
    // A schema keyword llguidance does not implement is named in the message.
    let unsupported = json!({"type": "object", "propertyNames": {"pattern": "^a"},
        "unevaluatedProperties": false, "dependentSchemas": {"a": {}}});
    let (kind, param, msg) = compile(
        "response_format.json_schema.schema",
        OutputConstraint::JsonSchema(unsupported),
    )
    .expect("refused");
    assert_eq!(kind, 400);
    assert_eq!(param, "response_format.json_schema.schema");
    assert!(
        msg.contains("dependentSchemas")
            || msg.contains("propertyNames")
            || msg.contains("unevaluated"),
        "{msg}"
    );
    let (_, param, _) =
        compile("guided_regex", OutputConstraint::Regex("(unclosed".into())).expect("refused");
    assert_eq!(param, "guided_regex");
    let (_, param, _) = compile(
        "guided_grammar",
        OutputConstraint::Lark("start: undefined_rule".into()),
    )
    .expect("refused");
    assert_eq!(param, "guided_grammar");
    assert!(compile("x", OutputConstraint::Regex("[a-z]+".into())).is_none());
}

#[test]
fn forced_tool_choices_become_json_schemas() {
    let tools = vec![
        json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}),
        json!({"type": "function", "function": {"name": "now"}}),
    ];
    let named = tool_call_constraint(&tools, Some("get_weather"), None).unwrap();
    assert_eq!(
        named.constraint,
        OutputConstraint::JsonSchema(tools[0]["function"]["parameters"].clone())
    );
    let e = tool_call_constraint(&tools, Some("nope"), None).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tool_choice"));
    let OutputConstraint::JsonSchema(required) = tool_call_constraint(&tools, None, Some(1))
        .unwrap()
        .constraint
    else {
        panic!("not a schema")
    };
    assert_eq!(required["minItems"], 1);
    assert_eq!(required["maxItems"], 1);
    let calls = required["items"]["anyOf"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1]["properties"]["name"]["const"], "now");
    assert_eq!(calls[1]["properties"]["parameters"]["type"], "object");
}

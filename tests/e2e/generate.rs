//! `wick generate` (greedy, through the engine) prints the golden text.

use wick_test_support::{comparable_len, golden_cases, smollm2_gguf};

#[test]
fn wick_generate_prints_the_golden_chat_answer() {
    let case = golden_cases()
        .into_iter()
        .find(|c| c.id == "chat-capital")
        .expect("chat-capital case");
    assert_eq!(
        comparable_len(&case),
        case.output_token_ids.len(),
        "no near tie"
    );
    let prompt = case.messages.as_ref().expect("messages")[0]["content"]
        .as_str()
        .expect("text")
        .to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["generate", "--chat", "--quantization", "none", "--model"])
        .arg(smollm2_gguf())
        .args(["--prompt", &prompt, "--max-tokens"])
        .arg(case.max_tokens.to_string())
        .output()
        .expect("run wick generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let want = case.output_text.trim_end_matches("<|im_end|>");
    assert_eq!(text.trim_end_matches('\n'), want);
    // The log shows it went through the engine.
    assert!(String::from_utf8_lossy(&out.stderr).contains("KV cache allocated"));
}

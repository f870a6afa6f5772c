//! Issue 11's "nothing in a step blocks on the device but the sampled ids", checked by
//! construction: the code a step runs after `ModelInput::build` (the runner, the engine's
//! sample phase, the model and its layers, every op of wick-kernels and its CUDA side) is
//! read here, and any call that copies a tensor's values back to the host fails the test,
//! except where listed below with the reason it is not a device read.
//!
//! A source check rather than a counting wrapper: candle has no hook on its copies, and
//! the CPU, where tests run, has no copies to count. Test modules (`#[cfg(test)]` to the
//! end of a file, and files named `tests.rs`) are left out: tests may read anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use wick_test_support::repo_root;

/// Calls that read a tensor's values back to the host (candle's and cudarc's); moving a
/// tensor to the CPU is one too (moving one to the model's device is an upload).
const READS: [&str; 9] = [
    "to_vec0",
    "to_vec1",
    "to_vec2",
    "to_vec3",
    "to_scalar",
    "clone_dtoh",
    "memcpy_dtoh",
    "to_device(&Device::Cpu",
    "to_device(&candle_core::Device::Cpu",
];

/// `(file, call, why it is allowed)`.
const ALLOWED: [(&str, &str, &str); 2] = [
    (
        "kernels/src/cuda/sampling.rs",
        "clone_dtoh",
        "the sampled ids and the logprobs asked for: the step's one read",
    ),
    (
        "kernels/src/quant.rs",
        "to_vec1",
        "QuantMatrix refuses anything but CPU activations: a CPU slice, not a device read",
    ),
];

/// The step's code after `ModelInput::build`.
const STEP_DIRS: [&str; 2] = ["kernels/src", "models/src"];
const STEP_FILES: [&str; 3] = [
    "crates/wick-engine/src/runner.rs",
    "crates/wick-engine/src/engine/sample_step.rs",
    "crates/wick-engine/src/engine/engine_loop.rs",
];
/// Files under STEP_DIRS that the step does not run: loading, before any step.
const NOT_IN_STEP: [&str; 6] = [
    "models/src/loader.rs",
    "models/src/weights.rs",
    "models/src/source.rs",
    "models/src/gguf_metadata.rs",
    "models/src/generation_config.rs",
    "models/src/tokenizer",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file without its inline test module (from `#[cfg(test)] mod tests {`, which wick
/// keeps at the end of a file, to the end).
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

#[test]
fn a_step_reads_nothing_back_but_the_sampled_tokens() {
    let root = repo_root().canonicalize().unwrap();
    let mut files: Vec<PathBuf> = STEP_FILES.iter().map(|f| root.join(f)).collect();
    for dir in STEP_DIRS {
        rust_files(&root.join(dir), &mut files);
    }
    let mut found = Vec::new();
    let mut allowed_seen = vec![false; ALLOWED.len()];
    for path in &files {
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if NOT_IN_STEP.iter().any(|n| rel.starts_with(n)) || rel.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in without_tests(&text).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for call in READS {
                if !line.contains(call) {
                    continue;
                }
                match ALLOWED.iter().position(|a| a.0 == rel && a.1 == call) {
                    Some(i) => allowed_seen[i] = true,
                    None => found.push(format!("{rel}:{}: {}", n + 1, line.trim())),
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "device-to-host reads in a step's code:\n{}",
        found.join("\n")
    );
    // The list stays true: each allowed read is still there (and the walk saw the files).
    for (seen, (file, call, _)) in allowed_seen.iter().zip(ALLOWED) {
        assert!(seen, "{file} no longer calls {call}: drop it from ALLOWED");
    }
}

#[test]
fn the_check_sees_a_read() {
    let text = "fn f(t: &Tensor) { let v = t.to_vec1::<u32>(); }\n#[cfg(test)]\nmod tests {\n fn g() { x.to_scalar() } }";
    let body = without_tests(text);
    assert!(body.contains("to_vec1") && !body.contains("to_scalar"));
}

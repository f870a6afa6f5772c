//! `wick generate`: load a model, run one prompt greedily through the engine, print the
//! text. The model, template and engine come from wick-server's serving stack, the same
//! code `wick serve` builds them with.

use anyhow::{Context, Result};
use clap::Args;
use wick_core::{SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineRequest};
use wick_server::chat_template::ChatMessage;
use wick_server::stack::{LoadedStack, StackArgs};
/// Arguments of `wick generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a Hugging Face directory, a .gguf file, or a hub id org/name (optionally @revision).
    #[arg(long)]
    model: String,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Render the prompt as one user message through the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// auto (f32 on CPU, bf16 on CUDA), f32, f16 or bf16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// auto (GGUF weights stay quantized), none (dequantize to --dtype) or gguf (auto,
    /// and an error for a checkpoint that is not GGUF).
    #[arg(long, default_value = "auto", value_parser = wick_server::stack::parse_quantization)]
    quantization: wick_server::stack::Quantization,
    /// cpu, cuda or cuda:N (default: first GPU if built with CUDA, else CPU).
    #[arg(long)]
    device: Option<String>,
    /// Prefill chunk size in tokens (the engine's token budget per step).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
}

/// Runs `wick generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let loaded = LoadedStack::load(&StackArgs {
        model: args.model.clone(),
        dtype: args.dtype.clone(),
        quantization: args.quantization,
        device: args.device.clone(),
        chat_template: None,
        ..StackArgs::default()
    })?;
    let prompt = &loaded.prompt;
    let ids = if args.chat {
        anyhow::ensure!(
            prompt.has_chat_template(),
            "--chat: the model has no chat template"
        );
        prompt.encode_chat(
            &[ChatMessage::new("user", &args.prompt)],
            Default::default(),
        )?
    } else {
        prompt.encode(&args.prompt, true)?
    };
    // A cache just large enough for this one request.
    let config = EngineConfig::default();
    let kv_cache_memory = loaded.kv_cache_bytes_for(ids.len() + args.max_tokens, config.block_size);
    let stack = loaded.start(EngineConfig {
        max_num_seqs: 1,
        max_num_batched_tokens: Some(args.chunk.max(1)),
        kv_cache_memory: Some(kv_cache_memory),
        ..config
    })?;
    let mut stream = stack.engine.submit(EngineRequest {
        prompt_token_ids: ids,
        params: SamplingParams::greedy(args.max_tokens),
        ..Default::default()
    })?;
    let mut out = vec![];
    while let Some(event) = stream.blocking_next() {
        match event {
            TokenEvent::Token { id, .. } => out.push(id),
            TokenEvent::Finished(m) => tracing::info!(
                prompt_tokens = m.prompt_tokens,
                generated = m.generation_tokens,
                ttft_s = m.ttft_s,
                total_s = m.e2e_s,
                "done"
            ),
            TokenEvent::Error(e) => return Err(e).context("generation failed"),
        }
    }
    stack.engine.shutdown();
    println!("{}", stack.prompt.decode(&out, true)?);
    Ok(())
}

//! `wick generate`: load a model, run one prompt greedily through the engine (the same
//! path `wick serve` uses), print the text.

use anyhow::{Context, Result};
use clap::Args;
use wick_core::{SamplingParams, TokenEvent};
use wick_engine::{EngineConfig, EngineHandle, EngineRequest};
use wick_models::device::{device_name, parse_dtype, select_device};
use wick_models::LoadOptions;
use wick_server::chat_template::ChatMessage;
use wick_server::prompt::PromptBuilder;

/// Arguments of `wick generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a Hugging Face directory, a .gguf file, or a hub id org/name[@revision].
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
    /// cpu, cuda or cuda:N (default: first GPU if built with CUDA, else CPU).
    #[arg(long)]
    device: Option<String>,
    /// Prefill chunk size in tokens (the engine's token budget per step).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
}

/// Runs `wick generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    let device = select_device(args.device.as_deref())?;
    tracing::info!(device = %device_name(&device), "device selected");
    let loaded = wick_models::load(
        &args.model,
        &LoadOptions {
            dtype: parse_dtype(&args.dtype)?,
            device,
        },
    )?;
    let prompt = PromptBuilder::new(
        loaded.tokenizer,
        loaded.chat_template.as_deref(),
        loaded.special.clone(),
    )?;
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
    let block_bytes = wick_models::KvCache::bytes_per_block(
        loaded.model.config(),
        wick_models::DEFAULT_BLOCK_SIZE,
        loaded.model.dtype(),
    );
    let blocks = (ids.len() + args.max_tokens).div_ceil(wick_models::DEFAULT_BLOCK_SIZE) + 1;
    let engine = EngineHandle::start(
        loaded.model,
        loaded.special.eos_token_ids.clone(),
        EngineConfig {
            max_num_seqs: 1,
            max_num_batched_tokens: args.chunk.max(1),
            kv_cache_memory: Some((blocks * block_bytes) as u64),
            ..EngineConfig::default()
        },
    )?;
    let mut stream = engine.submit(EngineRequest {
        prompt_token_ids: ids,
        params: SamplingParams::greedy(args.max_tokens),
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
    engine.shutdown();
    println!("{}", prompt.decode(&out, true)?);
    Ok(())
}

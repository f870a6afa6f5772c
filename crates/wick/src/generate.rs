//! `wick generate`: load a model, run one prompt greedily, print the text.

use anyhow::{Context, Result};
use clap::Args;
use wick_models::device::{device_name, parse_dtype, select_device};
use wick_models::{KvCache, LoadOptions, DEFAULT_BLOCK_SIZE};
use wick_server::chat_template::{ChatMessage, ChatTemplate, RenderOptions};

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
    /// Prefill chunk size in tokens.
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
    let text = if args.chat {
        let template = loaded
            .chat_template
            .as_deref()
            .context("--chat: the model has no chat template")?;
        let template = ChatTemplate::new(template)?;
        let messages = [ChatMessage::new("user", &args.prompt)];
        template.render(
            &messages,
            &RenderOptions {
                add_generation_prompt: true,
                bos_token: loaded.special.bos.as_ref().map(|b| b.1.clone()),
                eos_token: loaded.special.eos.as_ref().map(|e| e.1.clone()),
                ..Default::default()
            },
        )?
    } else {
        args.prompt.clone()
    };
    let mut ids = loaded
        .tokenizer
        .encode(text.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .to_vec();
    if loaded.special.add_bos && !args.chat {
        if let Some((bos, _)) = &loaded.special.bos {
            ids.insert(0, *bos);
        }
    }
    let model = &loaded.model;
    let cfg = model.config();
    let total = ids.len() + args.max_tokens;
    anyhow::ensure!(
        total <= cfg.max_position_embeddings,
        "prompt ({} tokens) + max_tokens ({}) exceeds the model's context of {}",
        ids.len(),
        args.max_tokens,
        cfg.max_position_embeddings
    );
    let blocks = total.div_ceil(DEFAULT_BLOCK_SIZE);
    let mut cache = KvCache::new(
        cfg,
        DEFAULT_BLOCK_SIZE,
        blocks,
        model.dtype(),
        model.device(),
    )?;
    let out = wick_models::greedy::generate(
        model,
        &mut cache,
        &ids,
        args.max_tokens,
        &loaded.special.eos_token_ids,
        args.chunk,
    )?;
    let out_ids: Vec<u32> = out
        .iter()
        .map(|t| t.id)
        .filter(|id| !loaded.special.eos_token_ids.contains(id))
        .collect();
    let text = loaded
        .tokenizer
        .decode(&out_ids, true)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    println!("{text}");
    Ok(())
}

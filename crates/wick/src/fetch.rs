//! `wick fetch MODEL`: puts a model (and LoRA adapters) into the Hugging Face cache ahead
//! of time, the way `wick serve` would fetch it (`HF_HOME`/`HF_HUB_CACHE`, `HF_TOKEN`,
//! `HF_HUB_OFFLINE`), then proves it loads: it loads it on the CPU through the loader
//! `wick serve` uses (config parsed, tokenizer read, every tensor present with the shape
//! the architecture expects, chat template compiled) and each adapter against it.
//!
//! Prints one `ok` line per checked thing on stdout; the first failure is the error
//! (exit 1), naming what is missing or wrong.

use anyhow::{Context, Result};
use clap::Args;
use wick_models::source::{resolve_hf_files, ModelSource};
use wick_server::stack::{LoadedStack, StackArgs};

/// Arguments of `wick fetch`.
#[derive(Args, Debug)]
#[command(
    long_about = "Download a model (a hub id org/name[@revision]) into the Hugging Face cache \
    (HF_HOME or HF_HUB_CACHE; HF_TOKEN for gated models), or check a local directory or \
    .gguf file, then load it on the CPU as `wick serve` does to prove every file and \
    tensor is there with the right shape. Loading needs about the model's size in RAM \
    (weights load as bf16; GGUF stays quantized)."
)]
pub struct FetchArgs {
    /// Model: a hub id org/name (optionally @revision), a Hugging Face directory, or a
    /// .gguf file.
    model: String,
    /// LoRA adapters to fetch too and check against the model, as `name=path_or_hub_id`
    /// (as for `wick serve`). Several may follow the flag.
    #[arg(long, num_args = 1.., value_parser = wick_server::serve::parse_lora_module)]
    lora_modules: Vec<(String, String)>,
    /// Highest LoRA rank accepted (as for `wick serve`).
    #[arg(long, default_value_t = 64)]
    max_lora_rank: usize,
}

/// Runs `wick fetch`.
pub fn run(args: FetchArgs) -> Result<()> {
    let source = ModelSource::parse(&args.model)?;
    match &source {
        ModelSource::Gguf(path) => println!("ok file {}", path.display()),
        other => {
            let files = resolve_hf_files(other).with_context(|| format!("fetch {}", args.model))?;
            let optional = [
                &files.tokenizer_config,
                &files.generation_config,
                &files.chat_template,
            ];
            let all = [&files.config, &files.tokenizer]
                .into_iter()
                .chain(&files.weights)
                .chain(optional.into_iter().flatten());
            for path in all {
                println!("ok file {}", path.display());
            }
        }
    }

    let loaded = LoadedStack::load(&StackArgs {
        model: args.model.clone(),
        // The checkpoint's own size for most: bf16 checkpoints stay bf16.
        dtype: "bf16".into(),
        device: Some("cpu".into()),
        ..StackArgs::default()
    })
    .with_context(|| format!("check {}", args.model))?;
    let cfg = loaded.config();
    println!(
        "ok config: {:?}, {} layers, hidden size {}, {} heads ({} kv), vocab {}, context {}",
        cfg.architecture,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.vocab_size,
        cfg.max_position_embeddings
    );
    println!(
        "ok tokenizer: {} tokens",
        loaded.prompt.tokenizer().get_vocab_size(true)
    );
    println!(
        "ok weights: every tensor present with its expected shape ({} bytes loaded)",
        loaded.weight_bytes
    );
    println!(
        "ok chat template: {}",
        if loaded.prompt.has_chat_template() {
            "compiled"
        } else {
            "none (only /v1/completions will work)"
        }
    );
    for (name, spec) in &args.lora_modules {
        let adapter = wick_models::LoraAdapter::load(spec, cfg, args.max_lora_rank)
            .with_context(|| format!("--lora-modules {name}={spec}"))?;
        println!(
            "ok lora {name}={spec}: rank {}, {} target modules, {}",
            adapter.rank,
            adapter.target_modules.len(),
            adapter.path.display()
        );
    }
    println!("ok {} is ready to serve", args.model);
    Ok(())
}

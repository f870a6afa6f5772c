//! Greedy-decodes a few prompts as one ragged batch, with the prompts fed in chunks (so a
//! step mixes chunked prefill and decode), and dumps every logits row it sampled from, for
//! comparison with another implementation (scripts/gpu-run.sh compares with transformers).
//!
//! `cargo run --release -p wick-models --example logits_dump -- MODEL PROMPTS_JSON OUT_PREFIX [DECODE] [CHUNK] [DTYPE] [DEVICE]`
//!
//! PROMPTS_JSON holds `[[token ids], ...]`. Writes `OUT_PREFIX.json`
//! (`{"device", "dtype", "vocab", "seqs": [{"prompt": [...], "generated": [...]}]}`) and
//! `OUT_PREFIX.f32`: for each sequence in order, DECODE rows of `vocab` little-endian f32
//! logits; row i is what generated token i was the argmax of.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use wick_models::rope_scaling::RopeScaling;
use wick_models::{KvCache, LoadOptions, ModelInput, SequenceChunk};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// One sequence's progress.
struct Seq {
    prompt: Vec<u32>,
    generated: Vec<u32>,
    table: Vec<u32>,
    computed: usize,
}

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: logits_dump MODEL PROMPTS_JSON OUT_PREFIX [DECODE] [CHUNK] [DTYPE] [DEVICE]";
    let (Some(model_spec), Some(prompts_path), Some(out_prefix)) =
        (args.get(1), args.get(2), args.get(3))
    else {
        return Err(usage.into());
    };
    let decode: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let chunk: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(48);
    let dtype =
        wick_models::device::parse_dtype(args.get(6).map(String::as_str).unwrap_or("auto"))?;
    let device = wick_models::device::select_device(args.get(7).map(String::as_str))?;
    if decode == 0 || chunk == 0 {
        return Err("DECODE and CHUNK must be positive".into());
    }
    let prompts: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(prompts_path)?)?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err("PROMPTS_JSON must hold non-empty prompts".into());
    }

    let loaded = wick_models::load(
        model_spec,
        &LoadOptions {
            dtype,
            device: device.clone(),
            quantization: wick_models::Quantization::None,
        },
    )?;
    let model = &loaded.model;
    let vocab = model.config().vocab_size;
    let bs = wick_models::DEFAULT_BLOCK_SIZE;
    let mut next_block = 0u32;
    let mut seqs: Vec<Seq> = prompts
        .into_iter()
        .map(|prompt| {
            let blocks = (prompt.len() + decode).div_ceil(bs) as u32;
            let table = (next_block..next_block + blocks).collect();
            next_block += blocks;
            Seq {
                prompt,
                generated: Vec::new(),
                table,
                computed: 0,
            }
        })
        .collect();
    let mut cache = KvCache::new(
        model.config(),
        bs,
        next_block as usize,
        model.dtype(),
        &device,
    )?;
    let mut rows: Vec<Vec<Vec<f32>>> = vec![Vec::new(); seqs.len()];

    while seqs.iter().any(|s| s.generated.len() < decode) {
        // Each unfinished sequence: its next prompt chunk, or its last token.
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].generated.len() < decode)
            .collect();
        let tokens: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| {
                let s = &seqs[i];
                match s.generated.last() {
                    Some(&t) => vec![t],
                    None => s.prompt[s.computed..(s.computed + chunk).min(s.prompt.len())].to_vec(),
                }
            })
            .collect();
        let chunks: Vec<SequenceChunk<'_>> = active
            .iter()
            .zip(&tokens)
            .map(|(&i, t)| SequenceChunk {
                tokens: t,
                num_computed_tokens: seqs[i].computed,
                block_table: &seqs[i].table,
                lora_slot: None,
                sample: seqs[i].computed + t.len() >= seqs[i].prompt.len(),
            })
            .collect();
        let input = ModelInput::build(&chunks, bs, &device)?;
        let mut logits = model
            .forward(&input, &mut cache)?
            .to_vec2::<f32>()?
            .into_iter();
        for (&i, t) in active.iter().zip(&tokens) {
            let s = &mut seqs[i];
            s.computed += t.len();
            if s.computed < s.prompt.len() {
                continue; // mid-prompt: no logits row
            }
            let row = logits
                .next()
                .ok_or("fewer logits rows than sampled sequences")?;
            let argmax = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &x)| {
                    if x > best.1 {
                        (j, x)
                    } else {
                        best
                    }
                })
                .0;
            s.generated.push(argmax as u32);
            rows[i].push(row);
        }
    }

    let mut bin = std::io::BufWriter::new(std::fs::File::create(format!("{out_prefix}.f32"))?);
    for row in rows.iter().flatten() {
        for x in row {
            bin.write_all(&x.to_le_bytes())?;
        }
    }
    bin.flush()?;
    // The rope settings as wick read them from config.json: gpu-check.py compares them
    // with the ones it meant to write before it compares any logits.
    let cfg = model.config();
    let mut rope = match &cfg.rope_scaling {
        None => serde_json::json!({"rope_type": "default"}),
        Some(RopeScaling::Linear { factor }) => {
            serde_json::json!({"rope_type": "linear", "factor": factor})
        }
        Some(RopeScaling::Llama3(l)) => serde_json::json!({
            "rope_type": "llama3",
            "factor": l.factor,
            "low_freq_factor": l.low_freq_factor,
            "high_freq_factor": l.high_freq_factor,
            "original_max_position_embeddings": l.original_max_position_embeddings,
        }),
        Some(RopeScaling::Yarn(y)) => serde_json::json!({
            "rope_type": "yarn",
            "factor": y.factor,
            "original_max_position_embeddings": y.original_max_position_embeddings,
        }),
    };
    rope["rope_theta"] = serde_json::json!(cfg.rope_theta);
    let meta = serde_json::json!({
        "rope": rope,
        "device": wick_models::device::device_name(&device),
        "dtype": format!("{:?}", model.dtype()),
        "vocab": vocab,
        "chunk": chunk,
        "seqs": seqs.iter().map(|s| serde_json::json!({
            "prompt": s.prompt,
            "generated": s.generated,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(format!("{out_prefix}.json"), serde_json::to_string(&meta)?)?;
    println!(
        "wrote {out_prefix}.json and {out_prefix}.f32 ({} sequences)",
        seqs.len()
    );
    Ok(())
}

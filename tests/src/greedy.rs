//! Greedy decoding of one sequence straight on the model, without the engine: the
//! simplest user of the forward pass, for tests that check the model alone. Errors are
//! returned (not panicked) so a test can also check what a bad input does.

use candle_core::{DType, Tensor, D};
use wick_models::{KvCache, Model, ModelError, ModelInput, Result, SequenceChunk};

/// One generated token and its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeneratedToken {
    /// Token id (the argmax).
    pub id: u32,
    /// Its log-probability under the model.
    pub logprob: f32,
}

/// Generates up to `max_tokens` greedily after `prompt`, stopping after any of
/// `stop_ids`. Uses blocks `0..` of `cache`; prefill runs in chunks of `chunk` tokens.
pub fn generate(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    max_tokens: usize,
    stop_ids: &[u32],
    chunk: usize,
) -> Result<Vec<GeneratedToken>> {
    if prompt.is_empty() {
        return Err(ModelError::invalid("prompt", "empty"));
    }
    let total = prompt.len() + max_tokens;
    let blocks_needed = total.div_ceil(cache.block_size);
    if blocks_needed > cache.num_blocks {
        return Err(ModelError::invalid(
            "KV cache",
            format!(
                "{total} tokens need {blocks_needed} blocks, the cache has {}",
                cache.num_blocks
            ),
        ));
    }
    let block_table: Vec<u32> = (0..blocks_needed as u32).collect();
    let mut tokens = prompt.to_vec();
    let mut computed: usize = 0;
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let end = computed.saturating_add(chunk.max(1)).min(tokens.len());
        let input = ModelInput::build(
            &[SequenceChunk {
                tokens: &tokens[computed..end],
                num_computed_tokens: computed,
                block_table: &block_table,
                lora_slot: None,
            }],
            cache.block_size,
            model.device(),
        )?;
        let logits = model.forward(&input, cache)?;
        computed = end;
        if computed < tokens.len() {
            continue; // more prompt to prefill
        }
        let lp = log_softmax(&logits)?.squeeze(0)?.to_vec1::<f32>()?;
        let (id, logprob) =
            lp.iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 {
                        (i, v)
                    } else {
                        best
                    }
                });
        out.push(GeneratedToken {
            id: id as u32,
            logprob,
        });
        tokens.push(id as u32);
        if stop_ids.contains(&(id as u32)) {
            break;
        }
    }
    Ok(out)
}

/// Log-softmax over the last dimension, in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

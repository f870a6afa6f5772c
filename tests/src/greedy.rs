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

/// A step's most likely `(id, logprob)`, best first.
pub type TopTokens = Vec<(u32, f32)>;

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
    let out = generate_top(model, cache, prompt, max_tokens, stop_ids, chunk, 0)?;
    Ok(out.into_iter().map(|(t, _)| t).collect())
}

/// As [`generate`], and with each token the `k` most likely `(id, logprob)` of its step,
/// best first (the token itself first, ties to the lower id).
pub fn generate_top(
    model: &Model,
    cache: &mut KvCache,
    prompt: &[u32],
    max_tokens: usize,
    stop_ids: &[u32],
    chunk: usize,
    k: usize,
) -> Result<Vec<(GeneratedToken, TopTokens)>> {
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
                sample: end == tokens.len(),
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
        out.push((
            GeneratedToken {
                id: id as u32,
                logprob,
            },
            top_k(&lp, k),
        ));
        tokens.push(id as u32);
        if stop_ids.contains(&(id as u32)) {
            break;
        }
    }
    Ok(out)
}

/// The `k` largest values of `lp` with their indices, largest first (ties to the lower
/// index).
fn top_k(lp: &[f32], k: usize) -> TopTokens {
    let k = k.min(lp.len());
    if k == 0 {
        return Vec::new();
    }
    let by_value = |a: &usize, b: &usize| lp[*b].total_cmp(&lp[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..lp.len()).collect();
    idx.select_nth_unstable_by(k - 1, by_value);
    idx.truncate(k);
    idx.sort_by(by_value);
    idx.into_iter().map(|i| (i as u32, lp[i])).collect()
}

/// Log-softmax over the last dimension, in f32.
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

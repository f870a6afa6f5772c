//! The KV cache sized from the GPU (`--gpu-memory-utilization`), as vLLM does: after the
//! weights are loaded, one step of the full token budget runs on a throwaway cache to
//! measure the activations' peak (the cache and input themselves not counted), and the cache gets `utilization` of the GPU's memory
//! minus what is in use (weights, the CUDA context, any other process) minus that peak.
//! With `--cuda-graphs` the graphs' memory is set aside too: captured decode steps keep
//! their activations in a pool of their own, outside the one eager steps use. CUDA reuses
//! that pool's memory between graphs launched on one stream, so it is estimated as the
//! peak of the largest decode step a graph can hold (the most sequences a step may have,
//! rounded up to a graph batch size, at the longest context), measured the same way: an
//! estimate, not run on a GPU yet (scripts/gpu-run.sh logs the GPU's memory in use with
//! and without graphs, to compare).
//! `--kv-cache-memory` overrides it; on the CPU the default stays
//! [`super::DEFAULT_KV_CACHE_MEMORY`].

use wick_core::WickError;
use wick_kernels::{device_memory, peak_allocation};
use wick_models::{GraphShape, InputBuffer, KvCache, Model, ModelInput, SequenceChunk};

/// Bytes of KV cache a GPU of `total` bytes leaves at `utilization` when `used` bytes are
/// in use after loading and a step's activations peak at `activation_peak` bytes. Errors,
/// saying what to change, when nothing is left.
pub(crate) fn kv_cache_bytes(
    total: u64,
    used: u64,
    activation_peak: u64,
    utilization: f64,
) -> Result<u64, String> {
    let budget = (total as f64 * utilization) as u64;
    let needed = used.saturating_add(activation_peak);
    if budget <= needed {
        return Err(format!(
            "no GPU memory left for the KV cache: {utilization} of {total} bytes is {budget}, \
             but {used} are in use after loading and a step's activations take {activation_peak}; \
             raise --gpu-memory-utilization, lower --max-num-batched-tokens, or set \
             --kv-cache-memory"
        ));
    }
    Ok(budget - needed)
}

/// The KV cache bytes for `model`'s GPU (see the module docs), or `None` on the CPU.
/// Runs one forward pass of `max_num_batched_tokens` prompt tokens, in sequences of at most
/// `max_model_len`, and with `graph_seqs` (graphs on: the most sequences a step may have)
/// a decode step as the largest graph would replay it.
pub(crate) fn kv_cache_bytes_from_device(
    model: &Model,
    block_size: usize,
    max_num_batched_tokens: usize,
    max_model_len: usize,
    utilization: f64,
    graph_seqs: Option<usize>,
) -> Result<Option<u64>, WickError> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        WickError::internal(format!(
            "cannot size the KV cache from the GPU: {what}: {e}"
        ))
    };
    if device_memory(model.device())
        .map_err(|e| internal("memory query", &e))?
        .is_none()
    {
        return Ok(None);
    }
    let prefill = prefill_profile(model, block_size, max_num_batched_tokens, max_model_len)
        .and_then(|step| step_peak(model, step))
        .map_err(|e| internal("profiling step", &e))?;
    let graph_peak = match graph_seqs {
        None => 0,
        Some(seqs) => decode_profile(model, block_size, seqs, max_model_len)
            .and_then(|step| step_peak(model, step))
            .map_err(|e| internal("profiling a graph's step", &e))?,
    };
    let memory = device_memory(model.device())
        .map_err(|e| internal("memory query", &e))?
        .ok_or_else(|| WickError::internal("the GPU's memory is unknown"))?;
    let used = memory.total.saturating_sub(memory.free);
    let bytes = kv_cache_bytes(memory.total, used, prefill + graph_peak, utilization)
        .map_err(|e| WickError::invalid_param("gpu_memory_utilization", e))?;
    tracing::info!(
        total_bytes = memory.total,
        used_after_load_bytes = used,
        activation_peak_bytes = prefill,
        graph_pool_estimate_bytes = graph_peak,
        gpu_memory_utilization = utilization,
        kv_cache_bytes = bytes,
        "KV cache sized from the GPU's memory"
    );
    Ok(Some(bytes))
}

/// The most memory one forward pass of `step` (its cache and input, allocated before, are
/// not counted) holds at once on `model`'s device; 0 where that is unknown (the CPU).
fn step_peak(model: &Model, (mut cache, input): (KvCache, ModelInput)) -> wick_models::Result<u64> {
    let (_, peak) = peak_allocation(model.device(), || {
        model
            .forward(&input, &mut cache)
            .map_err(candle_core::Error::wrap)?;
        model.device().synchronize()
    })?;
    Ok(peak.unwrap_or(0))
}

/// A prefill step of `tokens` prompt tokens (sequences of at most `max_len`) and a cache
/// just large enough to run it on.
pub(crate) fn prefill_profile(
    model: &Model,
    block_size: usize,
    tokens: usize,
    max_len: usize,
) -> wick_models::Result<(KvCache, ModelInput)> {
    let max_len = max_len.max(1);
    let lens: Vec<usize> = (0..tokens.div_ceil(max_len))
        .map(|i| max_len.min(tokens - i * max_len))
        .collect();
    let blocks: usize = lens.iter().map(|l| l.div_ceil(block_size)).sum();
    let cfg = model.config();
    let cache = KvCache::new(cfg, block_size, blocks, model.dtype(), model.device())?;
    let ids = vec![0u32; max_len.min(tokens)];
    let mut next_block = 0u32;
    let tables: Vec<Vec<u32>> = (lens.iter())
        .map(|&l| {
            let n = l.div_ceil(block_size) as u32;
            next_block += n;
            (next_block - n..next_block).collect()
        })
        .collect();
    let chunks: Vec<SequenceChunk<'_>> = (lens.iter().zip(&tables))
        .map(|(&l, table)| SequenceChunk {
            tokens: &ids[..l],
            num_computed_tokens: 0,
            block_table: table,
            lora_slot: None,
            sample: true,
        })
        .collect();
    let input = ModelInput::build(&chunks, block_size, model.device())?;
    Ok((cache, input))
}

/// A decode step of `seqs` sequences (rounded up to a graph batch size, at most the
/// largest) at a context of `max_len` tokens, laid out as a graph replays it, and a cache
/// of one block per sequence to run it on: sequence i writes its token to block i and
/// reads block 0 for the rest of its context (the values do not matter, the memory does).
pub(crate) fn decode_profile(
    model: &Model,
    block_size: usize,
    seqs: usize,
    max_len: usize,
) -> wick_models::Result<(KvCache, ModelInput)> {
    let largest = wick_models::GRAPH_BATCH_SIZES[wick_models::GRAPH_BATCH_SIZES.len() - 1];
    let max_len = max_len.max(1);
    let width = max_len.div_ceil(block_size);
    let seqs = seqs.clamp(1, largest);
    let tables: Vec<Vec<u32>> = (0..seqs as u32)
        .map(|i| {
            let mut table = vec![0u32; width];
            table[width - 1] = i;
            table
        })
        .collect();
    let chunks: Vec<SequenceChunk<'_>> = (tables.iter())
        .map(|table| SequenceChunk {
            tokens: &[0],
            num_computed_tokens: max_len - 1,
            block_table: table,
            lora_slot: None,
            sample: true,
        })
        .collect();
    let shape = GraphShape::for_decode(&chunks, block_size)
        .ok_or_else(|| wick_models::ModelError::invalid("profile", "no graph shape"))?;
    let cfg = model.config();
    let cache = KvCache::new(cfg, block_size, seqs, model.dtype(), model.device())?;
    let buffer = InputBuffer::new();
    let input = ModelInput::build_padded(&buffer, &chunks, block_size, model.device(), shape)?;
    Ok((cache, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_gets_what_utilization_leaves_after_weights_and_activations() {
        let gib = 1u64 << 30;
        // An 80 GiB GPU at 0.9: 72 GiB, minus 3 in use and 2 of activations.
        assert_eq!(
            kv_cache_bytes(80 * gib, 3 * gib, 2 * gib, 0.9),
            Ok(67 * gib)
        );
        let err = kv_cache_bytes(80 * gib, 70 * gib, 3 * gib, 0.9).unwrap_err();
        assert!(err.contains("--gpu-memory-utilization"), "{err}");
        assert!(kv_cache_bytes(80 * gib, 72 * gib, 0, 0.9).is_err());
    }

    /// The profiling step runs a whole token budget split into sequences of at most the
    /// context length (on the CPU here; on a GPU the same call is measured), and the CPU
    /// has no device memory to size from.
    #[test]
    fn the_profile_step_runs_the_whole_budget_and_the_cpu_keeps_its_default() {
        let loaded = wick_test_support::load_smollm2(candle_core::DType::F32);
        for (tokens, max_len) in [(100, 40), (7, 2048)] {
            let step = prefill_profile(&loaded.model, 16, tokens, max_len).unwrap();
            assert_eq!(step_peak(&loaded.model, step).unwrap(), 0);
        }
        // The graphs' decode step: 5 sequences padded to 8 at a context of 2048 tokens.
        let (mut cache, input) = decode_profile(&loaded.model, 16, 5, 2048).unwrap();
        assert_eq!((input.num_seqs, cache.num_blocks), (8, 5));
        assert_eq!(input.attention.max_seq_len(), 2048);
        let logits = loaded.model.forward(&input, &mut cache).unwrap();
        assert_eq!(logits.dim(0).unwrap(), 8);
        for graphs in [None, Some(5)] {
            let bytes = kv_cache_bytes_from_device(&loaded.model, 16, 100, 40, 0.9, graphs);
            assert_eq!(bytes.unwrap(), None);
        }
    }

    #[test]
    fn a_utilization_outside_zero_to_one_is_refused() {
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            let loaded = wick_test_support::load_smollm2(candle_core::DType::F32);
            let config = crate::EngineConfig {
                gpu_memory_utilization: bad,
                ..Default::default()
            };
            let err = crate::EngineHandle::start(loaded.model, vec![], config)
                .err()
                .unwrap();
            assert!(err.to_string().contains("gpu_memory_utilization"), "{err}");
        }
    }
}

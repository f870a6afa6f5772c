//! The Llama family (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3): one decoder built
//! from [`crate::layers`], with switches from [`ModelConfig`] for what differs: qkv bias,
//! q/k RMSNorm, sliding window, llama3 rope scaling, tied embeddings.
//!
//! `forward` takes one flattened ragged batch ([`ModelInput`]): each layer writes the new
//! K/V into the paged cache by `slot_mapping`, then one paged attention op reads every
//! query's keys from the cache, causal by position. Prefill, chunked prefill and decode are
//! the same code path. Each residual addition and the RMSNorm after it are one op; only
//! the rows in `logits_indices` reach `lm_head`; the result is f32 logits, one row per
//! sampled sequence.

use crate::config::ModelConfig;
use crate::input::ModelInput;
use crate::kv_cache::KvCache;
use crate::layers::{Attention, Embedding, Linear, Mlp, RmsNorm, RotaryEmbedding, WeightLoader};
use crate::lora::LoraAdapter;
use crate::quantization::WeightBytes;
use crate::weights::Weights;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use wick_kernels::LoraBatch;

/// One pre-norm decoder layer: attention and MLP, each around a residual.
#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// Loads layer `prefix` (`model.layers.{i}`).
    fn load(ld: &WeightLoader<'_>, prefix: &str, cfg: &ModelConfig) -> Result<Self> {
        let norm = |name: &str| {
            let name = format!("{prefix}.{name}.weight");
            RmsNorm::load(ld, &name, cfg.hidden_size, cfg.rms_norm_eps)
        };
        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            attn: Attention::load(ld, &format!("{prefix}.self_attn"), cfg)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(
                ld,
                &format!("{prefix}.mlp"),
                cfg.hidden_size,
                cfg.intermediate_size,
            )?,
        })
    }
}

/// Which of [`DecoderLayer::projections_mut`] serves each [`crate::lora::LoraModule`], in
/// its order, and as which fused part: q, k, v are parts of qkv; gate and up of gate_up.
const LORA_TARGETS: [(usize, usize); 7] = [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (3, 0)];

impl DecoderLayer {
    /// The four projections: qkv, o, gate_up, down.
    fn projections_mut(&mut self) -> [&mut Linear; 4] {
        let [qkv, o] = self.attn.projections_mut();
        let [gate_up, down] = self.mlp.projections_mut();
        [qkv, o, gate_up, down]
    }
}

/// A loaded Llama-family model.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    cfg: ModelConfig,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: RotaryEmbedding,
    dtype: DType,
    device: Device,
    /// Rank of the adapter in each LoRA slot (0: empty); empty when LoRA is not enabled.
    lora_ranks: Vec<usize>,
    /// The same ranks as u32 `[slots]` on the device, for the LoRA kernels; rewritten (one
    /// small upload) by every `enable_lora`/`set_lora`, never by a step.
    lora_rank_table: Option<Tensor>,
    /// Bytes of the weights by storage type.
    weight_bytes: WeightBytes,
}

impl LlamaModel {
    /// Builds the model from `weights`, converting every tensor to `dtype` on `device`.
    pub fn load(
        cfg: &ModelConfig,
        weights: &Weights,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let ld = WeightLoader::new(weights, dtype, device);
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed_tokens = Embedding::load(&ld, "model.embed_tokens.weight", cfg.vocab_size, h)?;
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(&ld, &format!("model.layers.{i}"), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&ld, "model.norm.weight", h, eps)?;
        let lm_head = if cfg.tie_word_embeddings && !ld.contains("lm_head.weight") {
            Linear::from_weight(embed_tokens.weight().clone(), None, dtype)?
        } else {
            Linear::load(&ld, "lm_head", cfg.vocab_size, h, false)?
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(cfg, dtype, device)?,
            dtype,
            device: device.clone(),
            lora_ranks: Vec::new(),
            lora_rank_table: None,
            weight_bytes: ld.bytes(),
        })
    }

    /// Bytes of the weights as loaded, by storage type.
    pub fn weight_bytes(&self) -> &WeightBytes {
        &self.weight_bytes
    }

    /// Gives every adaptable projection `num_slots` empty adapter slots.
    pub fn enable_lora(&mut self, num_slots: usize) -> Result<()> {
        for layer in &mut self.layers {
            for p in layer.projections_mut() {
                p.enable_lora(num_slots)?;
            }
        }
        self.set_lora_ranks(vec![0; num_slots])
    }

    /// Makes `ranks` the slots' ranks, on the host and in the device table the LoRA kernels
    /// read (uploaded first: the two never disagree).
    fn set_lora_ranks(&mut self, ranks: Vec<usize>) -> Result<()> {
        let table = (ranks.iter())
            .map(|&r| {
                u32::try_from(r)
                    .map_err(|_| ModelError::invalid("LoRA rank", format!("{r} is too large")))
            })
            .collect::<Result<Vec<u32>>>()?;
        self.lora_rank_table = Some(Tensor::from_vec(table, ranks.len(), &self.device)?);
        self.lora_ranks = ranks;
        Ok(())
    }

    /// Puts `adapter` in LoRA `slot` (`None` empties it); every projection it does not
    /// target gets zeros there.
    pub fn set_lora(&mut self, slot: usize, adapter: Option<&LoraAdapter>) -> Result<()> {
        if slot >= self.lora_ranks.len() {
            return Err(ModelError::invalid(
                "LoRA slot",
                format!("{slot}, the model has {} slots", self.lora_ranks.len()),
            ));
        }
        if let Some(a) = adapter {
            if a.layers.len() != self.layers.len() {
                return Err(ModelError::invalid(
                    "LoRA adapter",
                    format!(
                        "{} layers, the model has {}",
                        a.layers.len(),
                        self.layers.len()
                    ),
                ));
            }
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let pairs = adapter.map(|a| &a.layers[i]);
            let projections = layer.projections_mut();
            for (m, &(p, part)) in LORA_TARGETS.iter().enumerate() {
                let pair = pairs.and_then(|pairs| pairs[m].as_ref());
                projections[p].set_lora(slot, part, pair)?;
            }
        }
        let mut ranks = self.lora_ranks.clone();
        ranks[slot] = adapter.map_or(0, |a| a.rank);
        self.set_lora_ranks(ranks)
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Dtype of weights, activations and the KV cache.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Checks `input` against the model and `cache` as a forward pass does before it
    /// runs anything (see [`crate::Model::check_input`]).
    pub fn check_input(&self, input: &ModelInput, cache: &KvCache) -> Result<()> {
        self.checked_lora(input, cache).map(drop)
    }

    /// Checks `input` against the model and `cache`; returns the step's LoRA batch (`None`
    /// when no sequence uses an adapter): the tokens' slots from the step's upload, the
    /// ranks from the model's device table.
    fn checked_lora(&self, input: &ModelInput, cache: &KvCache) -> Result<Option<LoraBatch>> {
        if cache.layers.len() != self.layers.len() {
            return Err(ModelError::invalid(
                "KV cache",
                format!(
                    "{} layers, model has {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let max_pos = self.rotary.max_positions()?;
        if input.attention.max_seq_len() > max_pos {
            return Err(ModelError::invalid(
                "batch",
                format!(
                    "a sequence of {} tokens exceeds the model's context of {max_pos}",
                    input.attention.max_seq_len()
                ),
            ));
        }
        input
            .slot_mapping
            .check(cache.num_blocks * cache.block_size)?;
        (input.attention).check(input.num_tokens, cache.num_blocks, cache.block_size)?;
        match (&input.lora_slots_device, &self.lora_rank_table) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(ModelError::invalid(
                "batch",
                "a sequence uses an adapter but LoRA is not enabled",
            )),
            (Some(slots), Some(ranks)) => Ok(Some(LoraBatch::with_tables(
                &input.lora_slots,
                &self.lora_ranks,
                slots,
                ranks,
            )?)),
        }
    }

    /// Runs one step over `input`, writing its K/V into `cache`; returns f32 logits
    /// `[num_sampled, vocab]`, for the last token of each sequence to sample.
    pub fn forward(&self, input: &ModelInput, cache: &mut KvCache) -> Result<Tensor> {
        let lora = self.checked_lora(input, cache)?;
        let rotary = self.rotary.at(&input.positions)?;
        let lora = lora.as_ref();
        // The residual stream and its normalised copy: each layer's residual addition and
        // the norm after it are one op (the last layer's with the final norm).
        let mut residual = self.embed_tokens.forward(&input.input_ids)?;
        let mut h = match self.layers.first() {
            Some(layer) => layer.input_layernorm.forward(&residual)?,
            None => self.norm.forward(&residual)?,
        };
        for (i, (layer, kv_cache)) in self.layers.iter().zip(cache.layers.iter()).enumerate() {
            let attn = layer.attn.forward(&h, &rotary, kv_cache, input, lora)?;
            (residual, h) = layer
                .post_attention_layernorm
                .add_forward(&attn, &residual)?;
            let mlp = layer.mlp.forward(&h, lora)?;
            let next_norm = match self.layers.get(i + 1) {
                Some(next) => &next.input_layernorm,
                None => &self.norm,
            };
            (residual, h) = next_norm.add_forward(&mlp, &residual)?;
        }
        if input.num_sampled == 0 {
            // Only prompt chunks mid-way: nothing reaches lm_head.
            let vocab = self.cfg.vocab_size;
            return Ok(Tensor::zeros((0, vocab), DType::F32, &self.device)?);
        }
        let last = h.index_select(&input.logits_indices, 0)?;
        Ok(self.lm_head.forward(&last)?.to_dtype(DType::F32)?)
    }
}

//! One step's batch as the model sees it: every scheduled sequence's new tokens flattened
//! into one ragged batch, with the positions, cache slots and block tables the attention op
//! needs. Built from plain per-sequence data, so the engine's runner and the tests share
//! one way of laying a batch out.

use crate::{ModelError, Result};
use candle_core::{Device, Tensor};
use wick_kernels::{PagedAttentionMetadata, SlotMapping};

/// One sequence's part of a step.
#[derive(Debug, Clone)]
pub struct SequenceChunk<'a> {
    /// Tokens to compute this step (a whole prompt, a chunk of it, or one decode token).
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (they precede `tokens`).
    pub num_computed_tokens: usize,
    /// The sequence's blocks, in order; must cover `num_computed_tokens + tokens.len()`.
    pub block_table: &'a [u32],
    /// The model's adapter slot its tokens use (see `Model::set_lora`); `None`: the
    /// base model.
    pub lora_slot: Option<u32>,
    /// Whether the logits of its last token are wanted (a token is sampled after it);
    /// false for a chunk in the middle of a prompt, which never reaches `lm_head`.
    pub sample: bool,
}

/// The flattened batch for one forward pass.
#[derive(Debug)]
pub struct ModelInput {
    /// u32 `[num_tokens]`
    pub input_ids: Tensor,
    /// u32 `[num_tokens]`: each token's position in its sequence.
    pub positions: Tensor,
    /// The cache slot each token's K/V is written to (host copy and device tensor).
    pub slot_mapping: SlotMapping,
    /// Ragged-batch description for paged attention.
    pub attention: PagedAttentionMetadata,
    /// u32 `[num_sampled]`: row of the last token of each sequence with
    /// [`SequenceChunk::sample`], in batch order: the rows whose logits are returned.
    pub logits_indices: Tensor,
    /// Number of sequences with [`SequenceChunk::sample`] (rows of the logits).
    pub num_sampled: usize,
    /// Number of sequences in the batch.
    pub num_seqs: usize,
    /// Number of tokens in the batch.
    pub num_tokens: usize,
    /// Each token's adapter slot (-1: none), on the host; empty when no sequence uses an
    /// adapter.
    pub lora_slots: Vec<i32>,
}

impl ModelInput {
    /// Lays out `chunks` for a cache of `block_size`-token blocks on `device`.
    pub fn build(chunks: &[SequenceChunk<'_>], block_size: usize, device: &Device) -> Result<Self> {
        if chunks.is_empty() {
            return Err(ModelError::invalid("batch", "no sequences"));
        }
        if block_size == 0 {
            return Err(ModelError::invalid("batch", "block_size must be positive"));
        }
        let num_tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut input_ids = Vec::with_capacity(num_tokens);
        let mut positions = Vec::with_capacity(num_tokens);
        let mut slot_mapping = Vec::with_capacity(num_tokens);
        let mut cu_seqlens_q = Vec::with_capacity(chunks.len() + 1);
        let mut seq_lens = Vec::with_capacity(chunks.len());
        let mut logits_indices = Vec::with_capacity(chunks.len());
        let any_lora = chunks.iter().any(|c| c.lora_slot.is_some());
        let mut lora_slots = Vec::with_capacity(if any_lora { num_tokens } else { 0 });
        let max_blocks = chunks
            .iter()
            .map(|c| c.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut block_tables = vec![0u32; chunks.len() * max_blocks];
        cu_seqlens_q.push(0u32);
        for (s, c) in chunks.iter().enumerate() {
            if c.tokens.is_empty() {
                return Err(ModelError::invalid(
                    "batch",
                    format!("sequence {s} has no tokens"),
                ));
            }
            let seq_len = c.num_computed_tokens + c.tokens.len();
            if seq_len > c.block_table.len() * block_size {
                return Err(ModelError::invalid(
                    "batch",
                    format!(
                        "sequence {s}: {seq_len} tokens need {} blocks, block table has {}",
                        seq_len.div_ceil(block_size),
                        c.block_table.len()
                    ),
                ));
            }
            for (j, &tok) in c.tokens.iter().enumerate() {
                let pos = c.num_computed_tokens + j;
                input_ids.push(tok);
                positions.push(pos as u32);
                let block = c.block_table[pos / block_size] as i64;
                slot_mapping.push(block * block_size as i64 + (pos % block_size) as i64);
            }
            if any_lora {
                let slot = c.lora_slot.map_or(-1, |s| s as i32);
                lora_slots.extend(std::iter::repeat_n(slot, c.tokens.len()));
            }
            block_tables[s * max_blocks..s * max_blocks + c.block_table.len()]
                .copy_from_slice(c.block_table);
            let end = input_ids.len() as u32;
            cu_seqlens_q.push(end);
            seq_lens.push(seq_len as u32);
            if c.sample {
                logits_indices.push(end - 1);
            }
        }
        let num_seqs = chunks.len();
        let num_sampled = logits_indices.len();
        Ok(Self {
            input_ids: Tensor::from_vec(input_ids, num_tokens, device)?,
            positions: Tensor::from_vec(positions, num_tokens, device)?,
            slot_mapping: SlotMapping::new(slot_mapping, device)?,
            attention: PagedAttentionMetadata::new(
                block_tables,
                max_blocks,
                cu_seqlens_q,
                seq_lens,
                device,
            )?,
            logits_indices: Tensor::from_vec(logits_indices, num_sampled, device)?,
            num_sampled,
            num_seqs,
            num_tokens,
            lora_slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk<'a>(tokens: &'a [u32], table: &'a [u32], sample: bool) -> SequenceChunk<'a> {
        SequenceChunk {
            tokens,
            num_computed_tokens: 0,
            block_table: table,
            lora_slot: None,
            sample,
        }
    }

    #[test]
    fn only_sampled_sequences_get_a_logits_row() {
        let (a, b, c) = ([1, 2, 3], [4, 5], [6]);
        let chunks = [
            chunk(&a, &[0], true),
            chunk(&b, &[1], false), // a prompt chunk mid-way
            chunk(&c, &[2], true),
        ];
        let input = ModelInput::build(&chunks, 4, &Device::Cpu).unwrap();
        assert_eq!((input.num_seqs, input.num_sampled), (3, 2));
        assert_eq!(input.logits_indices.to_vec1::<u32>().unwrap(), [2, 5]);

        let none = ModelInput::build(&chunks[1..2], 4, &Device::Cpu).unwrap();
        assert_eq!(none.num_sampled, 0);
        assert_eq!(none.logits_indices.dims(), [0]);
    }
}
